"""Baselines that need no download: fixed image features + a regressor retrained on every split.

Feature extractors: ``frozen`` (an ImageNet backbone's global vector, or the global average of every
stage of it, averaged over the 3x3 crop grid) and ``brisque`` (the classical natural-scene-statistics
features). Two regressors: linear ridge and RBF kernel ridge; hyper-parameters are chosen by 5-fold
cross-validation inside the training part, so a split's test labels are never seen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from qfm_iqm.data.records import IQADataset
from qfm_iqm.data.splits import Split
from qfm_iqm.data.torch_datasets import EvalCrops
from qfm_iqm.data.transforms import Preprocessing
from qfm_iqm.inference.speed import use_channels_last
from qfm_iqm.models.backbones import create_backbone
from qfm_iqm.models.regressors import (
    KERNEL_RIDGE_CANDIDATES,
    LITE0_STAGES,
    LITE2_STAGES,
    RIDGE_CANDIDATES,
    KernelRidgeRegressor,
    RidgeRegressor,
    kernel_ridge_stage_candidates,
    select_by_cv,
)
from qfm_iqm.utils.distributed import is_main


def regress_on_split(
    features: np.ndarray, labels: np.ndarray, split: Split, candidates: tuple = RIDGE_CANDIDATES
) -> tuple[np.ndarray, RidgeRegressor | KernelRidgeRegressor]:
    """Fit on ``split.train`` (hyper-parameters by inner CV) and predict ``split.test``."""
    train, test = list(split.train), list(split.test)
    chosen = select_by_cv(candidates, features[train], labels[train], seed=split.seed)
    return chosen.fit(features[train], labels[train]).predict(features[test]), chosen


@torch.no_grad()
def frozen_features(
    dataset: IQADataset,
    backbone_name: str = "tf_efficientnet_lite0",
    grid: int = 3,
    progress: bool = True,
    every_stage: bool = False,
) -> np.ndarray:
    """Per image, the backbone's global vector averaged over a ``grid x grid`` crop grid, (N, C).

    With ``every_stage`` the vector holds the global average of every stage's output (CNNs; for
    Lite0 2,064 values, see ``Backbone.stage_channels``)."""
    backbone = use_channels_last(create_backbone(backbone_name)).eval()
    if every_stage:
        backbone.use_stages(1)
    cfg = backbone.pretrained_cfg
    pre = Preprocessing(cfg["input_size"], tuple(cfg["mean"]), tuple(cfg["std"]), dataset.resize_short_side)
    loader = DataLoader(EvalCrops(dataset.records, pre, grid), batch_size=None)
    rows = [backbone(crops)[0].mean(dim=0).numpy() for crops, _, _ in tqdm(loader, disable=not progress)]
    return np.stack(rows).astype(np.float64)


@dataclass(frozen=True)
class FeatureBaseline:
    """A named baseline: how to compute per-image features, and which regressors to choose among."""

    name: str
    description: str
    features: Callable[[IQADataset, bool], np.ndarray]
    candidates: tuple
    feature_set: str  # names the features: baselines with the same set share one cache file

    def cached_features(self, dataset: IQADataset, cache_dir: Path, progress: bool = True) -> np.ndarray:
        """The features of every record, computed once and kept in ``cache_dir/features-<set>.npy``."""
        cache_file = cache_dir / f"features-{self.feature_set}.npy"
        if cache_file.exists():
            features = np.load(cache_file)
            if features.shape[0] == len(dataset):
                return features
        start = time.perf_counter()
        features = self.features(dataset, progress)
        if is_main():  # under torchrun every rank computes them; one writes
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache_file, features)
            cache_file.with_suffix(".seconds").write_text(f"{time.perf_counter() - start:.1f}\n")
        return features


def _brisque_of_dataset(dataset: IQADataset, progress: bool) -> np.ndarray:
    from qfm_iqm.experiments.brisque import brisque_features_of_files

    return brisque_features_of_files([record.path for record in dataset.records], progress)


def _every_stage_features(backbone_name: str) -> Callable[[IQADataset, bool], np.ndarray]:
    return lambda dataset, progress: frozen_features(dataset, backbone_name, progress=progress, every_stage=True)


BASELINES: dict[str, FeatureBaseline] = {
    "ridge": FeatureBaseline(
        "ridge",
        "frozen ImageNet Lite0 features (3x3 crop grid) + ridge regression",
        lambda dataset, progress: frozen_features(dataset, progress=progress),
        RIDGE_CANDIDATES,
        "lite0-last-stage",
    ),
    "ridge-stages": FeatureBaseline(
        "ridge-stages",
        "frozen ImageNet Lite0 features of every stage (global averages, 3x3 crop grid) + ridge regression",
        _every_stage_features("tf_efficientnet_lite0"),
        RIDGE_CANDIDATES,
        "lite0-every-stage",
    ),
    "kernel-ridge-stages": FeatureBaseline(
        "kernel-ridge-stages",
        "frozen Lite0 features of every stage + RBF kernel ridge, each stage weighted equally",
        _every_stage_features("tf_efficientnet_lite0"),
        kernel_ridge_stage_candidates(LITE0_STAGES),
        "lite0-every-stage",
    ),
    "brisque": FeatureBaseline(
        "brisque",
        "BRISQUE features + RBF kernel ridge regression (retrained per split)",
        _brisque_of_dataset,
        KERNEL_RIDGE_CANDIDATES,
        "brisque",
    ),
}


for _variant, _stages in ((1, LITE0_STAGES), (2, LITE2_STAGES)):  # the larger Lites (the ``[lite]`` extra)
    BASELINES[f"kernel-ridge-stages-lite{_variant}"] = FeatureBaseline(
        f"kernel-ridge-stages-lite{_variant}",
        f"frozen Lite{_variant} features of every stage + RBF kernel ridge, each stage weighted equally",
        _every_stage_features(f"tf_efficientnet_lite{_variant}"),
        kernel_ridge_stage_candidates(_stages),
        f"lite{_variant}-every-stage",
    )


def get_baseline(name: str) -> FeatureBaseline:
    """The baseline registered as ``name`` (see ``BASELINES``)."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(sorted(BASELINES))}")
    return BASELINES[name]
