"""Outputs of a frozen backbone, computed once per crop: each image's bank of random training crops
and its grid of test crops. With ``freeze_backbone`` the backbone never changes, so recomputing its
output for every view of every epoch would be wasted work; only the projection and decoder train.

Each crop's output is stored as one (1 + N, C) array: the backbone's global vector ``c`` (a ViT's CLS
token, a CNN's average) first, then its N tokens, so that the cached path feeds the decoder exactly
what the full forward pass does (:meth:`QFMIQM.encode_cached`). The training sets are computed
up front, in the main process and on its device (:meth:`FrozenBackboneFeatures.banks`,
:meth:`~FrozenBackboneFeatures.degraded_stacks`): DataLoader workers only read them, never run the
backbone (CUDA cannot run in forked workers), and keep nothing that a new epoch's workers would lose.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from qfm_iqm.data.degradations import STRENGTHS, damaged_view
from qfm_iqm.data.images import load_image
from qfm_iqm.data.records import ImageRecord
from qfm_iqm.data.torch_datasets import EpochViews, degraded_crops, degraded_stack
from qfm_iqm.utils.seeds import item_seed, path_seed
from qfm_iqm.data.transforms import Preprocessing, TrainTransform, grid_crops, prepare_image
from qfm_iqm.models.backbones import Backbone
from qfm_iqm.utils.distributed import all_gather_json, barrier, shard, world_size

if TYPE_CHECKING:
    from qfm_iqm.models.qfm import QFMIQM
    from qfm_iqm.training.config import TrainConfig

BANK_SEED = 20240721  # the bank's crops depend on the image alone, so every run and split shares them
# Part of every key, so that a run never reads outputs computed another way. Change it (e.g. to "c+tokens/2")
# whenever the stored arrays would differ: their layout (``c`` then the tokens), or how the crops, resizing,
# degradations or backbone arithmetic compute them. The keys hold only settings (backbone, preprocessing,
# crop counts, strengths), not code: before this rule, which code had computed a run's features depended on
# the cache's history, and last-bit differences moved one recipe's validation SRCC on a split between 0.747
# and 0.766 (results/benchmark/livec-broad-damage/README.md).
CACHE_FORMAT = "c+tokens"
_STORE: dict[tuple, Tensor] = {}  # process-wide: a sweep or a protocol reuses what an earlier run computed


def clear_feature_store() -> None:
    """Forget every cached backbone output of this process."""
    _STORE.clear()


@dataclass(frozen=True)
class StackFile:
    """A degraded stack kept in a ``.npy`` file: indexing reads only the rows asked for."""

    path: Path

    def __getitem__(self, positions: Sequence[int]) -> Tensor:
        return torch.from_numpy(np.load(self.path, mmap_mode="r")[list(positions)])


class FrozenBackboneFeatures:
    """Backbone outputs (n_crops, 1 + N, C) in float16 (``c`` then the tokens of every crop) for a
    record's crop bank or crop grid.

    ``identity`` names the frozen backbone (architecture, weights, stage grid); outputs are shared
    by every instance with the same identity and preprocessing in this process, and kept in
    ``cache_dir`` (one ``.npy`` file per image and crop set) for later processes when it is given.
    Under ``torchrun`` with a ``cache_dir`` the processes share the work of filling it (each writes
    its share of the files, then all read them); without one each process computes every output.
    """

    def __init__(
        self,
        backbone: Backbone,
        pre: Preprocessing,
        bank: int,
        identity: tuple,
        device: torch.device,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.backbone = backbone
        self.pre = pre
        self.bank_size = bank
        self.identity = (identity, pre, BANK_SEED, CACHE_FORMAT)
        self.device = device
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.transform = TrainTransform(pre)

    def _file(self, key: tuple) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{hashlib.sha1(repr(key).encode()).hexdigest()}.npy"

    @staticmethod
    def _save(file: Path, outputs: Tensor) -> None:
        """Write ``file`` whole: through a partial file of this writer's own, then an atomic rename (two
        processes writing the same file never mix their bytes; either complete copy wins)."""
        file.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=file.parent, prefix=f"{file.stem}.", suffix=".partial.npy")
        try:
            with os.fdopen(handle, "wb") as stream:
                np.save(stream, outputs.numpy())
            os.replace(partial, file)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise

    def _cached(self, key: tuple, compute: Callable[[], Tensor]) -> Tensor:
        if key in _STORE:
            return _STORE[key]
        file = self._file(key)
        if file is not None and file.is_file():
            _STORE[key] = torch.from_numpy(np.load(file))
            return _STORE[key]
        tokens = _STORE[key] = compute()
        if file is not None:
            self._save(file, tokens)
        return tokens

    @torch.inference_mode()
    def _encode(self, crops: Tensor) -> Tensor:
        """(n, 1 + N, C) float16 on the CPU: each crop's ``c``, then its tokens."""
        was_training = self.backbone.training
        self.backbone.eval()
        c, tokens = self.backbone(crops.to(self.device, non_blocking=True))
        outputs = torch.cat([c.unsqueeze(1), tokens], dim=1).to("cpu", torch.float16)
        self.backbone.train(was_training)
        return outputs

    def _fill(self, work: Sequence[tuple[tuple, Callable[[], Tensor]]]) -> None:
        """Under ``torchrun`` with a ``cache_dir``: write the files of ``(key, compute)`` that do not exist
        yet, each rank its share of rank 0's list of them, and wait until all are written. Otherwise
        nothing (each process computes what it reads). Every rank must call it with the same keys."""
        if world_size() == 1 or self.cache_dir is None:
            return
        missing = [k for k, (key, _) in enumerate(work) if not self._file(key).is_file()]
        for k in shard(all_gather_json(missing)[0]):
            key, compute = work[k]
            self._save(self._file(key), compute())
        barrier()

    def _bank_work(self, record: ImageRecord) -> tuple[tuple, Callable[[], Tensor]]:
        def compute() -> Tensor:
            image = prepare_image(load_image(record.path), self.pre)
            image_seed = path_seed(record.path)
            crops = [
                self.transform(image, torch.Generator().manual_seed(item_seed(BANK_SEED, k, image_seed)))
                for k in range(self.bank_size)
            ]
            return self._encode(torch.stack(crops))

        return (self.identity, str(record.path), "bank", self.bank_size), compute

    def bank(self, record: ImageRecord) -> Tensor:
        """The outputs of the record's ``bank`` fixed random training crops (flips included)."""
        return self._cached(*self._bank_work(record))

    def banks(self, records: Sequence[ImageRecord]) -> list[Tensor]:
        """:meth:`bank` of every record, all computed now (for datasets whose workers only read them)."""
        self._fill([self._bank_work(record) for record in records])
        return [self.bank(record) for record in records]

    def _degraded_work(self, record: ImageRecord, kinds: Sequence[str]) -> tuple[tuple, Callable[[], Tensor]]:
        def compute() -> Tensor:
            seed = item_seed(BANK_SEED, 0, path_seed(record.path)) % 2**32
            return self._encode(degraded_crops(load_image(record.path), self.transform, degraded_stack(kinds), seed))

        strengths = {kind: STRENGTHS[kind] for kind in kinds}
        return (self.identity, str(record.path), "degraded", repr(strengths)), compute

    def degraded_stack(self, record: ImageRecord, kinds: Sequence[str]) -> Tensor | StackFile:
        """The outputs of the record's degraded stack: one fixed random crop, undamaged and at every
        (kind, level) of ``degraded_stack(kinds)``. With ``cache_dir`` the stack stays on disk (read a
        slice at a time, so memory does not grow with it); without, in this process's memory."""
        key, compute = self._degraded_work(record, kinds)
        file = self._file(key)
        if file is None:
            return self._cached(key, compute)
        if not file.is_file():
            self._save(file, compute())
        return StackFile(file)

    def degraded_stacks(self, records: Sequence[ImageRecord], kinds: Sequence[str]) -> list[Tensor | StackFile]:
        """:meth:`degraded_stack` of every record, all computed now."""
        self._fill([self._degraded_work(record, kinds) for record in records])
        return [self.degraded_stack(record, kinds) for record in records]

    def degraded(self, record: ImageRecord, kinds: Sequence[str], positions: Sequence[int]) -> Tensor:
        """The given ``positions`` of the record's degraded stack of ``kinds``."""
        return self.degraded_stack(record, kinds)[list(positions)]

    def grid(self, record: ImageRecord, grid: int, kind: str | None = None, level: int = 0) -> Tensor:
        """The tokens of the record's deterministic ``grid x grid`` test crops; of the image damaged by
        ``kind`` at ``level`` when given (the degradation check; noise seeded by the path)."""
        if kind is None or level == 0:
            key = (self.identity, str(record.path), "grid", grid)
            return self._cached(key, lambda: self._encode(grid_crops(load_image(record.path), self.pre, grid)))

        def compute() -> Tensor:
            damaged = damaged_view(load_image(record.path), self.pre, kind, level, path_seed(record.path))
            return self._encode(grid_crops(damaged, self.pre, grid))

        # "viewed": damaged after the resize rules (files of the earlier order are not read)
        key = (self.identity, str(record.path), "grid", grid, kind, level, repr(STRENGTHS[kind]), "viewed")
        return self._cached(key, compute)


