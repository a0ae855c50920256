"""Baselines that need no download: frozen ImageNet features + ridge regression."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from qfm_iqm.data.records import IQADataset
from qfm_iqm.data.splits import Split, make_splits, save_splits
from qfm_iqm.data.torch_datasets import EvalCrops
from qfm_iqm.data.transforms import Preprocessing
from qfm_iqm.evaluation.metrics import compute_metrics, summarize
from qfm_iqm.evaluation.protocol import environment
from qfm_iqm.models.backbones import create_backbone
from qfm_iqm.utils.checkpoint import atomic_write_json


@torch.no_grad()
def frozen_features(
    dataset: IQADataset, backbone_name: str = "tf_efficientnet_lite0", grid: int = 3, progress: bool = True
) -> np.ndarray:
    """Per image, the backbone's global vector averaged over a ``grid x grid`` crop grid, (N, C)."""
    backbone = create_backbone(backbone_name).eval()
    cfg = backbone.pretrained_cfg
    pre = Preprocessing(cfg["input_size"], tuple(cfg["mean"]), tuple(cfg["std"]), dataset.resize_short_side)
    loader = DataLoader(EvalCrops(dataset.records, pre, grid), batch_size=None)
    rows = [backbone(crops)[0].mean(dim=0).numpy() for crops, _, _ in tqdm(loader, disable=not progress)]
    return np.stack(rows).astype(np.float64)


def fit_ridge(features: np.ndarray, targets: np.ndarray, alpha: float) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Closed-form ridge on standardised features; returns (weights, bias, mean, scale)."""
    mean, scale = features.mean(axis=0), features.std(axis=0) + 1e-8
    x = (features - mean) / scale
    gram = x.T @ x + alpha * np.eye(x.shape[1])
    weights = np.linalg.solve(gram, x.T @ (targets - targets.mean()))
    return weights, float(targets.mean()), mean, scale


def predict_ridge(model: tuple[np.ndarray, float, np.ndarray, np.ndarray], features: np.ndarray) -> np.ndarray:
    weights, bias, mean, scale = model
    return ((features - mean) / scale) @ weights + bias


def select_alpha(features: np.ndarray, targets: np.ndarray, alphas: tuple[float, ...], folds: int = 5, seed: int = 0) -> float:
    """Pick the ridge strength by k-fold cross-validation inside the training part only."""
    order = np.random.default_rng(seed).permutation(len(targets))
    chunks = np.array_split(order, folds)
    errors = []
    for alpha in alphas:
        error = 0.0
        for k, held in enumerate(chunks):
            kept = np.concatenate([c for j, c in enumerate(chunks) if j != k])
            model = fit_ridge(features[kept], targets[kept], alpha)
            error += float(((predict_ridge(model, features[held]) - targets[held]) ** 2).sum())
        errors.append(error)
    return alphas[int(np.argmin(errors))]


def ridge_on_split(
    features: np.ndarray, labels: np.ndarray, split: Split, alphas: tuple[float, ...] = tuple(10.0 ** np.arange(-1, 5))
) -> tuple[np.ndarray, float]:
    """Fit on ``split.train`` (alpha by inner CV) and predict ``split.test``; returns (predictions, alpha)."""
    train, test = list(split.train), list(split.test)
    alpha = select_alpha(features[train], labels[train], alphas, seed=split.seed)
    model = fit_ridge(features[train], labels[train], alpha)
    return predict_ridge(model, features[test]), alpha


def cached_features(dataset: IQADataset, cache_file: Path, backbone_name: str, grid: int) -> np.ndarray:
    """Frozen features, computed once and kept in ``cache_file`` (.npy)."""
    if cache_file.exists():
        features = np.load(cache_file)
        if features.shape[0] == len(dataset):
            return features
    features = frozen_features(dataset, backbone_name, grid)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache_file, features)
    return features


def run_ridge_protocol(
    dataset: IQADataset,
    seeds: list[int],
    output_dir: str | Path,
    backbone_name: str = "tf_efficientnet_lite0",
    grid: int = 3,
    command: str | None = None,
) -> dict:
    """The frozen-feature + ridge baseline on the protocol's splits; writes ``results.json``."""
    output_dir = Path(output_dir)
    features = cached_features(dataset, output_dir / f"features-{backbone_name}-grid{grid}.npy", backbone_name, grid)
    labels = dataset.labels()
    splits = make_splits(dataset, seeds)
    save_splits(output_dir / "splits.json", splits, dataset.name, len(dataset))
    runs = []
    for split in splits:
        predictions, alpha = ridge_on_split(features, labels, split)
        metrics = compute_metrics(predictions, labels[list(split.test)])
        metrics["rmse"] *= dataset.scale.high - dataset.scale.low
        runs.append({"seed": split.seed, "metrics": metrics, "alpha": alpha})
    result = {
        "dataset": dataset.name,
        "mode": f"ridge-{backbone_name}",
        "seeds": seeds,
        "summary": summarize([run["metrics"] for run in runs]),
        "runs": runs,
        "command": command,
        "environment": environment(),
    }
    atomic_write_json(output_dir / "results.json", result)
    return result
