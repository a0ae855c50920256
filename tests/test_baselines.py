import numpy as np
import pytest
from PIL import Image, ImageFilter
from scipy.stats import gennorm

from qfm_iqm.data.splits import Split
from qfm_iqm.experiments.baselines import get_baseline, regress_on_split
from qfm_iqm.models.regressors import KERNEL_RIDGE_CANDIDATES, KernelRidgeRegressor, RidgeRegressor, select_by_cv
from qfm_iqm.experiments.brisque import brisque_features, fit_aggd, fit_ggd


def test_ridge_recovers_a_linear_relation():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 5))
    targets = features @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.7
    fitted = RidgeRegressor(alpha=1e-6).fit(features, targets)
    assert np.allclose(fitted.predict(features), targets, atol=1e-4)


def test_kernel_ridge_fits_a_nonlinear_relation_that_linear_ridge_cannot():
    rng = np.random.default_rng(3)
    features = rng.uniform(-2, 2, size=(300, 1))
    targets = np.sin(2 * features[:, 0])
    train, test = slice(0, 200), slice(200, 300)
    kernel = KernelRidgeRegressor(1e-3, 3.0).fit(features[train], targets[train]).predict(features[test])
    linear = RidgeRegressor(1e-3).fit(features[train], targets[train]).predict(features[test])
    assert np.abs(kernel - targets[test]).max() < 0.1
    assert np.abs(linear - targets[test]).max() > 0.5


def test_alpha_is_chosen_by_cross_validation_on_noise():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(60, 40))
    targets = rng.normal(size=60)  # pure noise: heavy shrinkage generalises best
    assert select_by_cv((RidgeRegressor(1e-3), RidgeRegressor(1e4)), features, targets).alpha == 1e4


@pytest.mark.parametrize("candidates", [(RidgeRegressor(1.0),), KERNEL_RIDGE_CANDIDATES[:3]])
def test_regression_on_a_split_never_sees_test_labels(candidates):
    rng = np.random.default_rng(2)
    features = rng.normal(size=(50, 3))
    labels = features @ np.array([1.0, 0.5, -1.0])
    split = Split(seed=0, train=tuple(range(40)), test=tuple(range(40, 50)))
    predictions, _ = regress_on_split(features, labels, split, candidates)
    poisoned = labels.copy()
    poisoned[40:] = 1e6  # changing test labels must not change the predictions
    again, _ = regress_on_split(features, poisoned, split, candidates)
    assert np.array_equal(predictions, again)
    assert np.corrcoef(predictions, labels[40:])[0, 1] > 0.95


@pytest.mark.parametrize("shape", [0.8, 2.0, 3.0])
def test_ggd_fit_recovers_the_shape_of_generalised_gaussian_samples(shape):
    samples = gennorm.rvs(shape, scale=0.7, size=200_000, random_state=0)
    fitted_shape, variance = fit_ggd(samples)
    assert fitted_shape == pytest.approx(shape, rel=0.05)
    assert variance == pytest.approx(np.mean(samples**2), rel=1e-9)


def test_aggd_fit_sees_asymmetry():
    rng = np.random.default_rng(4)
    # an AGGD of shape 2 puts mass in proportion to each side's scale on that side: half-Gaussians
    samples = np.concatenate([-np.abs(rng.normal(0, 1.0, 40_000)), np.abs(rng.normal(0, 2.0, 80_000))])
    shape, mean, left_var, right_var = fit_aggd(samples)
    assert shape == pytest.approx(2.0, rel=0.05)
    assert left_var == pytest.approx(1.0, rel=0.05) and right_var == pytest.approx(4.0, rel=0.05)
    assert mean > 0


def test_brisque_features_separate_sharp_noisy_and_blurred_images():
    rng = np.random.default_rng(5)
    base = Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).resize((128, 128), Image.BICUBIC)
    noisy = Image.fromarray(np.clip(np.asarray(base, float) + rng.normal(0, 25, (128, 128, 3)), 0, 255).astype(np.uint8))
    blurred = base.filter(ImageFilter.GaussianBlur(3))
    features = {name: brisque_features(image) for name, image in [("base", base), ("noisy", noisy), ("blurred", blurred)]}
    assert all(f.shape == (36,) and np.isfinite(f).all() for f in features.values())
    # the MSCN shape parameter: noise makes the coefficients more Gaussian, blur makes them peakier
    assert features["noisy"][0] > features["base"][0] > features["blurred"][0]


def test_brisque_rejects_images_too_small_for_two_scales():
    with pytest.raises(ValueError, match="16x16"):
        brisque_features(Image.new("RGB", (10, 40)))


def test_unknown_baseline_names_the_known_ones():
    with pytest.raises(ValueError, match="brisque, kernel-ridge-stages, kernel-ridge-stages-lite1, kernel-ridge-stages-lite2, ridge, ridge-stages"):
        get_baseline("niqe")


def test_stage_blocks_weigh_equally_in_the_kernel():
    """One informative feature next to 99 of noise: weighting the two blocks equally finds it."""
    rng = np.random.default_rng(0)
    signal = rng.uniform(-2, 2, size=(200, 1))
    features = np.hstack([signal, rng.normal(size=(200, 99))])
    targets = np.sin(signal[:, 0])
    errors = {}
    for blocks in ((), (1, 99)):
        fitted = KernelRidgeRegressor(1e-2, 1.0, blocks).fit(features[:150], targets[:150])
        errors[blocks] = float(np.mean((fitted.predict(features[150:]) - targets[150:]) ** 2))
    assert errors[(1, 99)] < 0.2 * errors[()]


def test_the_cli_offers_every_baseline(capsys):
    from qfm_iqm.cli.main import build_parser
    from qfm_iqm.experiments.baselines import BASELINES

    with pytest.raises(SystemExit):
        build_parser().parse_args(["evaluate", "--baseline", "nonexistent"])
    offered = capsys.readouterr().err.split("choose from")[1]
    assert sorted(name.strip(" '\n)") for name in offered.split(",")) == sorted(BASELINES)
