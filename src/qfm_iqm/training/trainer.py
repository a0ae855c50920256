"""The training loop: AdamW, warm-up + step/cosine schedule, semantic noise, distillation, resume.

Under ``torchrun`` the same loop trains with DistributedDataParallel: ``config.batch_size`` (and
``config.kd_views``) is the global batch, split evenly across the processes, and the feature memory
receives the whole global batch, so N processes train like one (see docs/distributed.md).
"""

from __future__ import annotations

import math
import random
import signal
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import convert_sync_batchnorm
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from qfm_iqm.version import __version__
from qfm_iqm.data.records import ImageRecord
from qfm_iqm.data.torch_datasets import DegradationPairs, EpochViews, TrainCrops
from qfm_iqm.data.transforms import TrainTransform
from qfm_iqm.evaluation.metrics import compute_metrics
from qfm_iqm.inference.predict import model_preprocessing, predict_records
from qfm_iqm.inference.pretrained import MODEL_FORMAT
from qfm_iqm.inference.speed import use_channels_last
from qfm_iqm.models.decoder import PanelOutput
from qfm_iqm.models.qfm import QFMIQM, Encoded, build_model
from qfm_iqm.training.config import TrainConfig, changed_options
from qfm_iqm.utils.distributed import (
    GlobalBatchSampler,
    all_gather_batch,
    any_rank,
    average_across_ranks,
    barrier,
    is_main,
    world_size,
)
from qfm_iqm.utils.distributed import local_device as resolve_device
from qfm_iqm.training.feature_cache import CachedCrops, FrozenBackboneFeatures, frozen_backbone_features
from qfm_iqm.training.interrupt import StopRequest, TrainingInterrupted
from qfm_iqm.training.noise import FeatureMemory, match_semantic_noise, norm_matched_noise
from qfm_iqm.training.teachers import KernelRidgeTeacher, Teacher, teacher_feature_sources
from qfm_iqm.utils.checkpoint import atomic_write_json, load_training_state, save_checkpoint, save_training_state

STATE_DIR = "train_state"
KD_PASS_EPOCH_STRIDE = 1_000_003  # dataset-epoch step between passes of the teacher-labelled views


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


def regression_loss(prediction: Tensor, target: Tensor, config: TrainConfig, reduction: str = "mean") -> Tensor:
    """The configured loss between predictions and labels, both scaled by ``config.loss_scale``."""
    prediction, target = prediction * config.loss_scale, target * config.loss_scale
    if config.loss == "l1":
        return F.l1_loss(prediction, target, reduction=reduction)
    if config.loss == "mse":
        return F.mse_loss(prediction, target, reduction=reduction)
    return F.smooth_l1_loss(prediction, target, reduction=reduction)


