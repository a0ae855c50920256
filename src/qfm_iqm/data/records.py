"""Dataset records: labelled images, label scales and the dataset container."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DatasetError(ValueError):
    """A dataset on disk is malformed (missing files, bad labels, inconsistent metadata)."""


def offenders_message(what: str, offenders: Sequence[object], limit: int = 5) -> str:
    """Format ``what`` with its total count and the first ``limit`` offenders."""
    shown = ", ".join(str(o) for o in offenders[:limit])
    tail = ", ..." if len(offenders) > limit else ""
    return f"{what} ({len(offenders)} in total): {shown}{tail}"


@dataclass(frozen=True)
class LabelScale:
    """The range and direction of a dataset's raw opinion scores.

    ``normalize`` maps a raw score linearly to [0, 1] (for scores inside ``[low, high]``) so that a
    higher value always means better quality; ``denormalize`` is its exact inverse.
    """

    low: float
    high: float
    higher_is_better: bool
    name: str

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(f"LabelScale {self.name!r}: need finite low < high, got {self.low}, {self.high}")

    def normalize(self, raw: float) -> float:
        """Raw score -> [0, 1], higher is better."""
        y = (float(raw) - self.low) / (self.high - self.low)
        return y if self.higher_is_better else 1.0 - y

    def denormalize(self, y: float) -> float:
        """[0, 1] score (higher is better) -> raw score on this scale."""
        t = float(y) if self.higher_is_better else 1.0 - float(y)
        return self.low + t * (self.high - self.low)


@dataclass(frozen=True)
class ImageRecord:
    """One labelled image.

    ``label`` is normalised to [0, 1] with higher = better; ``raw_label`` and ``raw_std`` are on the
    dataset's own scale. ``ref_id`` names the pristine reference content (synthetic datasets) or is
    ``None`` when every image is its own content (authentic datasets).
    """

    path: Path
    label: float
    raw_label: float
    ref_id: str | None = None
    raw_std: float | None = None


@dataclass
class IQADataset:
    """A labelled IQA dataset: records plus the scale their raw labels live on.

    ``official_split`` maps the authors' part names (``train``, ``val``, ``test``) to record indices
    where the authors publish a split. ``resize_short_side`` is the dataset's resize rule: images are
    to be resized (aspect kept) so their shorter side has this many pixels before cropping; ``None``
    means images are used at their stored size. ``rated_short_side`` is the shorter side at which the
    images were shown to the raters (where it is one size): a model trained on them scores every photo
    at that scale (``Preprocessing.max_short_side`` and ``min_short_side``).
    """

    name: str
    root: Path
    records: list[ImageRecord]
    scale: LabelScale
    synthetic: bool
    official_split: dict[str, tuple[int, ...]] | None = None
    resize_short_side: int | None = None
    rated_short_side: int | None = None

    def __len__(self) -> int:
        return len(self.records)

    def labels(self) -> np.ndarray:
        """Normalised labels ([0, 1], higher is better), float64, in record order."""
        return np.array([r.label for r in self.records], dtype=np.float64)

    def raw_labels(self) -> np.ndarray:
        """Raw labels on the dataset's scale, float64, in record order."""
        return np.array([r.raw_label for r in self.records], dtype=np.float64)
