"""The training loop: AdamW, warm-up + step/cosine schedule, semantic noise, distillation, resume."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from qfm_iqm import __version__
from qfm_iqm.data.records import ImageRecord
from qfm_iqm.data.torch_datasets import TrainCrops
from qfm_iqm.data.transforms import TrainTransform
from qfm_iqm.evaluation.predict import model_preprocessing
from qfm_iqm.models.qfm import QFMIQM, build_model
from qfm_iqm.training.config import TrainConfig
from qfm_iqm.training.noise import FeatureMemory, match_semantic_noise, norm_matched_noise
from qfm_iqm.training.teachers import Teacher
from qfm_iqm.utils.checkpoint import atomic_write_json, load_training_state, save_checkpoint, save_training_state

STATE_DIR = "train_state"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_factor(step: int, steps_per_epoch: int, config: TrainConfig) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step``."""
    warmup = config.warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    epoch = step / steps_per_epoch
    if config.schedule == "step":
        return config.step_gamma ** int(epoch // config.step_epochs)
    progress = (step - warmup) / max(1.0, config.epochs * steps_per_epoch - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class StepLosses:
    total: float
    clean: float
    noise: float = 0.0
    kd: float = 0.0
    matched: float = 0.0  # fraction of samples that found a noise partner


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"epochs": self.epochs}


class Trainer:
    """Trains one QFM-IQM (or ``deiqt`` mode) model on the given training records.

    ``output_dir`` receives ``model.safetensors`` + ``model.json`` (the final weights and everything
    needed to rebuild them), ``history.json`` and, while training, ``train_state/`` for ``resume``.
    """

    def __init__(
        self,
        config: TrainConfig,
        records: list[ImageRecord],
        output_dir: str | Path,
        extra_records: list[ImageRecord] | None = None,
        metadata: dict | None = None,
        progress: bool = True,
        teacher_model: QFMIQM | None = None,
    ) -> None:
        if len(records) < config.batch_size:
            raise ValueError(f"{len(records)} training images are fewer than one batch of {config.batch_size}")
        self.config = config
        self.records = records
        self.extra_records = extra_records or []
        self.output_dir = Path(output_dir)
        self.metadata = metadata or {}
        self.progress = progress
        self.device = resolve_device(config.device)
        self._seed_everything(config.seed)
        self.model = build_model(config.model, pretrained_backbone=True, backbone_weights=config.backbone_weights)
        self.model.to(self.device)
        self.pre = model_preprocessing(self.model)
        self.loader = self._loader(records, config.batch_size, config.seed)
        self.steps_per_epoch = len(self.loader)
        self.optimizer = self._optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, self.steps_per_epoch, config)
        )
        self.memory = FeatureMemory(config.memory_factor * config.batch_size) if config.use_noise else None
        self.teacher = self._teacher(teacher_model)
        self.kd_loader = (
            self._loader(records + self.extra_records, config.kd_views, config.seed + 1) if self.teacher else None
        )
        self.epoch = 0
        self.history = History()

    # -- construction -------------------------------------------------------------------------
    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _loader(self, records: list[ImageRecord], batch_size: int, seed: int) -> DataLoader:
        dataset = TrainCrops(records, TrainTransform(self.pre), seed=seed, cache=self.config.cache_images)
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            drop_last=True,
            generator=generator,
            num_workers=self.config.num_workers,
            persistent_workers=False,
        )

    def _optimizer(self) -> torch.optim.Optimizer:
        backbone = [p for p in self.model.backbone.parameters() if p.requires_grad]
        backbone_ids = {id(p) for p in backbone}
        head = [p for p in self.model.parameters() if p.requires_grad and id(p) not in backbone_ids]
        lr = self.config.lr
        groups = [{"params": backbone, "lr": lr}, {"params": head, "lr": lr * self.config.head_lr_scale}]
        return torch.optim.AdamW(groups, lr=lr, weight_decay=self.config.weight_decay)

    def _teacher(self, teacher_model: QFMIQM | None) -> Teacher | None:
        if not self.config.distill:
            return None
        if self.config.teacher == "ema":
            return Teacher(self.model, self.config.ema_decay, self.config.ema_warmup).to(self.device)
        if teacher_model is None:
            raise ValueError("teacher='pretrained' needs a trained teacher model (see train_pretrained_teacher)")
        return Teacher(teacher_model).to(self.device)

    # -- one step -------------------------------------------------------------------------------
    def _autocast(self):
        use = self.config.amp == "bf16" or (self.config.amp == "auto" and self.device.type == "cuda")
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use)

    def _kd_batches(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        epoch = self.epoch
        while True:
            self.kd_loader.dataset.set_epoch(epoch)
            yield from self.kd_loader
            epoch += 1_000_003  # a fresh stream of views that never repeats the labelled loader's

    def training_step(self, images: Tensor, labels: Tensor, ids: Tensor, kd_batch=None) -> StepLosses:
        config = self.config
        model = self.model
        images, labels, ids = images.to(self.device), labels.to(self.device).float(), ids.to(self.device)
        count = images.shape[0]
        if kd_batch is not None:
            kd_images, _, kd_ids = (t.to(self.device) for t in kd_batch)
            pseudo = self.teacher.pseudo_labels(kd_images)
            images = torch.cat([images, kd_images])
            targets = torch.cat([labels, pseudo])
            ids = torch.cat([ids, kd_ids])
        else:
            targets = labels
        with self._autocast():
            encoded = model.encode(images)
            clean = model.decode(encoded.c, encoded.tokens).score.float()
            loss_clean = F.smooth_l1_loss(clean[:count], labels)
            loss = loss_clean
            loss_kd = torch.zeros((), device=self.device)
            if kd_batch is not None:
                loss_kd = F.smooth_l1_loss(clean[count:], targets[count:])
                loss = loss + config.kd_weight * loss_kd
            loss_noise = torch.zeros((), device=self.device)
            matched = 0.0
            if self.memory is not None:
                self.memory.push(encoded.semantic, encoded.tokens, targets, ids)
                slots, found = match_semantic_noise(
                    encoded.semantic, targets, ids, self.memory, config.quality_tolerance
                )
                matched = found.float().mean().item()
                if found.any():
                    tokens = encoded.tokens[found]
                    noise = norm_matched_noise(tokens, self.memory.tokens[slots[found]], config.noise_strength)
                    noisy = model.decode(encoded.c[found], tokens + noise).score.float()
                    loss_noise = F.smooth_l1_loss(noisy, targets[found], reduction="sum") / targets.shape[0]
                    loss = loss + config.noise_weight * loss_noise
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.teacher is not None:
            self.teacher.update(model)
        return StepLosses(loss.item(), loss_clean.item(), loss_noise.item(), loss_kd.item(), matched)

    # -- epochs -----------------------------------------------------------------------------------
    def train_epoch(self) -> dict:
        self.model.train()
        self.loader.dataset.set_epoch(self.epoch)
        self.loader.generator.manual_seed(self.config.seed * 1_000_003 + self.epoch)
        kd_batches = self._kd_batches() if self.teacher is not None else None
        if kd_batches is not None:
            self.kd_loader.generator.manual_seed((self.config.seed + 1) * 1_000_003 + self.epoch)
        totals: dict[str, float] = {}
        start = time.perf_counter()
        bar = tqdm(
            self.loader,
            desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )
        for images, labels, ids in bar:
            losses = self.training_step(images, labels, ids, next(kd_batches) if kd_batches else None)
            for key, value in vars(losses).items():
                totals[key] = totals.get(key, 0.0) + value
            bar.set_postfix(loss=f"{losses.total:.4f}")
        seconds = time.perf_counter() - start
        steps = len(self.loader)
        crops = steps * (self.config.batch_size + (self.config.kd_views if self.teacher else 0))
        summary = {key: value / steps for key, value in totals.items()}
        summary.update(epoch=self.epoch + 1, seconds=seconds, crops_per_second=crops / seconds,
                       lr=self.optimizer.param_groups[0]["lr"])
        return summary

    def fit(self, resume: bool = False) -> History:
        """Train for ``config.epochs`` epochs (continuing a saved state when ``resume``)."""
        if resume and (self.output_dir / STATE_DIR).exists():
            self.load_state()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        while self.epoch < self.config.epochs:
            summary = self.train_epoch()
            self.epoch += 1
            self.history.epochs.append(summary)
            if self.progress:
                tqdm.write(
                    f"epoch {summary['epoch']}: loss {summary['total']:.4f} (clean {summary['clean']:.4f}, "
                    f"noise {summary['noise']:.4f}, kd {summary['kd']:.4f}) "
                    f"{summary['crops_per_second']:.1f} crops/s"
                )
            self.save_state()
        self.save_model()
        return self.history

    # -- persistence -------------------------------------------------------------------------------
    def save_model(self) -> Path:
        config = {
            "format": "qfm-iqm/1",
            "model": self.model.config.to_dict(),
            "training": self.config.to_dict(),
            "code_version": __version__,
            **self.metadata,
        }
        atomic_write_json(self.output_dir / "history.json", self.history.to_dict())
        return save_checkpoint(self.output_dir, self.model.state_dict(), config)

    def save_state(self) -> Path:
        state = {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": self.history.to_dict(),
            "torch_rng": torch.get_rng_state(),
            "config": self.config.to_dict(),
        }
        if self.memory is not None:
            state["memory"] = self.memory.state_dict()
        if self.teacher is not None:
            state["teacher"] = {"network": self.teacher.network.state_dict(), "updates": self.teacher.updates}
        return save_training_state(self.output_dir / STATE_DIR, state)

    def load_state(self) -> None:
        state = load_training_state(self.output_dir / STATE_DIR)
        if state["config"] != self.config.to_dict():
            raise ValueError(
                f"{self.output_dir / STATE_DIR}: the saved run used different options; "
                "resume with the same configuration or choose another output folder"
            )
        self.epoch = int(state["epoch"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = History(**state["history"])
        torch.set_rng_state(state["torch_rng"])
        if self.memory is not None:
            self.memory.load_state_dict(state["memory"])
        if self.teacher is not None:
            self.teacher.network.load_state_dict(state["teacher"]["network"])
            self.teacher.updates = int(state["teacher"]["updates"])
