"""Outputs of a frozen backbone, computed once per crop: each image's bank of random training crops
and its grid of test crops. With ``freeze_backbone`` the backbone never changes, so recomputing its
output for every view of every epoch would be wasted work; only the projection and decoder train."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from qfm_iqm.data.degradations import STRENGTHS, degrade
from qfm_iqm.data.images import load_image
from qfm_iqm.data.records import ImageRecord
from qfm_iqm.data.torch_datasets import EpochViews, degraded_crops, degraded_stack, item_seed
from qfm_iqm.data.transforms import Preprocessing, TrainTransform, grid_crops, prepare_image
from qfm_iqm.models.backbones import Backbone

if TYPE_CHECKING:
    from qfm_iqm.models.qfm import QFMIQM
    from qfm_iqm.training.config import TrainConfig

BANK_SEED = 20240721  # the bank's crops depend on the image alone, so every run and split shares them
_STORE: dict[tuple, Tensor] = {}  # process-wide: a sweep or a protocol reuses what an earlier run computed


def clear_feature_store() -> None:
    """Forget every cached backbone output of this process."""
    _STORE.clear()


class FrozenBackboneFeatures:
    """Backbone outputs ``tokens`` (n_crops, N, C) in float16 for a record's crop bank or crop grid.

    ``identity`` names the frozen backbone (architecture, weights, stage grid); outputs are shared
    by every instance with the same identity and preprocessing in this process, and kept in
    ``cache_dir`` (one ``.npy`` file per image and crop set) for later processes when it is given.
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
        self.identity = (identity, pre, BANK_SEED)
        self.device = device
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.transform = TrainTransform(pre)

    def _file(self, key: tuple) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{hashlib.sha1(repr(key).encode()).hexdigest()}.npy"

    @staticmethod
    def _save(file: Path, tokens: Tensor) -> None:
        file.parent.mkdir(parents=True, exist_ok=True)
        partial = file.with_suffix(".partial.npy")
        np.save(partial, tokens.numpy())
        partial.replace(file)

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
        was_training = self.backbone.training
        self.backbone.eval()
        tokens = self.backbone(crops.to(self.device))[1].to("cpu", torch.float16)
        self.backbone.train(was_training)
        return tokens

    def bank(self, record: ImageRecord) -> Tensor:
        """The tokens of the record's ``bank`` fixed random training crops (flips included)."""

        def compute() -> Tensor:
            image = prepare_image(load_image(record.path), self.pre)
            image_seed = zlib.crc32(str(record.path).encode())
            crops = [
                self.transform(image, torch.Generator().manual_seed(item_seed(BANK_SEED, k, image_seed)))
                for k in range(self.bank_size)
            ]
            return self._encode(torch.stack(crops))

        return self._cached((self.identity, str(record.path), "bank", self.bank_size), compute)

    def degraded(self, record: ImageRecord, kinds: Sequence[str], positions: Sequence[int]) -> Tensor:
        """Tokens of the given ``positions`` of the record's degraded stack: one fixed random crop, undamaged
        and at every (kind, level) of ``degraded_stack(kinds)``. With ``cache_dir`` the stack stays on disk
        (read a slice at a time, so memory does not grow with it); without, in this process's memory."""
        strengths = {kind: STRENGTHS[kind] for kind in kinds}
        key = (self.identity, str(record.path), "degraded", repr(strengths))

        def compute() -> Tensor:
            image = prepare_image(load_image(record.path), self.pre)
            seed = item_seed(BANK_SEED, 0, zlib.crc32(str(record.path).encode())) % 2**32
            return self._encode(degraded_crops(image, self.transform, degraded_stack(kinds), seed))

        file = self._file(key)
        if file is None:
            return self._cached(key, compute)[list(positions)]
        if not file.is_file():
            self._save(file, compute())
        return torch.from_numpy(np.load(file, mmap_mode="r")[list(positions)])

    def grid(self, record: ImageRecord, grid: int, kind: str | None = None, level: int = 0) -> Tensor:
        """The tokens of the record's deterministic ``grid x grid`` test crops; of the image damaged by
        ``kind`` at ``level`` when given (the degradation check; noise seeded by the path)."""
        if kind is None or level == 0:
            key = (self.identity, str(record.path), "grid", grid)
            return self._cached(key, lambda: self._encode(grid_crops(load_image(record.path), self.pre, grid)))

        def compute() -> Tensor:
            damaged = degrade(load_image(record.path), kind, level, zlib.crc32(str(record.path).encode()))
            return self._encode(grid_crops(damaged, self.pre, grid))

        return self._cached((self.identity, str(record.path), "grid", grid, kind, level, repr(STRENGTHS[kind])), compute)


class CachedCrops(EpochViews):
    """Training views from the crop banks: item ``i`` -> (tokens (N, C) float32, label, record index);
    the bank slot of item ``i`` depends only on (seed, epoch, i)."""

    def __init__(self, records: Sequence[ImageRecord], features: FrozenBackboneFeatures, seed: int, views: int) -> None:
        super().__init__(len(records), seed, views)
        self.records = list(records)
        self.features = features

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        record = self.records[index % self.num_records]
        tokens = self.features.bank(record)[self.view_seed(index) % self.features.bank_size].float()
        return tokens, torch.tensor(record.label, dtype=torch.float32), index % self.num_records


def frozen_backbone_features(config: "TrainConfig", model: "QFMIQM", device: torch.device) -> FrozenBackboneFeatures | None:
    """The cache of ``model``'s frozen backbone under training options ``config`` (``None`` unless
    ``config.freeze_backbone``); every run on the same backbone shares it."""
    if not config.freeze_backbone:
        return None
    identity = (config.model.backbone, config.backbone_weights, config.model.multi_stage, config.model.stage_grid)
    pre = Preprocessing.from_dict(model.config.preprocessing)
    return FrozenBackboneFeatures(model.backbone, pre, config.crop_bank, identity, device, config.feature_cache_dir)