class CachedCrops(EpochViews):
    """Training views from the crop banks (``banks[i]``: record ``i``'s, see
    :meth:`FrozenBackboneFeatures.banks`): item ``i`` -> (outputs (1 + N, C) float32, label, record
    index); the bank slot of item ``i`` depends only on (seed, epoch, i)."""

    def __init__(self, records: Sequence[ImageRecord], banks: Sequence[Tensor], seed: int, views: int) -> None:
        super().__init__(len(records), seed, views)
        self.labels = [record.label for record in records]
        self.banks = list(banks)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        record = index % self.num_records
        bank = self.banks[record]
        outputs = bank[self.view_seed(index) % bank.shape[0]].float()
        return outputs, torch.tensor(self.labels[record], dtype=torch.float32), record


def frozen_backbone_features(config: "TrainConfig", model: "QFMIQM", device: torch.device) -> FrozenBackboneFeatures | None:
    """The cache of ``model``'s frozen backbone under training options ``config`` (``None`` unless
    ``config.freeze_backbone``); every run on the same backbone shares it."""
    if not config.freeze_backbone:
        return None
    identity = (config.model.backbone, config.backbone_weights, config.model.multi_stage, config.model.stage_grid)
    pre = Preprocessing.from_dict(model.config.preprocessing)
    return FrozenBackboneFeatures(model.backbone, pre, config.crop_bank, identity, device, config.feature_cache_dir)
