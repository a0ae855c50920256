"""Calibrated score intervals by split conformal prediction.

Residuals of predictions on images the model never trained on (a validation part, or out-of-fold
predictions) give a half-width ``q``: the ``ceil((n + 1) * coverage)``-th smallest residual. Then
``[score - q, score + q]`` holds the true score for at least ``coverage`` of new images exchangeable
with the calibration images (Vovk et al.; Lei et al. 2018). With a per-image ``difficulty`` the
residuals are divided by it and the interval is ``score +- q * difficulty``: as valid, and narrower
where the difficulty estimate tracks the error.

Reported scores go through a strictly increasing map onto the scale (:mod:`qfm_iqm.evaluation.score_map`);
calibrating on labels taken back through its inverse keeps the guarantee for the mapped bounds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np


def _check_coverage(coverage: float) -> None:
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must be in (0, 1), got {coverage}")


def _rank(size: int, coverage: float) -> int:
    """The rank of the calibrated residual among ``size`` sorted ones (1-based)."""
    return math.ceil((size + 1) * coverage)


def min_calibration_size(coverage: float) -> int:
    """The fewest calibration images :func:`calibrate` accepts for ``coverage`` (9 for 0.9)."""
    _check_coverage(coverage)
    size = max(1, math.floor(coverage / (1 - coverage)) - 1)
    while _rank(size, coverage) > size:
        size += 1
    return size


@dataclass(frozen=True)
class ConformalInterval:
    """``coverage`` and the calibrated half-width ``quantile`` (times ``difficulty`` when ``scaled``)."""

    coverage: float
    quantile: float
    scaled: bool = False
    calibration_size: int = 0

    def __post_init__(self) -> None:
        _check_coverage(self.coverage)
        if not (math.isfinite(self.quantile) and self.quantile >= 0):
            raise ValueError(f"quantile must be a finite number >= 0, got {self.quantile}")

    def bounds(
        self,
        scores: np.ndarray | float,
        difficulty: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(low, high)`` for each score (same units as the calibration residuals)."""
        scores = np.asarray(scores, dtype=np.float64)
        if self.scaled:
            if difficulty is None:
                raise ValueError("this interval was calibrated with a per-image difficulty; pass it")
            half = self.quantile * np.asarray(difficulty, dtype=np.float64)
        else:
            half = np.full_like(scores, self.quantile)
        return scores - half, scores + half

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ConformalInterval":
        return cls(float(data["coverage"]), float(data["quantile"]), bool(data.get("scaled", False)),
                   int(data.get("calibration_size", 0)))


def calibrate(
    predictions: np.ndarray, labels: np.ndarray, coverage: float = 0.9, difficulty: np.ndarray | None = None
) -> ConformalInterval:
    """The split-conformal interval of ``coverage`` from held-out ``predictions`` and their ``labels``.

    A label of ``+-inf`` (one at the very end of a bounded scale, see :func:`~qfm_iqm.evaluation.score_map.unbounded`)
    is a residual no interval covers. Raises ``ValueError`` for a coverage outside (0, 1), mismatched
    inputs, NaN or infinite predictions, a non-positive difficulty, too few calibration images for the
    coverage (``n < 1/(1-coverage) - 1``), or so many infinite residuals that the half-width is infinite.
    """
    _check_coverage(coverage)
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
