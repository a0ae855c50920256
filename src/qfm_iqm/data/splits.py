"""Seeded train/test splits (by reference content for synthetic datasets) and their JSON files."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qfm_iqm.data.records import DatasetError, IQADataset, offenders_message
from qfm_iqm.utils.checkpoint import atomic_write_text

SPLITS_FORMAT = "qfm-iqm-splits"
SPLITS_VERSION = 1
OFFICIAL_SPLIT_SEED = -1  # marks the authors' split (``official_split``) where a seed is expected


@dataclass(frozen=True)
class Split:
    """One train/test partition: sorted indices into ``dataset.records``."""

    seed: int
    train: tuple[int, ...]
    test: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "train": list(self.train), "test": list(self.test)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Split:
        """Inverse of ``to_dict``; indices are sorted. Raises ``DatasetError`` on a malformed entry."""
        try:
            seed, train, test = d["seed"], d["train"], d["test"]
        except (KeyError, TypeError) as exc:
            raise DatasetError(f"split entry must have 'seed', 'train' and 'test', got {d!r:.200}") from exc
        if not (isinstance(train, (list, tuple)) and isinstance(test, (list, tuple))):
            raise DatasetError(f"split 'train' and 'test' must be lists of indices (seed {seed!r})")
        values = [seed, *train, *test]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise DatasetError(f"split seed and indices must be integers (seed {seed!r})")
        return cls(seed=seed, train=tuple(sorted(train)), test=tuple(sorted(test)))


def _groups(dataset: IQADataset) -> list[str]:
    """Group key per record: its ref_id for synthetic datasets, else its own index."""
    if not dataset.synthetic:
        return [str(i) for i in range(len(dataset))]
    missing = [str(r.path) for r in dataset.records if r.ref_id is None]
    if missing:
        raise DatasetError(
            offenders_message(f"synthetic dataset {dataset.name!r} has records without ref_id", missing)
        )
    return [str(r.ref_id) for r in dataset.records]


def _partition(
    indices: Sequence[int], groups: Sequence[str], fraction: float, seed: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shuffle the distinct groups with ``seed``; the first ``round(fraction * n_groups)`` (at least
    one, at most all but one) go to the first part. Returns both parts as sorted index tuples."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    unique = sorted(set(groups))
    if len(unique) < 2:
        raise ValueError(f"need at least 2 distinct items/contents to split, got {len(unique)}")
    order = np.random.default_rng(seed).permutation(len(unique))
    n_first = min(max(round(fraction * len(unique)), 1), len(unique) - 1)
    first = {unique[k] for k in order[:n_first]}
    a = tuple(sorted(i for i, g in zip(indices, groups) if g in first))
    b = tuple(sorted(i for i, g in zip(indices, groups) if g not in first))
    return a, b


def make_split(dataset: IQADataset, seed: int, train_fraction: float = 0.8) -> Split:
    """Seeded split of ``dataset``: by reference content (``ref_id``) when synthetic, else by image.

    ``train_fraction`` applies to contents (synthetic) or images (authentic).
    """
    train, test = _partition(range(len(dataset)), _groups(dataset), train_fraction, seed)
    return Split(seed=seed, train=train, test=test)


def official_split(dataset: IQADataset) -> Split | None:
    """The authors' split as a ``Split`` with seed ``OFFICIAL_SPLIT_SEED``, or ``None`` without one.

    ``train`` is the authors' training part; ``test`` their test part, or their validation part when
    they publish no test part. The validation part stays in ``dataset.official_split["val"]``.
    """
    parts = dataset.official_split
    if not parts:
        return None
    train, test = parts.get("train", ()), parts.get("test") or parts.get("val", ())
    if not train or not test:
        raise DatasetError(f"official split of {dataset.name!r} needs a training part and a test or validation part")
    split = Split(seed=OFFICIAL_SPLIT_SEED, train=tuple(sorted(train)), test=tuple(sorted(test)))
    _validate([split], len(dataset), f"official split of {dataset.name!r}")
    return split


def make_splits(dataset: IQADataset, seeds: Iterable[int], train_fraction: float = 0.8) -> list[Split]:
    """``make_split`` for each seed."""
    return [make_split(dataset, s, train_fraction) for s in seeds]


def carve_validation(
    split_train_indices: Sequence[int],
    fraction: float,
    seed: int,
    dataset: IQADataset | None = None,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Split training indices into (train, val), ``fraction`` going to val, for test-blind model
    selection. Pass ``dataset`` to keep each reference content on one side for synthetic datasets."""
    indices = list(split_train_indices)
    all_groups = _groups(dataset) if dataset is not None else None
    groups = [all_groups[i] if all_groups is not None else str(i) for i in indices]
    val, train = _partition(indices, groups, fraction, seed)
    return train, val


def _validate(splits: Sequence[Split], n_records: int, where: str) -> None:
    """Raise ``DatasetError`` for indices out of range, repeated, or in both parts."""
    for k, sp in enumerate(splits):
        bad = [i for i in (*sp.train, *sp.test) if not 0 <= i < n_records]
        if bad:
            raise DatasetError(
                offenders_message(f"{where}: split {k} (seed {sp.seed}) has indices outside [0, {n_records})", bad)
            )
        dup = sorted({i for part in (sp.train, sp.test) for i, c in Counter(part).items() if c > 1})
        if dup:
            raise DatasetError(offenders_message(f"{where}: split {k} (seed {sp.seed}) repeats indices", dup))
        both = sorted(set(sp.train) & set(sp.test))
        if both:
            raise DatasetError(
                offenders_message(f"{where}: split {k} (seed {sp.seed}) has indices in both train and test", both)
            )


def save_splits(path: str | Path, splits: Sequence[Split], dataset_name: str, n_records: int) -> None:
    """Write ``splits`` as JSON (atomically, with the usual file mode)."""
    path = Path(path)
    _validate(splits, n_records, str(path))
    payload = {
        "format": SPLITS_FORMAT,
        "version": SPLITS_VERSION,
        "dataset": dataset_name,
        "n_records": n_records,
        "splits": [s.to_dict() for s in splits],
    }
    atomic_write_text(path, json.dumps(payload))


def load_splits(path: str | Path, dataset: IQADataset) -> list[Split]:
    """Read splits written by ``save_splits`` and check them against ``dataset``.

    Raises ``DatasetError`` for unreadable/malformed JSON, a different dataset name or size, indices
    out of range, repeated or in both parts, and (synthetic datasets) a content in both parts.
    """
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read splits file {path}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != SPLITS_FORMAT:
        raise DatasetError(f"{path} is not a {SPLITS_FORMAT} file")
    if payload.get("version") != SPLITS_VERSION:
        raise DatasetError(f"{path}: unsupported splits version {payload.get('version')!r}")
    if payload.get("dataset") != dataset.name or payload.get("n_records") != len(dataset):
        raise DatasetError(
            f"{path} was made for dataset {payload.get('dataset')!r} with {payload.get('n_records')} records, "
            f"not {dataset.name!r} with {len(dataset)}"
        )
    entries = payload.get("splits")
    if not isinstance(entries, list):
        raise DatasetError(f"{path}: 'splits' must be a list")
    splits = [Split.from_dict(e) for e in entries]
    _validate(splits, len(dataset), str(path))
    if dataset.synthetic:
        groups = _groups(dataset)
        for k, sp in enumerate(splits):
            shared = sorted({groups[i] for i in sp.train} & {groups[i] for i in sp.test})
            if shared:
                what = f"{path}: split {k} (seed {sp.seed}) has reference contents in both parts"
                raise DatasetError(offenders_message(what, shared))
    return splits