@contextmanager
def _cudnn_benchmark(on: bool) -> Iterator[None]:
    """While inside, cuDNN times its convolution algorithms once per shape and keeps the fastest (training
    crops have one size); outside, scoring keeps its deterministic choice."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = previous or on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


@dataclass
class StepLosses:
    total: float
    clean: float
    noise: float = 0.0
    kd: float = 0.0
    matched: float = 0.0  # fraction of samples that found a noise partner
    rank: float = 0.0


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"epochs": self.epochs}


class TrainingForward(nn.Module):
    """The training forward pass as one module, so that DistributedDataParallel can wrap it.

    Returns the output for the clean batch and, with a feature memory, the scores of the semantically
    perturbed decoder inputs of the samples that found a noise partner (``None`` if none did) and the
    mask of those samples; then the output for ``ranked`` (degradation pairs; ``None`` without them). The noise perturbs the tokens, the global vector ``c`` (which every panel
    query carries) or both (``config.noise_target``). The memory is fed the global batch (every
    process's part, see :func:`all_gather_batch`); ``labelled`` is the number of leading labelled rows
    of the batch. With ``config.freeze_backbone`` the inputs are the cached backbone outputs, not images.
    """

    def __init__(self, model: QFMIQM, memory: FeatureMemory | None, config: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.memory = memory
        self.cached_inputs = config.freeze_backbone
        self.quality_tolerance = config.quality_tolerance
        self.noise_strength = config.noise_strength
        self.noise_target = config.noise_target
        backbone = model.backbone
        # the channels of c that describe content for the matcher: all of them, or the last stage's alone
        last_stage = config.semantic_descriptor == "last_stage" and backbone.stage_grid is not None
        self.descriptor_channels = backbone.stage_channels[-1] if last_stage else None
        self.token_dropout = config.token_dropout
        self.damage_anchor = config.damage_anchor

    def _encode(self, inputs: Tensor) -> Encoded:
        """Decoder inputs; in training, of a random ``1 - token_dropout`` share of the tokens (one draw per call)."""
        c, tokens = (inputs[:, 0], inputs[:, 1:]) if self.cached_inputs else self.model.backbone(inputs)
        encoded = self.model.encode_features(c, tokens)
        if self.descriptor_channels is not None:
            semantic = F.normalize(c[:, -self.descriptor_channels :].detach().float(), dim=-1)
            encoded = replace(encoded, semantic=semantic)
        if self.model.training and self.token_dropout > 0:
            count = encoded.tokens.shape[1]
            kept = torch.randperm(count, device=encoded.tokens.device)[: max(1, round(count * (1 - self.token_dropout)))]
            encoded = replace(encoded, tokens=encoded.tokens[:, kept.sort().values])
        return encoded

    def forward(
        self, inputs: Tensor, targets: Tensor, ids: Tensor, labelled: int, ranked: Tensor | None = None
    ) -> tuple[PanelOutput, Tensor | None, Tensor | None, PanelOutput | None]:
        model, memory = self.model, self.memory
        encoded = self._encode(inputs)
        clean = model.decode(encoded)
        ranked_output = model.decode(self._encode(ranked)) if ranked is not None else None
        if memory is None:
            return clean, None, None, ranked_output
        memory.push(*all_gather_batch((encoded.semantic, encoded.c, encoded.tokens, targets, ids), labelled))
        slots, found = match_semantic_noise(encoded.semantic, targets, ids, memory, self.quality_tolerance)
        if not found.any():
            return clean, None, found, ranked_output
        c, tokens, partners = encoded.c[found], encoded.tokens[found], slots[found]
        if self.noise_target in ("tokens", "both"):
            tokens = tokens + norm_matched_noise(tokens, memory.tokens[partners], self.noise_strength)
        if self.noise_target in ("global", "both"):
            c = c + norm_matched_noise(c, memory.globals[partners], self.noise_strength)
        damage = encoded.damage[found] if encoded.damage is not None else None
        noisy = model.decode(replace(encoded, c=c, tokens=tokens, damage=damage))
        return clean, label_scores(noisy, self.damage_anchor), found, ranked_output


def label_scores(output: PanelOutput, damage_anchor: bool) -> Tensor:
    """The scores the label losses (MOS, semantic noise, distillation) see. With ``damage_anchor`` the
    damage head's share is held fixed: the panel alone is fitted to the labels."""
    score = output.score.float()
    if damage_anchor and output.damage is not None:
        damage = output.damage.float()
        score = score + damage - damage.detach()
    return score


def ranking_hinge(scores: Tensor, margin: float) -> Tensor:
    """Per-pair hinge of scores laid out as every milder version, then every stronger one: the milder
    must score at least ``margin`` higher."""
    milder, stronger = scores.chunk(2)
    return F.relu(margin - (milder - stronger))


def ranking_loss(output: PanelOutput, whole_pairs: int, margin: float) -> Tensor:
    """Mean hinge over degradation pairs: the first ``whole_pairs`` rank the whole score (``rank_kinds``),
    the rest (``damage_kinds``) the damage head alone, the panel's share of their scores held fixed. Each
    set is laid out as :func:`ranking_hinge` takes it."""
    scores = output.score.float()
    hinges = [ranking_hinge(scores[: 2 * whole_pairs], margin)] if whole_pairs else []
    if scores.shape[0] > 2 * whole_pairs:
        damage = output.damage[2 * whole_pairs:].float()
        hinges.append(ranking_hinge((scores[2 * whole_pairs:] + damage).detach() - damage, margin))
    return torch.cat(hinges).mean()


class Trainer:
    """Trains one QFM-IQM (or ``deiqt`` mode) model on the given training records.

    ``output_dir`` receives ``model.safetensors`` + ``model.json`` (the final weights and everything
    needed to rebuild them), ``history.json`` and, while training, ``train_state/`` for ``resume``
    (written after every epoch and when SIGTERM/SIGINT stops the run at a step boundary). Under
    ``torchrun`` only rank 0 writes files and logs.
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
        val_records: list[ImageRecord] | None = None,
    ) -> None:
        if len(records) < config.batch_size:
            raise ValueError(f"{len(records)} training images are fewer than one batch of {config.batch_size}")
        self.config = config
        self.records = records
        self.extra_records = extra_records or []
        self.output_dir = Path(output_dir)
        self.metadata = metadata or {}
        self.progress = progress and is_main()
        self.device = resolve_device(config.device)
        self.amp_dtype = self._amp_dtype()
        # fp16 gradients underflow without loss scaling; bf16 and fp32 need none (the scaler is then a no-op)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self._seed_everything(config.seed)
        self.model = self._synchronised_batch_norms(
            build_model(config.model, pretrained_backbone=True, backbone_weights=config.backbone_weights)
        )
        use_channels_last(self.model.backbone)
        self.model.to(self.device)
        self.pre = model_preprocessing(self.model)
        self.val_records = val_records or []
        self.teacher_validation: dict[str, float] = {}  # a regression teacher's own validation metrics
        self.features = self._frozen_backbone_features()
        self.loader = self._loader(self._views(records, config.seed), config.batch_size, config.seed)
        self.steps_per_epoch = self.loader.batch_sampler.steps
        self.optimizer = self._optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, self.steps_per_epoch, config)
        )
        self.memory = FeatureMemory(config.memory_factor * config.batch_size) if config.use_noise else None
        self.teacher = self._teacher(teacher_model)
        self.regression_teacher = self._regression_teacher()
        if self.regression_teacher is not None:  # it labels the extra images once, before training
            self.extra_records = self.regression_teacher.label(self.extra_records)
        side = records + self.extra_records  # the images degradation pairs come from
        self.kd_loader = (
            self._loader(self._views(self._kd_records(records), config.seed + 1), config.kd_views, config.seed + 1)
            if config.distill else None
        )
        ranking = config.rank_weight > 0
        self.rank_loader = self._pairs_loader(side, config.rank_kinds, config.seed + 2) if ranking else None
        self.damage_loader = (self._pairs_loader(side, config.damage_kinds, config.seed + 3)
                              if ranking and config.damage_kinds else None)
        self.forward_pass = self._forward_module()
        self.epoch = 0
        self.step = 0  # optimiser steps done in the current epoch
        self.epoch_totals: dict[str, float] = {}
        self.epoch_seconds = 0.0
        self.history = History()
        self.stop = StopRequest()  # SIGTERM/SIGINT handling while ``fit`` runs

    # -- construction -------------------------------------------------------------------------
    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _synchronised_batch_norms(self, model: QFMIQM) -> QFMIQM:
        """With several processes, BatchNorm statistics span the global batch on GPUs (SyncBatchNorm);
        on CPUs, where PyTorch has no SyncBatchNorm, they stay per process (a warning says so)."""
        if world_size() == 1 or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            return model
        if self.device.type == "cuda":
            return convert_sync_batchnorm(model)
        if is_main():
            warnings.warn(
                f"{model.config.backbone} has BatchNorm layers; on CPUs their batch statistics are computed per "
                "process (PyTorch's SyncBatchNorm needs GPUs), so this run is close to, not the same as, one process",
                stacklevel=3,
            )
        return model

    def _frozen_backbone_features(self) -> FrozenBackboneFeatures | None:
        """With ``freeze_backbone``: the backbone stops learning, and its outputs are cached."""
        if not self.config.freeze_backbone:
            return None
        self.model.backbone.requires_grad_(False)
        return frozen_backbone_features(self.config, self.model, self.device)

    def _views(self, records: list[ImageRecord], seed: int) -> EpochViews:
        """``crops_per_image`` training views of each record per epoch (cached backbone outputs when frozen)."""
        views = self.config.crops_per_image
        if self.features is not None:
            return CachedCrops(records, self.features.banks(records), seed, views)
        return TrainCrops(records, TrainTransform(self.pre), seed=seed, cache=self.config.cache_images, views=views)

    def _loader(self, dataset: EpochViews, batch_size: int, seed: int) -> DataLoader:
        return DataLoader(
            dataset,
            batch_sampler=GlobalBatchSampler(len(dataset), batch_size, seed),
            num_workers=self.config.num_workers,
            persistent_workers=False,
            pin_memory=self.device.type == "cuda",  # page-locked batches: copied to the GPU while it computes
        )

    def _optimizer(self) -> torch.optim.Optimizer:
        backbone = [p for p in self.model.backbone.parameters() if p.requires_grad]
        backbone_ids = {id(p) for p in backbone}
        head = [p for p in self.model.parameters() if p.requires_grad and id(p) not in backbone_ids]
        lr = self.config.lr
        groups = [{"params": backbone, "lr": lr}, {"params": head, "lr": lr * self.config.head_lr_scale}]
        return torch.optim.AdamW(groups, lr=lr, weight_decay=self.config.weight_decay)

    def _teacher(self, teacher_model: QFMIQM | None) -> Teacher | None:
        """The network teacher that labels views as they come (EMA or pretrained; ``None`` otherwise)."""
        if not self.config.distill or self.config.teacher == "kernel_ridge":
            return None
        if self.config.teacher == "ema":
            warmup = round(self.config.warmup_epochs * self.steps_per_epoch) if self.config.ema_warmup else 0
            return Teacher(self.model, self.config.ema_decay, warmup).to(self.device)
        if teacher_model is None:
            raise ValueError("teacher='pretrained' needs a trained teacher model (see train_pretrained_teacher)")
        return Teacher(teacher_model).to(self.device)

    def _regression_teacher(self) -> KernelRidgeTeacher | None:
        """With ``teacher="kernel_ridge"``: kernel ridge regressors on ``config.teacher_backbones``' frozen
        features, fitted on the training records (the validation records are scored once, for the record)."""
        config = self.config
        if not config.distill or config.teacher != "kernel_ridge":
            return None
        sources = teacher_feature_sources(config.teacher_backbones, self.pre, self.device, config.feature_cache_dir,
                                          self.features, config.model.backbone)
        teacher = KernelRidgeTeacher(sources, config.eval_grid).fit(self.records)
        if self.val_records:
            labels = np.array([r.label for r in self.val_records])
            metrics = compute_metrics(teacher.predict(self.val_records), labels)
            self.teacher_validation = {f"teacher_val_{key}": metrics[key] for key in ("srcc", "plcc", "rmse")}
        return teacher

    def _kd_records(self, records: list[ImageRecord]) -> list[ImageRecord]:
        """The images the KD views come from: the training images and the extra ones. With
        ``kd_label_all`` and a regression teacher, the training images carry the teacher's cross-fitted
        scores there (the main batch keeps their ground truth)."""
        if self.regression_teacher is not None and self.config.kd_label_all:
            records = self.regression_teacher.relabel_cross_fitted(records, seed=self.config.seed)
        return records + self.extra_records

    def _forward_module(self) -> nn.Module:
        forward = TrainingForward(self.model, self.memory, self.config)
        if world_size() == 1:
            return forward
        return DistributedDataParallel(forward, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    # -- one step -------------------------------------------------------------------------------
    def _amp_dtype(self) -> torch.dtype | None:
        """The autocast precision of training steps (``None``: float32): ``config.amp``, where ``auto`` is
        bf16 on CUDA GPUs that have it, fp16 (with loss scaling) on older ones, float32 on CPUs."""
        amp = self.config.amp
        if amp == "auto":
            if self.device.type != "cuda":
                return None
            amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp_dtype is not None)

    def _pairs_loader(self, records: list[ImageRecord], kinds: list[str], seed: int) -> DataLoader:
        """``rank_pairs`` degradation pairs of ``kinds`` per step, from the cached stacks with a frozen backbone."""
        stacks = self.features.degraded_stacks(records, kinds) if self.features is not None else None
        pairs = DegradationPairs(records, TrainTransform(self.pre), seed, 1, kinds, stacks)
        return self._loader(pairs, self.config.rank_pairs, seed)

    def _side_batches(self, loader: DataLoader | None) -> Iterator | None:
        """Batches of a side loader (teacher-labelled views, degradation pairs), one per step from step
        ``self.step`` of the epoch on; every pass over its data brings fresh views."""
        if loader is None:
            return None

        def batches() -> Iterator:
            sampler = loader.batch_sampler
            pass_index, start = divmod(self.step, sampler.steps)
            while True:
                loader.dataset.set_epoch(self.epoch + pass_index * KD_PASS_EPOCH_STRIDE)
                sampler.set_epoch(self.epoch, pass_index, start)
                yield from loader
                pass_index, start = pass_index + 1, 0

        return batches()

    def training_step(
        self, images: Tensor, labels: Tensor, ids: Tensor, kd_batch=None, rank_batch: Tensor | None = None,
        damage_batch: Tensor | None = None,
    ) -> StepLosses:
        """One optimiser step on this process's part of a global batch; the losses returned are the
        means over all processes (what one process training on the global batch would report)."""
        config = self.config
        images, labels, ids = (t.to(self.device, non_blocking=True) for t in (images, labels, ids))
        labels = labels.float()
        count = images.shape[0]
        if kd_batch is not None:
            kd_images, kd_labels, kd_ids = (t.to(self.device, non_blocking=True) for t in kd_batch)
            pseudo = kd_labels.float()  # ground truth, or the labels a regression teacher gave before training
            if self.teacher is not None:  # a network teacher labels the views as they come: those without a score,
                labelled_by_teacher = self.teacher.pseudo_labels(kd_images, cached=self.features is not None)
                relabel = torch.ones_like(kd_labels, dtype=torch.bool) if config.kd_label_all else torch.isnan(kd_labels)
                pseudo = torch.where(relabel, labelled_by_teacher, pseudo)  # or all of them with kd_label_all
            images = torch.cat([images, kd_images])
            targets = torch.cat([labels, pseudo])
            ids = torch.cat([ids, kd_ids])
        else:
            targets = labels
        pair_sets = [pairs for pairs in (rank_batch, damage_batch) if pairs is not None]
        ranked = None
        if pair_sets:  # (pairs, 2, ...) each -> every milder version, then every stronger one
            ranked = torch.cat([pairs.to(self.device, non_blocking=True).transpose(0, 1).flatten(0, 1)
                                for pairs in pair_sets])
        with self._autocast():
            clean_output, noisy, found, ranked_output = self.forward_pass(images, targets, ids, count, ranked)
            clean = label_scores(clean_output, config.damage_anchor)
            loss_clean = regression_loss(clean[:count], labels, config)
            loss = loss_clean
            loss_kd = torch.zeros((), device=self.device)
            if kd_batch is not None:
                loss_kd = regression_loss(clean[count:], targets[count:], config)
                loss = loss + config.kd_weight * loss_kd
            loss_noise = torch.zeros((), device=self.device)
            if noisy is not None:
                loss_noise = regression_loss(noisy, targets[found], config, reduction="sum") / targets.shape[0]
                loss = loss + config.noise_weight * loss_noise
            loss_rank = torch.zeros((), device=self.device)
            if ranked_output is not None:
                whole_pairs = rank_batch.shape[0] if rank_batch is not None else 0
                loss_rank = ranking_loss(ranked_output, whole_pairs, config.rank_margin)
                if config.damage_anchor:  # the head's penalty on the clean labelled crops is pulled to 0
                    loss_rank = loss_rank + config.damage_anchor_weight * clean_output.damage[:count].float().mean()
                loss = loss + config.rank_weight * loss_rank
        matched = found.float().mean() if found is not None else torch.zeros((), device=self.device)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if config.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.teacher is not None:
            self.teacher.update(self.model)
        values = torch.stack([t.detach().double() for t in (loss, loss_clean, loss_noise, loss_kd, matched, loss_rank)])
        return StepLosses(*average_across_ranks(values))  # the step's one wait for the device

    # -- epochs -----------------------------------------------------------------------------------
    def train_epoch(self) -> bool:
        """Train the current epoch from step ``self.step`` on; return whether it finished, i.e. was not
        cut short by a stop request on some process (checked after every step)."""
        self.model.train()
        if self.features is not None:
            self.model.backbone.eval()
        elif self.config.freeze_bn:
            for module in self.model.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        self.loader.dataset.set_epoch(self.epoch)
        self.loader.batch_sampler.set_epoch(self.epoch, start=self.step)
        kd_batches, rank_batches = self._side_batches(self.kd_loader), self._side_batches(self.rank_loader)
        damage_batches = self._side_batches(self.damage_loader)
        start = time.perf_counter()
        bar = tqdm(  # updated by hand: wrapping the loader would start its workers twice
            desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
            total=self.steps_per_epoch,
            initial=self.step,
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )
        for images, labels, ids in self.loader:
            losses = self.training_step(
                images, labels, ids, next(kd_batches) if kd_batches else None,
                next(rank_batches) if rank_batches else None, next(damage_batches) if damage_batches else None,
            )
            self.step += 1
            for key, value in vars(losses).items():
                self.epoch_totals[key] = self.epoch_totals.get(key, 0.0) + value
            bar.update()
            bar.set_postfix(loss=f"{losses.total:.4f}")
            if any_rank(self.stop.signum is not None):
                break
        bar.close()
        self.epoch_seconds += time.perf_counter() - start
        return self.step == self.steps_per_epoch

    def _end_epoch(self) -> dict:
        """Record the finished epoch's summary in the history and move on to the next epoch."""
        steps = self.steps_per_epoch
        crops = steps * (self.config.batch_size + (self.config.kd_views if self.kd_loader else 0)
                         + 2 * self.config.rank_pairs * ((self.rank_loader is not None) + (self.damage_loader is not None)))
        summary = {key: value / steps for key, value in self.epoch_totals.items()}
        summary.update(epoch=self.epoch + 1, seconds=self.epoch_seconds, crops_per_second=crops / self.epoch_seconds,
                       lr=self.optimizer.param_groups[0]["lr"])
        if summary.get("clean"):
            summary["noise_to_clean"] = summary["noise"] / summary["clean"]
        summary.update(self.learning_curve_point())
        self.history.epochs.append(summary)
        self.epoch, self.step, self.epoch_totals, self.epoch_seconds = self.epoch + 1, 0, {}, 0.0
        return summary

    def predict(self, records: list[ImageRecord]) -> np.ndarray:
        """Normalised scores of ``records`` over the test-crop grid (``config.eval_grid``); from the
        cached backbone outputs when the backbone is frozen (the same numbers, computed once)."""
        return predict_records(self.model, records, self.config.eval_grid, self.device, features=self.features).scores

    def learning_curve_point(self) -> dict[str, float]:
        """SRCC/PLCC/RMSE on the validation records and on as many training records (the learning curve)."""
        if not self.val_records:
            return {}
        point = dict(self.teacher_validation)
        fitted = self.records[: len(self.val_records)]
        for part, records in (("val", self.val_records), ("train", fitted)):
            labels = np.array([r.label for r in records])
            metrics = compute_metrics(self.predict(records), labels)
            point.update({f"{part}_{key}": metrics[key] for key in ("srcc", "plcc", "rmse")})
        return point

    def fit(self, resume: bool = False) -> History:
        """Train for ``config.epochs`` epochs (continuing a saved state when ``resume``).

        Raises:
            TrainingInterrupted: SIGTERM or SIGINT arrived; the state was saved at a step boundary.
        """
        if resume and (self.output_dir / STATE_DIR).exists():
            self.load_state()
        with self.stop, _cudnn_benchmark(self.device.type == "cuda"):
            while self.epoch < self.config.epochs:
                if self.train_epoch():
                    summary = self._end_epoch()
                    if self.progress:
                        tqdm.write(
                            f"epoch {summary['epoch']}: loss {summary['total']:.4f} (clean {summary['clean']:.4f}, "
                            f"noise {summary['noise']:.4f}, kd {summary['kd']:.4f}, rank {summary['rank']:.4f}) "
                            f"{summary['crops_per_second']:.1f} crops/s"
                            + (f"; SRCC train {summary['train_srcc']:.4f} val {summary['val_srcc']:.4f}"
                               if "val_srcc" in summary else "")
                        )
                path = self.save_state()
                if self.epoch < self.config.epochs and any_rank(self.stop.signum is not None):
                    signum = self.stop.signum or signal.SIGTERM  # another process received it
                    raise TrainingInterrupted(
                        signum,
                        f"stopped by {signal.Signals(signum).name} at epoch {self.epoch + 1}, step {self.step} of "
                        f"{self.steps_per_epoch}; state saved to {path}; "
                        "run the same command with --resume to continue",
                    )
        self.save_model()
        return self.history

    # -- persistence -------------------------------------------------------------------------------
    def save_model(self) -> Path:
        """Write the final weights and ``history.json`` (rank 0; every process waits for it)."""
        config = {
            "format": MODEL_FORMAT,
            "model": self.model.config.to_dict(),
            "training": self.config.recorded_options(),
            "code_version": __version__,
            **self.metadata,
        }
        path = self.output_dir / "model.safetensors"
        if is_main():
            atomic_write_json(self.output_dir / "history.json", self.history.to_dict())
            save_checkpoint(self.output_dir, self.model.state_dict(), config)
        barrier()
        return path

    def save_state(self) -> Path:
        """Write everything needed to continue from this step (rank 0; every process waits for it)."""
        path = self.output_dir / STATE_DIR
        if is_main():
            state = {
                "epoch": self.epoch,
                "step": self.step,
                "epoch_totals": self.epoch_totals,
                "epoch_seconds": self.epoch_seconds,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "history": self.history.to_dict(),
                "torch_rng": torch.get_rng_state(),
                "numpy_rng": np.random.get_state(),
                "python_rng": random.getstate(),
                "config": self.config.to_dict(),
            }
            if self.scaler.is_enabled():
                state["scaler"] = self.scaler.state_dict()
            if self.memory is not None:
                state["memory"] = self.memory.state_dict()
            if self.teacher is not None:
                state["teacher"] = {"network": self.teacher.network.state_dict(), "updates": self.teacher.updates}
            save_training_state(path, state)
        barrier()
        return path

    def load_state(self) -> None:
        state = load_training_state(self.output_dir / STATE_DIR)
        # the feature cache's folder may move between runs (it holds no state of the run)
        changed = [name for name in changed_options(state["config"], self.config.to_dict()) if name != "feature_cache_dir"]
        if changed:
            raise ValueError(
                f"{self.output_dir / STATE_DIR}: the saved run used other options (differs in: {', '.join(changed)}); "
                "continue it with the same options, or start over with --restart (or in another output folder)"
            )
        self.epoch = int(state["epoch"])
        # states saved at epoch ends by earlier versions have no step-level entries
        self.step = int(state.get("step", 0))
        self.epoch_totals = dict(state.get("epoch_totals", {}))
        self.epoch_seconds = float(state.get("epoch_seconds", 0.0))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = History(**state["history"])
        torch.set_rng_state(state["torch_rng"])
        if "numpy_rng" in state:
            np.random.set_state(state["numpy_rng"])
            random.setstate(state["python_rng"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        if self.memory is not None:
            self.memory.load_state_dict({k: v.to(self.device) if isinstance(v, Tensor) else v
                                         for k, v in state["memory"].items()})
        if self.teacher is not None:
            self.teacher.network.load_state_dict(state["teacher"]["network"])
            self.teacher.updates = int(state["teacher"]["updates"])
