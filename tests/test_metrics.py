import math

import numpy as np
import pytest
import scipy.stats
import torch

from qfm_iqm.evaluation.metrics import (
    METRIC_KEYS,
    CorrelationMetrics,
    compute_metrics,
    fit_logistic4,
    krcc,
    logistic4,
    plcc,
    plcc_logistic,
    rmse,
    srcc,
    summarize,
)


@pytest.fixture
def noisy_pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    target = rng.uniform(0, 100, 200)
    pred = target / 100 + rng.normal(0, 0.15, 200)
    return pred, target


def test_matches_scipy(noisy_pair: tuple[np.ndarray, np.ndarray]) -> None:
    pred, target = noisy_pair
    assert srcc(pred, target) == pytest.approx(scipy.stats.spearmanr(pred, target).statistic, abs=1e-12)
    assert plcc(pred, target) == pytest.approx(scipy.stats.pearsonr(pred, target).statistic, abs=1e-12)
    assert krcc(pred, target) == pytest.approx(scipy.stats.kendalltau(pred, target).statistic, abs=1e-12)
    assert rmse(pred, target) == pytest.approx(np.sqrt(np.mean((pred - target) ** 2)))


def test_known_values() -> None:
    pred = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert srcc(pred, [5, 6, 7, 8, 7]) == pytest.approx(0.8207826816681233)
    assert srcc(pred, [50, 40, 30, 20, 10]) == pytest.approx(-1.0)
    assert krcc(pred, [1, 3, 2, 4, 5]) == pytest.approx(0.8)
    assert rmse([0, 0, 0], [3, 4, 0]) == pytest.approx(math.sqrt(25 / 3))


def test_logistic_formula() -> None:
    x = np.array([-1.0, 0.0, 2.0])
    b1, b2, b3, b4 = 5.0, 1.0, 0.5, -0.7  # |b4| is used
    expected = (b1 - b2) / (1 + np.exp(-(x - b3) / abs(b4))) + b2
    np.testing.assert_allclose(logistic4(x, b1, b2, b3, b4), expected)
    assert np.isfinite(logistic4(np.array([-1e6, 1e6]), 1, 0, 0, 1e-3)).all()


def test_logistic_fit_improves_plcc_on_monotone_nonlinear() -> None:
    rng = np.random.default_rng(1)
    pred = rng.uniform(-4, 4, 300)
    target = 80 / (1 + np.exp(-2 * (pred - 0.5))) + 10 + rng.normal(0, 1.0, 300)
    params = fit_logistic4(pred, target)
    fitted = logistic4(pred, *params)
    assert np.sqrt(np.mean((fitted - target) ** 2)) < 1.5
    assert plcc_logistic(pred, target) > plcc(pred, target) + 0.03
    assert plcc_logistic(pred, target) > 0.99


def test_logistic_fit_decreasing_relation() -> None:
    pred = np.linspace(0, 1, 50)
    target = 100 - 100 * pred**2
    assert plcc_logistic(pred, target) > 0.98


def test_compute_metrics_keys_and_torch_input(noisy_pair: tuple[np.ndarray, np.ndarray]) -> None:
    pred, target = noisy_pair
    out = compute_metrics(torch.tensor(pred, requires_grad=True), torch.tensor(target).view(-1, 1))
    assert tuple(out) == METRIC_KEYS
    assert out["srcc"] == pytest.approx(srcc(pred, target))
    assert all(isinstance(v, float) for v in out.values())


@pytest.mark.parametrize(
    ("pred", "target", "msg"),
    [
        ([1, 2, 3], [1, 2], "length"),
        ([1, 2], [1, 2], "at least 3"),
        ([1, 2, float("nan")], [1, 2, 3], "non-finite"),
        ([1, 2, 3], [1, float("inf"), 3], "non-finite"),
    ],
)
def test_bad_input(pred: list[float], target: list[float], msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        compute_metrics(pred, target)


def test_constant_prediction_gives_nan_correlation() -> None:
    out = compute_metrics([0.5, 0.5, 0.5, 0.5], [1, 2, 3, 4])
    assert math.isnan(out["srcc"]) and math.isnan(out["plcc"])
    assert out["rmse"] == pytest.approx(np.sqrt(np.mean((0.5 - np.arange(1, 5)) ** 2)))


def test_accumulator_equals_one_shot(noisy_pair: tuple[np.ndarray, np.ndarray]) -> None:
    pred, target = noisy_pair
    acc = CorrelationMetrics()
    for k in range(0, 200, 37):
        acc.update(torch.tensor(pred[k : k + 37]), target[k : k + 37])
    assert acc.compute() == pytest.approx(compute_metrics(pred, target))
    acc.reset()
    with pytest.raises(ValueError):
        acc.compute()
    acc.update(pred[:10], target[:10])
    assert acc.compute() == pytest.approx(compute_metrics(pred[:10], target[:10]))
    with pytest.raises(ValueError, match="length"):
        acc.update([1.0, 2.0], [1.0])


def test_summarize() -> None:
    runs = [{"srcc": v, "plcc": 2 * v} for v in (0.8, 0.9, 0.85, 0.7)]
    s = summarize(runs)
    assert s["srcc"]["median"] == pytest.approx(0.825)
    assert s["plcc"]["max"] == pytest.approx(1.8)
    assert s["srcc"]["min"] == pytest.approx(0.7)
    assert s["srcc"]["mean"] == pytest.approx(0.8125)
    assert s["srcc"]["std"] == pytest.approx(np.std([0.8, 0.9, 0.85, 0.7], ddof=1))
    assert summarize([{"srcc": 0.5}])["srcc"]["std"] == 0.0
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError, match="run 1"):
        summarize([{"srcc": 0.5}, {"plcc": 0.5}])


def test_logistic_fit_with_too_few_points_returns_the_start_without_error():
    from qfm_iqm.evaluation.metrics import compute_metrics

    metrics = compute_metrics([0.1, 0.5, 0.3], [10.0, 50.0, 20.0])
    assert metrics["srcc"] == pytest.approx(1.0)
    assert np.isfinite(metrics["plcc_logistic"])


def test_spread_calibration_tells_a_useful_spread_from_a_useless_one() -> None:
    from qfm_iqm.evaluation.metrics import spread_calibration

    rng = np.random.default_rng(0)
    target = rng.uniform(0, 1, 500)
    sigma = rng.uniform(0.01, 0.2, 500)
    pred = target + rng.normal(0, sigma)
    useful = spread_calibration(pred, target, sigma)
    assert useful["spread_error_srcc"] > 0.4
    assert useful["within_spread"] == pytest.approx(0.68, abs=0.06)  # a one-sigma band
    assert useful["mean_abs_error"] == pytest.approx(np.abs(pred - target).mean())
    tiny = spread_calibration(pred, target, rng.permutation(sigma) / 100)
    assert abs(tiny["spread_error_srcc"]) < 0.15 and tiny["within_spread"] < 0.05
    with pytest.raises(ValueError, match="spread needs 500 finite values"):
        spread_calibration(pred, target, sigma[:-1])
