"""Closed-form regressors from fixed features to scores: linear ridge and RBF kernel ridge, with
hyper-parameters chosen by k-fold cross-validation on the data they are fitted on. The feature baselines
and the kernel-ridge distillation teacher both use them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class RidgeRegressor:
    """Linear ridge regression on standardised features (closed form)."""

    alpha: float

    def fit(self, features: np.ndarray, targets: np.ndarray) -> "FittedRegressor":
        mean, scale = features.mean(axis=0), features.std(axis=0) + 1e-8
        x = (features - mean) / scale
        weights = np.linalg.solve(x.T @ x + self.alpha * np.eye(x.shape[1]), x.T @ (targets - targets.mean()))
        bias = float(targets.mean())
        return FittedRegressor(self, lambda f: ((f - mean) / scale) @ weights + bias)


@dataclass(frozen=True)
class KernelRidgeRegressor:
    """Kernel ridge regression with an RBF kernel on standardised features.

    The kernel width is ``gamma_scale / n_features`` (so that one value suits any feature count).
    With ``blocks`` (feature counts of consecutive groups, e.g. backbone stages) each standardised
    group is scaled by ``1 / sqrt(its size)``, so every group weighs the same in the distance.
    """

    alpha: float
    gamma_scale: float
    blocks: tuple[int, ...] = ()

    def fit(self, features: np.ndarray, targets: np.ndarray) -> "FittedRegressor":
        mean, scale = features.mean(axis=0), features.std(axis=0) + 1e-8
        if self.blocks:
            scale = scale * np.repeat(np.sqrt(np.asarray(self.blocks, dtype=float) * len(self.blocks) / sum(self.blocks)), self.blocks)
        x = (features - mean) / scale
        gamma = self.gamma_scale / x.shape[1]
        bias = float(targets.mean())
        coefficients = np.linalg.solve(_rbf(x, x, gamma) + self.alpha * np.eye(len(x)), targets - bias)
        return FittedRegressor(self, lambda f: _rbf((f - mean) / scale, x, gamma) @ coefficients + bias)


def _rbf(a: np.ndarray, b: np.ndarray, gamma: float) -> np.ndarray:
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.exp(-gamma * np.maximum(squared, 0.0))


@dataclass(frozen=True)
class FittedRegressor:
    """A regressor fitted on training features; ``predict`` maps features to scores."""

    spec: RidgeRegressor | KernelRidgeRegressor
    predict: Callable[[np.ndarray], np.ndarray]


RIDGE_CANDIDATES = tuple(RidgeRegressor(float(a)) for a in 10.0 ** np.arange(-1, 5))
KERNEL_RIDGE_CANDIDATES = tuple(
    KernelRidgeRegressor(alpha, gamma_scale) for alpha in (1e-3, 1e-2, 1e-1, 1.0) for gamma_scale in (0.1, 0.3, 1.0, 3.0)
)


def select_by_cv(
    candidates: tuple, features: np.ndarray, targets: np.ndarray, folds: int = 5, seed: int = 0
) -> RidgeRegressor | KernelRidgeRegressor:
    """The candidate with the lowest k-fold squared error, using only the given (training) data."""
    order = np.random.default_rng(seed).permutation(len(targets))
    chunks = np.array_split(order, folds)
    errors = []
    for candidate in candidates:
        error = 0.0
        for k, held in enumerate(chunks):
            kept = np.concatenate([c for j, c in enumerate(chunks) if j != k])
            fitted = candidate.fit(features[kept], targets[kept])
            error += float(((fitted.predict(features[held]) - targets[held]) ** 2).sum())
        errors.append(error)
    return candidates[int(np.argmin(errors))]


LITE0_STAGES = (16, 24, 40, 80, 112, 192, 320, 1280)  # Backbone.stage_channels of tf_efficientnet_lite0 and lite1
LITE2_STAGES = (16, 24, 48, 88, 120, 208, 352, 1280)  # ... and of tf_efficientnet_lite2


def kernel_ridge_stage_candidates(stages: tuple[int, ...]) -> tuple[KernelRidgeRegressor, ...]:
    """RBF kernel ridge candidates on every-stage features with ``stages`` channels, each stage weighted equally."""
    return tuple(KernelRidgeRegressor(alpha, gamma_scale, stages) for alpha in (1e-2, 1e-1, 1.0) for gamma_scale in (0.1, 0.3, 1.0, 3.0))
