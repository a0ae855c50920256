"""Calibrated score intervals by split conformal prediction.

Residuals of predictions on images the model never trained on (a validation part, or out-of-fold
predictions) give a half-width ``q``: the ``ceil((n + 1) * coverage)``-th smallest residual. Then
``[score - q, score + q]`` holds the true score for at least ``coverage`` of new images exchangeable
with the calibration images (Vovk et al.; Lei et al. 2018). With a per-image ``difficulty`` the
residuals are divided by it and the interval is ``score +- q * difficulty``: as valid, and narrower
where the difficulty estimate tracks the error.

Reported scores go through a strictly increasing map onto the scale (:mod:`qfm_iqm.inference.score_map`);
calibrating on labels taken back through its inverse keeps the guarantee for the mapped bounds
(:func:`calibrate_bounded`). The interval a checkpoint records and every score applies,
:class:`~qfm_iqm.inference.score_map.ConformalInterval`, lives with the score map.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from qfm_iqm.inference.score_map import LABEL_EDGE, ConformalInterval, check_coverage, unbounded


def _rank(size: int, coverage: float) -> int:
    """The rank of the calibrated residual among ``size`` sorted ones (1-based)."""
    return math.ceil((size + 1) * coverage)


def min_calibration_size(coverage: float) -> int:
    """The fewest calibration images :func:`calibrate` accepts for ``coverage`` (9 for 0.9)."""
    check_coverage(coverage)
    size = max(1, math.floor(coverage / (1 - coverage)) - 1)
    while _rank(size, coverage) > size:
        size += 1
    return size


def calibrate(
    predictions: np.ndarray, labels: np.ndarray, coverage: float = 0.9, difficulty: np.ndarray | None = None
) -> ConformalInterval:
    """The split-conformal interval of ``coverage`` from held-out ``predictions`` and their ``labels``.

    A label of ``+-inf`` (one at the very end of a bounded scale, see :func:`~qfm_iqm.inference.score_map.unbounded`)
    is a residual no interval covers. Raises ``ValueError`` for a coverage outside (0, 1), mismatched
    inputs, NaN or infinite predictions, a non-positive difficulty, too few calibration images for the
    coverage (``n < 1/(1-coverage) - 1``), or so many infinite residuals that the half-width is infinite.
    """
    check_coverage(coverage)
    predictions, labels = np.asarray(predictions, np.float64), np.asarray(labels, np.float64)
    if predictions.shape != labels.shape or predictions.ndim != 1:
        raise ValueError(f"predictions and labels must be 1-D of one length, got {predictions.shape}, {labels.shape}")
    residuals = np.abs(labels - predictions)
    if difficulty is not None:
        difficulty = np.asarray(difficulty, np.float64)
        if difficulty.shape != residuals.shape or not (difficulty > 0).all():
            raise ValueError("difficulty must be positive, one value per prediction")
        residuals = residuals / difficulty
    if not np.isfinite(predictions).all() or np.isnan(labels).any():
        raise ValueError("calibration predictions must be finite and labels not NaN")
    n = len(residuals)
    if n < min_calibration_size(coverage):
        raise ValueError(f"{n} calibration images are too few for {coverage:.0%} coverage "
                         f"(need {min_calibration_size(coverage)})")
    quantile = float(np.sort(residuals)[_rank(n, coverage) - 1])
    if not math.isfinite(quantile):
        raise ValueError(f"more than {1 - coverage:.0%} of the calibration labels lie at the ends of the scale")
    return ConformalInterval(coverage, quantile, difficulty is not None, n)


def interval_report(
    interval: ConformalInterval,
    predictions: np.ndarray,
    labels: np.ndarray,
    difficulty: np.ndarray | None = None,
    score_map: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, float]:
    """Measured ``coverage`` (share of labels inside their interval) and ``mean_width`` on new data, of
    the bounds passed through ``score_map`` when given (the reported range)."""
    low, high = interval.bounds(predictions, difficulty)
    if score_map is not None:
        low, high = score_map(low), score_map(high)
    labels = np.asarray(labels, np.float64)
    return {"coverage": float(((labels >= low) & (labels <= high)).mean()), "mean_width": float((high - low).mean())}


def calibrate_bounded(raw_scores: np.ndarray, labels: np.ndarray, coverage: float) -> ConformalInterval:
    """The split-conformal interval (raw units) whose mapped range holds normalised ``labels`` of new
    images for ``coverage`` of them, from held-out raw scores and their labels (see :data:`LABEL_EDGE`)."""
    inside = np.clip(np.asarray(labels, np.float64), LABEL_EDGE, 1.0 - LABEL_EDGE)
    return calibrate(np.asarray(raw_scores, np.float64), unbounded(inside), coverage)
