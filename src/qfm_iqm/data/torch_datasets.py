"""torch ``Dataset`` wrappers yielding training crops and deterministic test-crop grids."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from qfm_iqm.data.degradations import damaged_view, levels
from qfm_iqm.data.images import load_image
from qfm_iqm.data.records import ImageRecord
from qfm_iqm.data.transforms import Preprocessing, TrainTransform, grid_crops, prepare_image
from qfm_iqm.utils.seeds import item_seed


class _RecordImages:
    """Decodes record images and applies the resize rules, optionally keeping the result in memory
    (per process: each DataLoader worker holds its own cache)."""

    def __init__(self, records: Sequence[ImageRecord], pre: Preprocessing, cache: bool) -> None:
        self.records = list(records)
        self.pre = pre
        self._cache: dict[int, Image.Image] | None = {} if cache else None

    def _load(self, index: int) -> Image.Image:
        return prepare_image(load_image(self.records[index].path), self.pre)

    def get(self, index: int) -> Image.Image:
        if self._cache is None:
            return self._load(index)
        img = self._cache.get(index)
        if img is None:
            img = self._cache[index] = self._load(index)
        return img


class EpochViews(Dataset):
    """``views`` items per record and epoch: item ``i`` is a view of record ``i % n``, drawn with a seed
    that depends only on (seed, epoch, i), never on worker count or sampling order. Call
    ``set_epoch`` before each epoch; with DataLoader workers keep ``persistent_workers=False`` so the
    workers see the new epoch."""

    def __init__(self, num_records: int, seed: int, views: int) -> None:
        self.num_records = num_records
        self.seed = seed
        self.views = views
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose views ``__getitem__`` produces."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_records * self.views

    def view_seed(self, index: int) -> int:
        return item_seed(self.seed, self.epoch, index)


class TrainCrops(EpochViews):
    """Random training crops: item ``i`` -> (crop (3, S, S), label float32 scalar, record index)."""

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transform: TrainTransform,
        seed: int = 0,
        cache: bool = False,
        views: int = 1,
    ) -> None:
        super().__init__(len(records), seed, views)
        self.images = _RecordImages(records, transform.pre, cache)
        self.transform = transform

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        gen = torch.Generator().manual_seed(self.view_seed(index))
        record_index = index % self.num_records
        x = self.transform(self.images.get(record_index), gen)
        y = torch.tensor(self.images.records[record_index].label, dtype=torch.float32)
        return x, y, record_index


class EvalCrops(Dataset):
    """Deterministic test crops: item ``i`` -> (crops (grid*grid, 3, S, S), label float32 scalar, i)."""

    def __init__(
        self,
        records: Sequence[ImageRecord],
        pre: Preprocessing,
        grid: int = 3,
        cache: bool = False,
    ) -> None:
        self.images = _RecordImages(records, pre, cache)
        self.pre = pre
        self.grid = grid

    def __len__(self) -> int:
        return len(self.images.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        x = grid_crops(self.images.get(index), self.pre, self.grid)
        y = torch.tensor(self.images.records[index].label, dtype=torch.float32)
        return x, y, index


def degraded_stack(kinds: Sequence[str]) -> tuple[tuple[str | None, int], ...]:
    """The degraded versions of one crop, in a fixed order: the crop itself, then every (kind, level >= 1)."""
    return ((None, 0),) + tuple((kind, level) for kind in kinds for level in range(1, levels(kind) + 1))


def stack_position(kinds: Sequence[str], kind: str, level: int) -> int:
    """Where ``kind`` at ``level`` lies in ``degraded_stack(kinds)`` (level 0 is the undamaged crop)."""
    return 0 if level == 0 else degraded_stack(kinds).index((kind, level))


def degraded_crops(
    image: Image.Image, transform: TrainTransform, versions: Sequence[tuple[str | None, int]], seed: int
) -> torch.Tensor:
    """One random training crop (position and flip drawn from ``seed``) of each damaged version of ``image``
    (:func:`~qfm_iqm.data.degradations.damaged_view`): ``(len(versions), 3, S, S)``. The same ``seed``
    seeds the noise."""
    image = prepare_image(image, transform.pre)  # once for every version (it is then left as it is)
    return torch.stack(
        [
            transform(damaged_view(image, transform.pre, kind, level, seed), torch.Generator().manual_seed(seed))
            for kind, level in versions
        ]
    )


class DegradationPairs(EpochViews):
    """Pairs whose quality order is known: item ``i`` -> ``(2, ...)``, a milder and a stronger version of
    one crop of record ``i % n`` under one of ``kinds``, both drawn from (seed, epoch, i).

    With ``stacks`` (a frozen backbone's outputs for each record's fixed degraded crop stack of ``kinds``,
    see ``FrozenBackboneFeatures.degraded_stacks``) the versions are read from them; otherwise crops are
    cut and damaged on the fly.
    """

    def __init__(self, records: Sequence[ImageRecord], transform: TrainTransform, seed: int, views: int,
                 kinds: Sequence[str], stacks: Sequence | None = None) -> None:
        super().__init__(len(records), seed, views)
        self.records = list(records)
        self.transform = transform
        self.kinds = tuple(kinds)
        self.stacks = list(stacks) if stacks is not None else None

    def versions(self, index: int) -> tuple[tuple[str, int], tuple[str, int]]:
        """The (kind, level) of the milder and of the stronger version of item ``index``."""
        rng = np.random.default_rng(self.view_seed(index))
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        milder, stronger = sorted(rng.choice(levels(kind) + 1, size=2, replace=False).tolist())
        return (kind, milder), (kind, stronger)

    def __getitem__(self, index: int) -> torch.Tensor:
        record = self.records[index % self.num_records]
        pair = self.versions(index)
        if self.stacks is not None:
            positions = [stack_position(self.kinds, *version) for version in pair]
            return self.stacks[index % self.num_records][positions].float()
        return degraded_crops(load_image(record.path), self.transform, pair, self.view_seed(index) % 2**32)
