"""BRISQUE natural-scene-statistics features (Mittal, Moorthy and Bovik, IEEE TIP 2012).

The classical no-reference baseline: 36 numbers per image describing the distribution of its
mean-subtracted, contrast-normalised (MSCN) luminance and of products of neighbouring MSCN values,
at two scales. As in the literature's protocol comparisons, the regressor on top is retrained on the
training part of every split (see :mod:`qfm_iqm.experiments.baselines`), so no pretrained model file
(and no download) is needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter
from scipy.special import gamma as gamma_fn

from qfm_iqm.data.images import load_image

FEATURES_PER_SCALE = 18
SCALES = 2
_SHAPES = np.arange(0.2, 10.0, 0.001)
_GGD_RATIO = gamma_fn(1 / _SHAPES) * gamma_fn(3 / _SHAPES) / gamma_fn(2 / _SHAPES) ** 2
_AGGD_RATIO = gamma_fn(2 / _SHAPES) ** 2 / (gamma_fn(1 / _SHAPES) * gamma_fn(3 / _SHAPES))
# neighbour offsets (rows, columns) of the four paired products: horizontal, vertical, two diagonals
_NEIGHBOURS = ((0, 1), (1, 0), (1, 1), (1, -1))


def mscn(luminance: np.ndarray, sigma: float = 7 / 6, stabiliser: float = 1.0) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients of a 2-D luminance array (0-255 range)."""
    image = luminance.astype(np.float64)
    mean = gaussian_filter(image, sigma, mode="nearest", truncate=3.0)
    variance = gaussian_filter(image * image, sigma, mode="nearest", truncate=3.0) - mean * mean
    return (image - mean) / (np.sqrt(np.abs(variance)) + stabiliser)


def fit_ggd(values: np.ndarray) -> tuple[float, float]:
    """Moment-matching fit of a zero-mean generalised Gaussian: (shape, variance)."""
    variance = float(np.mean(values**2))
    mean_abs = float(np.mean(np.abs(values)))
    if mean_abs == 0.0:
        return float(_SHAPES[-1]), 0.0
    ratio = variance / mean_abs**2
    return float(_SHAPES[np.argmin(np.abs(_GGD_RATIO - ratio))]), variance


def fit_aggd(values: np.ndarray) -> tuple[float, float, float, float]:
    """Moment-matching fit of an asymmetric generalised Gaussian: (shape, mean, left var, right var)."""
    left, right = values[values < 0], values[values > 0]
    left_var = float(np.mean(left**2)) if left.size else 0.0
    right_var = float(np.mean(right**2)) if right.size else 0.0
    if left_var == 0.0 or right_var == 0.0:
        return float(_SHAPES[-1]), 0.0, left_var, right_var
    asymmetry = np.sqrt(left_var / right_var)
    r_hat = float(np.mean(np.abs(values))) ** 2 / float(np.mean(values**2))
    r_norm = r_hat * (asymmetry**3 + 1) * (asymmetry + 1) / (asymmetry**2 + 1) ** 2
    shape = float(_SHAPES[np.argmin(np.abs(_AGGD_RATIO - r_norm))])
    spread = gamma_fn(2 / shape) / gamma_fn(1 / shape) * np.sqrt(gamma_fn(1 / shape) / gamma_fn(3 / shape))
    mean = float((np.sqrt(right_var) - np.sqrt(left_var)) * spread)
    return shape, mean, left_var, right_var


def _paired_product(coefficients: np.ndarray, offset: tuple[int, int]) -> np.ndarray:
    dy, dx = offset
    height, width = coefficients.shape
    x0, x1 = max(0, -dx), width - max(0, dx)
    base = coefficients[: height - dy, x0:x1]
    shifted = coefficients[dy:, x0 + dx : x1 + dx]
    return (base * shifted).ravel()


def scale_features(luminance: np.ndarray) -> np.ndarray:
    """The 18 features of one scale: GGD of the MSCN map, AGGD of its four paired products."""
    coefficients = mscn(luminance)
    features = list(fit_ggd(coefficients.ravel()))
    for offset in _NEIGHBOURS:
        features.extend(fit_aggd(_paired_product(coefficients, offset)))
    return np.asarray(features, dtype=np.float64)


def brisque_features(image: Image.Image | np.ndarray) -> np.ndarray:
    """The 36 BRISQUE features of an image (RGB or L PIL image, or a 2-D luminance array)."""
    if isinstance(image, Image.Image):
        gray = image.convert("L")
    else:
        gray = Image.fromarray(np.clip(np.asarray(image, dtype=np.float64), 0, 255).astype(np.uint8))
    if min(gray.size) < 16:
        raise ValueError(f"BRISQUE needs at least 16x16 pixels, got {gray.size[0]}x{gray.size[1]}")
    rows = []
    for scale in range(SCALES):
        if scale:
            gray = gray.resize((max(1, gray.width // 2), max(1, gray.height // 2)), Image.Resampling.BICUBIC)
        rows.append(scale_features(np.asarray(gray, dtype=np.float64)))
    return np.concatenate(rows)


def brisque_features_of_files(paths: list[Path], progress: bool = False) -> np.ndarray:
    """BRISQUE features of image files, (N, 36); unreadable files raise ``ImageLoadError`` naming the file."""
    from tqdm.auto import tqdm

    return np.stack([brisque_features(load_image(path)) for path in tqdm(paths, disable=not progress)])
