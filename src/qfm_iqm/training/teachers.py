"""Teachers of the distillation framework: a mean-teacher copy of the student, a frozen trained model, or
kernel ridge regressors on frozen features of one or more backbones."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor, nn

from qfm_iqm.data.records import ImageRecord
from qfm_iqm.data.transforms import Preprocessing
from qfm_iqm.inference.speed import use_channels_last
from qfm_iqm.models.backbones import create_backbone
from qfm_iqm.models.regressors import FittedRegressor, kernel_ridge_stage_candidates, select_by_cv
from qfm_iqm.training.feature_cache import FrozenBackboneFeatures


class Teacher(nn.Module):
    """A frozen copy of a network that labels extra data; ``update`` follows the student (EMA only)."""

    def __init__(self, network: nn.Module, ema_decay: float | None = None, warmup_steps: int = 0) -> None:
        super().__init__()
        self.network = copy.deepcopy(network).eval().requires_grad_(False)
        self.ema_decay = ema_decay
        self.warmup_steps = warmup_steps
        self.updates = 0

    def train(self, mode: bool = True) -> "Teacher":
        """A teacher always stays in eval mode."""
        return super().train(False)

    def decay_at(self, step: int) -> float:
        """EMA keep-rate: rises linearly from 0 to ``ema_decay`` over ``warmup_steps`` updates, then
        stays there (so the configured decay is reached however short the run)."""
        assert self.ema_decay is not None
        if step >= self.warmup_steps:
            return self.ema_decay
        return self.ema_decay * step / self.warmup_steps

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """Move an EMA teacher towards the student; a pretrained teacher stays fixed."""
        if self.ema_decay is None:
            return
        decay = self.decay_at(self.updates)
        for mine, theirs in zip(self.network.parameters(), student.parameters()):
            mine.lerp_(theirs.detach(), 1.0 - decay)
        for mine, theirs in zip(self.network.buffers(), student.buffers()):
            mine.copy_(theirs)
        self.updates += 1

    @torch.no_grad()
    def pseudo_labels(self, inputs: Tensor, cached: bool = False) -> Tensor:
        """Scores of images, or of cached backbone outputs (B, 1 + N, C) when ``cached``."""
        if not cached:
            return self.network(inputs).score.float()
        return self.network.forward_cached(inputs).score.float()


class KernelRidgeTeacher:
    """A teacher stronger than the student: for each backbone of ``sources``, an RBF kernel ridge on its
    frozen global vector ``c`` (for a CNN, every stage's global average), averaged over the ``grid x grid`` test crops,
    its hyper-parameters chosen by 5-fold cross-validation on the labelled images; the teacher's score is the
    mean of the backbones' predictions. It is fitted once, before training, and labels the images without a
    score (:meth:`label`), which then feed the KD loss and the matching memory. Training only: the student
    scores with its own backbone alone.

    ``sources`` gives each backbone's :class:`FrozenBackboneFeatures` (see :func:`teacher_feature_sources`;
    row 0 of a cached crop is ``c``).
    """

    def __init__(self, sources: dict[str, FrozenBackboneFeatures], grid: int) -> None:
        self.sources = sources
        self.grid = grid
        self.fitted: list[FittedRegressor] = []

    def features(self, name: str, records: Sequence[ImageRecord]) -> np.ndarray:
        """(n, C): the global vector ``c`` of backbone ``name`` for each of ``records``, averaged over its test crops."""
        source = self.sources[name]
        return np.stack([source.grid(r, self.grid)[:, 0].float().mean(0).numpy() for r in records]).astype(np.float64)

    def fit(self, records: Sequence[ImageRecord]) -> "KernelRidgeTeacher":
        """Fit one kernel ridge per backbone on labelled ``records``."""
        labels = np.array([r.label for r in records], dtype=np.float64)
        self.fitted = []
        for name, source in self.sources.items():
            features = self.features(name, records)
            backbone = source.backbone
            blocks = backbone.stage_channels if backbone.stage_grid is not None else [backbone.num_features]
            candidates = kernel_ridge_stage_candidates(tuple(blocks))
            self.fitted.append(select_by_cv(candidates, features, labels).fit(features, labels))
        return self

    def predict(self, records: Sequence[ImageRecord]) -> np.ndarray:
        """The teacher's normalised scores of ``records`` (the mean over its backbones)."""
        if not records:
            return np.zeros(0)
        return np.mean([f.predict(self.features(name, records)) for name, f in zip(self.sources, self.fitted)], axis=0)

    def label(self, records: Sequence[ImageRecord]) -> list[ImageRecord]:
        """``records`` with the teacher's score as the label of every one that has none (NaN)."""
        unlabelled = [r for r in records if math.isnan(r.label)]
        scores = dict(zip((id(r) for r in unlabelled), self.predict(unlabelled)))
        return [replace(r, label=float(scores[id(r)])) if id(r) in scores else r for r in records]

    def relabel_cross_fitted(self, records: Sequence[ImageRecord], folds: int = 5, seed: int = 0) -> list[ImageRecord]:
        """The labelled ``records`` (those :meth:`fit` saw) labelled by the teacher instead, each by the
        regressors of :meth:`fit` refitted without the fold it falls in: an honest teacher score of an
        image it was trained on (an in-sample kernel ridge would hand back the label itself)."""
        labels = np.array([r.label for r in records], dtype=np.float64)
        chunks = np.array_split(np.random.default_rng(seed).permutation(len(records)), folds)
        scores = np.zeros((len(self.fitted), len(records)))
        for k, (name, fitted) in enumerate(zip(self.sources, self.fitted)):
            features = self.features(name, records)
            for held in chunks:
                kept = np.setdiff1d(np.arange(len(records)), held)
                scores[k, held] = fitted.spec.fit(features[kept], labels[kept]).predict(features[held])
        return [replace(r, label=float(score)) for r, score in zip(records, scores.mean(axis=0))]


def teacher_feature_sources(
    backbones: Sequence[str], pre: Preprocessing, device: torch.device, cache_dir: str | None,
    student: FrozenBackboneFeatures | None = None, student_backbone: str | None = None,
) -> dict[str, FrozenBackboneFeatures]:
    """The frozen feature source of each teacher backbone: the student's own cache for its backbone when
    it has one, else the backbone's global vector (for a CNN: every stage's average, stage grid 1) at its
    own crop size and normalisation, with the student's resize rules (``pre``), kept in ``cache_dir``."""
    sources = {}
    for name in backbones:
        if student is not None and name == student_backbone:
            sources[name] = student
            continue
        backbone = use_channels_last(create_backbone(name)).to(device).eval()
        if backbone.kind == "cnn":
            backbone.use_stages(1)
        cfg = backbone.pretrained_cfg
        own = replace(pre, input_size=cfg["input_size"], mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))
        sources[name] = FrozenBackboneFeatures(backbone, own, 1, (name, None, backbone.kind == "cnn", 1), device, cache_dir)
    return sources
