"""The one map from the network's raw output to a reported score, and the interval built around it.

The score head is linear, so its output is unbounded: a photo unlike any training image can land
below 0 or above 1 on the normalised scale. Clamping would tie every such photo at the scale's end and
lose their order. Instead every score users see goes through :func:`bounded`, a strictly increasing map
of the real line onto (0, 1):

* the identity on ``[MARGIN, 1 - MARGIN]`` (5-95 on a 0-100 MOS scale), so that scores inside the
  range of the training labels are the network's own;
* hyperbolic tails below and above, ``MARGIN**2 / (2*MARGIN - x)``, that meet the identity with
  the same value and slope and approach 0 (1) without reaching it.

Distinct raw scores stay distinct and the map has a positive gradient everywhere, so ``as_loss`` can
optimise through it. :func:`unbounded` is its inverse.

The calibrated range is built in raw units and mapped: ``[bounded(s - q), bounded(s + q)]``, with ``q``
calibrated on the residuals ``|unbounded(label) - s|`` of held-out images. A label is inside the mapped
range exactly when ``unbounded(label)`` is inside the raw one, so split-conformal coverage holds for
the reported range as it does for the raw one, for every label at least :data:`LABEL_EDGE` inside the
scale (labels nearer an end are calibrated as if that near, and no range reaches the end itself).
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np


if TYPE_CHECKING:  # tensors are mapped with torch's own ops; a cached graph is scored without torch
    import torch

    from qfm_iqm.data.records import LabelScale

__all__ = ["LABEL_EDGE", "MARGIN", "ConformalInterval", "bounded", "check_coverage", "interval_bounds", "reported_score",
           "unbounded"]

MARGIN = 0.05  # normalised units: the map is the identity on [MARGIN, 1 - MARGIN]
# Labels closer to an end of the scale than this (0.1 MOS on 0-100; a label exactly at an end, e.g. the
# minimum of a scale taken from the data) are calibrated as if this close: no reported range reaches an end.
LABEL_EDGE = 1e-3

Scores = TypeVar("Scores", np.ndarray, "torch.Tensor", float)


def _tail(distance: Scores) -> Scores:
    """The lower tail at ``MARGIN - distance`` for ``distance >= 0`` (``MARGIN`` at 0, towards 0 as it grows)."""
    return MARGIN * MARGIN / (MARGIN + distance)


def bounded(raw: Scores) -> Scores:
    """Raw normalised scores -> (0, 1), strictly increasing (works on floats, numpy arrays and tensors,
    with gradients for tensors)."""
    torch = sys.modules.get("torch")  # a tensor can only exist once torch is imported
    if torch is not None and isinstance(raw, torch.Tensor):
        below = (MARGIN - raw).clamp_min(0.0)  # each tail sees only its own side: no inf in the unused branch
        above = (raw - (1.0 - MARGIN)).clamp_min(0.0)
        middle = raw.clamp(MARGIN, 1.0 - MARGIN)
        return torch.where(raw < MARGIN, _tail(below), torch.where(raw > 1.0 - MARGIN, 1.0 - _tail(above), middle))
    values = np.asarray(raw, dtype=np.float64)
    below, above = np.maximum(MARGIN - values, 0.0), np.maximum(values - (1.0 - MARGIN), 0.0)
    mapped = np.where(values < MARGIN, _tail(below), np.where(values > 1.0 - MARGIN, 1.0 - _tail(above), values))
    return float(mapped) if isinstance(raw, (float, int)) else mapped


def reported_score(raw: Scores, scale: LabelScale) -> Scores:
    """The score users get on ``scale`` from raw normalised output: :func:`bounded`, then onto the scale
    (floats, numpy arrays and tensors alike; the API, the metric and the protocol's predictions)."""
    mapped = bounded(raw)
    if not scale.higher_is_better:
        mapped = 1.0 - mapped
    return scale.low + mapped * (scale.high - scale.low)


def unbounded(score: np.ndarray | float) -> np.ndarray:
    """The inverse of :func:`bounded` on (0, 1); scores at or beyond 0 (1) give -inf (+inf)."""
    values = np.asarray(score, dtype=np.float64)
    with np.errstate(divide="ignore"):
        low = np.where(values > 0.0, MARGIN - (MARGIN * MARGIN / np.maximum(values, 1e-300) - MARGIN), -np.inf)
        high_distance = np.maximum(1.0 - values, 1e-300)
        high = np.where(values < 1.0, 1.0 - MARGIN + (MARGIN * MARGIN / high_distance - MARGIN), np.inf)
    return np.where(values < MARGIN, low, np.where(values > 1.0 - MARGIN, high, values))


def check_coverage(coverage: float) -> None:
    """Raise ``ValueError`` unless ``coverage`` lies in (0, 1)."""
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must be in (0, 1), got {coverage}")


@dataclass(frozen=True)
class ConformalInterval:
    """``coverage`` and the calibrated half-width ``quantile`` (times ``difficulty`` when ``scaled``)."""

    coverage: float
    quantile: float
    scaled: bool = False
    calibration_size: int = 0

    def __post_init__(self) -> None:
        check_coverage(self.coverage)
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


def interval_bounds(interval: ConformalInterval, raw_scores: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """The reported range ``(low, high)`` (normalised, inside (0, 1)) of raw scores."""
    low, high = interval.bounds(raw_scores)
    return bounded(low), bounded(high)
