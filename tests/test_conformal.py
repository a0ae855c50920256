import numpy as np
import pytest

from qfm_iqm.evaluation.conformal import calibrate, interval_report, min_calibration_size
from qfm_iqm.inference.score_map import ConformalInterval


def _draw(rng, n, heteroscedastic=False):
    x = rng.uniform(0, 1, n)
    sigma = 0.01 + 0.3 * x**3 if heteroscedastic else np.full(n, 0.1)
    labels = np.sin(3 * x) + rng.normal(0, sigma)
    return np.sin(3 * x), labels, sigma


@pytest.mark.parametrize("coverage", [0.8, 0.9])
def test_interval_covers_the_stated_share_of_new_data(coverage):
    rng = np.random.default_rng(0)
    measured = []
    for _ in range(40):
        interval = calibrate(*_draw(rng, 200)[:2], coverage=coverage)
        measured.append(interval_report(interval, *_draw(rng, 2000)[:2])["coverage"])
    # split conformal: E[coverage] is in [coverage, coverage + 1/(n+1)]
    assert coverage - 0.005 <= np.mean(measured) <= coverage + 1 / 201 + 0.005
    # known Gaussian noise of sd 0.1: the half-width approaches its 90% (or 80%) quantile
    assert interval.quantile == pytest.approx({0.8: 0.128, 0.9: 0.164}[coverage], rel=0.15)


def test_a_difficulty_that_tracks_the_noise_narrows_the_interval_at_equal_coverage():
    rng = np.random.default_rng(1)
    pred, labels, sigma = _draw(rng, 2000, heteroscedastic=True)
    new_pred, new_labels, new_sigma = _draw(rng, 5000, heteroscedastic=True)
    plain = interval_report(calibrate(pred, labels), new_pred, new_labels)
    scaled = interval_report(calibrate(pred, labels, difficulty=sigma), new_pred, new_labels, new_sigma)
    assert abs(plain["coverage"] - 0.9) < 0.025 and abs(scaled["coverage"] - 0.9) < 0.025
    assert scaled["mean_width"] < 0.85 * plain["mean_width"]


def test_bad_calibration_inputs_are_refused():
    with pytest.raises(ValueError, match="too few"):
        calibrate(np.zeros(5), np.ones(5), coverage=0.9)
    with pytest.raises(ValueError, match="coverage"):
        calibrate(np.zeros(50), np.ones(50), coverage=1.0)
    with pytest.raises(ValueError, match="difficulty"):
        calibrate(np.zeros(50), np.ones(50), difficulty=np.zeros(50))
    with pytest.raises(ValueError, match="finite"):
        calibrate(np.full(50, np.nan), np.ones(50))
    interval = calibrate(np.zeros(50), np.linspace(-1, 1, 50), difficulty=np.ones(50))
    with pytest.raises(ValueError, match="difficulty"):
        interval.bounds(np.zeros(3))
    assert ConformalInterval.from_dict(interval.to_dict()) == interval


def test_one_calibration_covers_the_stated_share_of_20000_new_points():
    """y = f + N(0, 0.05): an interval calibrated on 2,000 points covers 90% +- 1.5% of 20,000 new ones."""
    rng = np.random.default_rng(2)

    def draw(n):
        truth = rng.uniform(0, 1, n)
        return truth, truth + rng.normal(0, 0.05, n)

    interval = calibrate(*draw(2000))
    predictions, labels = draw(20_000)
    plain = interval_report(interval, predictions, labels)
    assert abs(plain["coverage"] - 0.9) < 0.015
    assert interval.quantile == pytest.approx(1.645 * 0.05, rel=0.1)
    assert plain["mean_width"] == pytest.approx(2 * interval.quantile)
    q = interval.quantile
    low, high = interval.bounds(np.array([0.02, 0.5, 1.05]))
    np.testing.assert_allclose(low, [0.02 - q, 0.5 - q, 1.05 - q])
    np.testing.assert_allclose(high, [0.02 + q, 0.5 + q, 1.05 + q])


def test_fewest_calibration_images_is_exact():
    assert [min_calibration_size(c) for c in (0.5, 0.8, 0.9, 0.95)] == [1, 4, 9, 19]
    assert calibrate(np.zeros(9), np.arange(9.0)).quantile == 8.0  # the 9th smallest residual of 9
    with pytest.raises(ValueError, match="8 calibration images are too few for 90% coverage \\(need 9\\)"):
        calibrate(np.zeros(8), np.ones(8))
    with pytest.raises(ValueError, match="quantile"):
        ConformalInterval(0.9, -0.1)
    with pytest.raises(ValueError, match="coverage"):
        ConformalInterval(1.0, 0.1)
