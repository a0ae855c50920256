"""IQA correlation metrics (SRCC, PLCC, PLCC after 4-parameter logistic mapping, KRCC, RMSE)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.optimize
import scipy.special
import scipy.stats

METRIC_KEYS = ("srcc", "plcc", "plcc_logistic", "krcc", "rmse")


def _as_array(x: Any) -> np.ndarray:
    """Flatten a tensor (any device, with or without grad), array or sequence into float64."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64).ravel()


def _validate(pred: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    p, t = _as_array(pred), _as_array(target)
    if p.size != t.size:
        raise ValueError(f"pred and target differ in length: {p.size} vs {t.size}")
    if p.size < 3:
        raise ValueError(f"need at least 3 items for correlation metrics, got {p.size}")
    if not (np.isfinite(p).all() and np.isfinite(t).all()):
        raise ValueError(
            f"pred/target contain non-finite values ({int((~np.isfinite(p)).sum())} in pred, "
            f"{int((~np.isfinite(t)).sum())} in target)"
        )
    return p, t


def _corr(fn: Any, p: np.ndarray, t: np.ndarray) -> float:
    """Correlation via ``fn``; NaN when either input is constant (correlation undefined)."""
    if np.ptp(p) == 0 or np.ptp(t) == 0:
        return math.nan
    return float(fn(p, t).statistic)


def srcc(pred: Any, target: Any) -> float:
    """Spearman rank-order correlation (NaN if either input is constant)."""
    return _corr(scipy.stats.spearmanr, *_validate(pred, target))


def plcc(pred: Any, target: Any) -> float:
    """Pearson linear correlation of the raw predictions (NaN if either input is constant)."""
    return _corr(scipy.stats.pearsonr, *_validate(pred, target))


def krcc(pred: Any, target: Any) -> float:
    """Kendall rank correlation, tau-b (NaN if either input is constant)."""
    return _corr(scipy.stats.kendalltau, *_validate(pred, target))


def rmse(pred: Any, target: Any) -> float:
    """Root mean squared error, in the units of the inputs."""
    p, t = _validate(pred, target)
    return float(np.sqrt(np.mean((p - t) ** 2)))


def logistic4(x: Any, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """4-parameter logistic: ``(b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2`` (overflow-safe)."""
    scale = max(abs(b4), 1e-12)
    return (b1 - b2) * scipy.special.expit((np.asarray(x, dtype=np.float64) - b3) / scale) + b2


def fit_logistic4(pred: Any, target: Any) -> np.ndarray:
    """Least-squares fit of ``logistic4`` mapping ``pred`` onto ``target``; returns (b1, b2, b3, b4).

    Starts from b1 = max(target), b2 = min(target) (swapped for a decreasing relation),
    b3 = mean(pred), b4 = std(pred). If the fit fails or is no better than the start, the start is
    returned (with a ``RuntimeWarning`` on failure); with 4 points or fewer (no more points than
    parameters) there is nothing to fit and the start is returned as well.
    """
    p, t = _validate(pred, target)
    increasing = np.ptp(p) == 0 or np.ptp(t) == 0 or np.corrcoef(p, t)[0, 1] >= 0
    b1, b2 = (t.max(), t.min()) if increasing else (t.min(), t.max())
    p0 = np.array([b1, b2, p.mean(), p.std() or 1.0], dtype=np.float64)

    def sse(params: np.ndarray) -> float:
        return float(np.sum((logistic4(p, *params) - t) ** 2))

    if p.size <= p0.size:
        return p0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", scipy.optimize.OptimizeWarning)
            params, _ = scipy.optimize.curve_fit(logistic4, p, t, p0=p0, maxfev=20000)
    except (RuntimeError, ValueError, FloatingPointError) as exc:
        warnings.warn(f"4-parameter logistic fit failed ({exc}); using the initial guess", RuntimeWarning, stacklevel=2)
        return p0
    params = np.asarray(params, dtype=np.float64)
    return params if np.isfinite(params).all() and sse(params) <= sse(p0) else p0


def plcc_logistic(pred: Any, target: Any) -> float:
    """PLCC between ``logistic4``-mapped predictions and targets (the VQEG protocol).

    Falls back to the plain PLCC when the mapped predictions are constant.
    """
    p, t = _validate(pred, target)
    mapped = logistic4(p, *fit_logistic4(p, t))
    if np.ptp(mapped) == 0:
        return _corr(scipy.stats.pearsonr, p, t)
    return _corr(scipy.stats.pearsonr, mapped, t)


def compute_metrics(pred: Any, target: Any) -> dict[str, float]:
    """All metrics in ``METRIC_KEYS``; ``rmse`` is in the units of the inputs.

    Raises ``ValueError`` unless both inputs have the same length, at least 3 items, all finite.
    """
    p, t = _validate(pred, target)
    return {
        "srcc": _corr(scipy.stats.spearmanr, p, t),
        "plcc": _corr(scipy.stats.pearsonr, p, t),
        "plcc_logistic": plcc_logistic(p, t),
        "krcc": _corr(scipy.stats.kendalltau, p, t),
        "rmse": rmse(p, t),
    }


def spread_calibration(pred: Any, target: Any, spread: Any) -> dict[str, float]:
    """How well a per-image spread (e.g. the attention panel's) tells the size of the error.

    Returns ``spread_error_srcc`` (SRCC between spread and absolute error: 1 when a larger spread
    always means a larger error), ``mean_spread`` and ``mean_abs_error`` (units of the inputs) and
    ``within_spread`` (share of images whose absolute error is at most their spread; about 0.68 for a
    calibrated one-sigma band).
    """
    p, t = _validate(pred, target)
    s = _as_array(spread)
    if s.size != p.size or not np.isfinite(s).all():
        raise ValueError(f"spread needs {p.size} finite values, got {s.size}")
    error = np.abs(p - t)
    return {
        "spread_error_srcc": _corr(scipy.stats.spearmanr, s, error),
        "mean_spread": float(s.mean()),
        "mean_abs_error": float(error.mean()),
        "within_spread": float((error <= s).mean()),
    }


class CorrelationMetrics:
    """Accumulates predictions/targets over batches; ``compute`` gives ``compute_metrics`` on all of them."""

    def __init__(self) -> None:
        self._pred: list[np.ndarray] = []
        self._target: list[np.ndarray] = []

    def update(self, pred: Any, target: Any) -> None:
        """Add a batch (tensors, arrays or sequences; flattened). Lengths must match."""
        p, t = _as_array(pred), _as_array(target)
        if p.size != t.size:
            raise ValueError(f"pred and target differ in length: {p.size} vs {t.size}")
        self._pred.append(p)
        self._target.append(t)

    def compute(self) -> dict[str, float]:
        p = np.concatenate(self._pred) if self._pred else np.empty(0)
        t = np.concatenate(self._target) if self._target else np.empty(0)
        return compute_metrics(p, t)

    def reset(self) -> None:
        self._pred.clear()
        self._target.clear()


def summarize(runs: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per metric over runs: median, mean, std (sample, ddof=1; 0 for a single run), min, max."""
    if not runs:
        raise ValueError("summarize needs at least one run")
    keys = list(runs[0])
    for k, run in enumerate(runs):
        if set(run) != set(keys):
            raise ValueError(f"run {k} has metrics {sorted(run)}, expected {sorted(keys)}")
    out: dict[str, dict[str, float]] = {}
    for key in keys:
        v = np.array([run[key] for run in runs], dtype=np.float64)
        out[key] = {
            "median": float(np.median(v)),
            "mean": float(np.mean(v)),
            "std": float(np.std(v, ddof=1)) if v.size > 1 else 0.0,
            "min": float(np.min(v)),
            "max": float(np.max(v)),
        }
    return out
