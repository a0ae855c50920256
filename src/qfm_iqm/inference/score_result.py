"""From the network's output to the result of one image, without torch (the command line scores a
cached graph, and reads and writes its output files, without it).

Both :class:`qfm_iqm.api.Scorer` and :class:`qfm_iqm.inference.graph.GraphScorer` go through
:func:`panel_scores` and :func:`image_result`, so the runtimes differ only in what computes the
panel members' scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from qfm_iqm.inference.score_map import ConformalInterval, interval_bounds, reported_score

if TYPE_CHECKING:
    from qfm_iqm.data.records import LabelScale

__all__ = ["ScoreResult", "image_result", "panel_scores"]


@dataclass(frozen=True)
class ScoreResult:
    """The score of one image on the model's scale, with its calibrated range and the panel's spread.

    - ``low``, ``high``: the calibrated range. It holds the true MOS for the stated share of photos
      like the checkpoint's calibration images (``Scorer.interval.coverage``, e.g. 90%); it contains
      ``score`` and stays within the scale. ``None`` when the checkpoint records no interval.
    - ``uncertainty``: the attention panel's spread on the same scale. Not calibrated and not an
      error bar: it is far smaller than the errors (docs/scoring.md).

    ``path`` is the file's path for path inputs, else ``None``. Results of file batches
    (:func:`qfm_iqm.scoring.score_files`) for inputs that failed have every number ``None`` and the
    reason in ``error``; :meth:`Scorer.score` raises instead.
    """

    score: float | None
    uncertainty: float | None
    path: str | None = None
    error: str | None = None
    low: float | None = None
    high: float | None = None


def panel_scores(member_scores: np.ndarray, counts: Sequence[int]) -> list[tuple[float, float]]:
    """Per image, from the panel members' scores (N, L) of consecutive images' crops (``counts`` crops
    each): the mean over its crops of the members' mean (the score) and of their spread (population
    std), on the normalised scale."""
    scores, spreads = member_scores.mean(axis=1), member_scores.std(axis=1)
    ends = np.cumsum(counts).tolist()
    return [(float(scores[end - count : end].mean()), float(spreads[end - count : end].mean()))
            for count, end in zip(counts, ends)]


def image_result(score: float, spread: float, path: str | None, scale: LabelScale,
                 interval: ConformalInterval | None) -> ScoreResult:
    """One image's result from its :func:`panel_scores` (the raw normalised score) on ``scale``: the score
    and the range of ``interval`` (when there is one) through the one monotone map onto the scale
    (:mod:`qfm_iqm.inference.score_map`)."""
    low = high = None
    if interval is not None:  # sorted: a lower-is-better scale swaps the bounds
        low, high = sorted(scale.denormalize(float(bound)) for bound in interval_bounds(interval, score))
    spread = spread * (scale.high - scale.low)
    return ScoreResult(reported_score(score, scale), spread, path, low=low, high=high)
