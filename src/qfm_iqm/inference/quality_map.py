"""Quality maps: where the attention panel looks, pasted back from crops onto the whole image."""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import product
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from qfm_iqm.data.transforms import Preprocessing, grid_crops, grid_offsets, prepare_image

if TYPE_CHECKING:
    from qfm_iqm.models.qfm import QFMIQM

Colormap = Callable[[np.ndarray], np.ndarray]
MAP_CHUNK = 16  # crops per forward pass when computing quality maps of large images


def covering_grid(height: int, width: int, crop_size: int, grid: int) -> tuple[int, int]:
    """Crop rows and columns (at least ``grid`` each) whose ``crop_size`` crops leave no pixel uncovered."""
    return max(grid, math.ceil(height / crop_size)), max(grid, math.ceil(width / crop_size))


def assemble_quality_map(
    attention: torch.Tensor,
    image_size: tuple[int, int],
    crop_size: int,
    grid: tuple[int, int],
    out_size: tuple[int, int],
) -> np.ndarray:
    """Paste per-crop token attention back onto the image and scale it to [0, 1].

    Args:
        attention: (rows*cols, N) attention over each crop's N tokens, a square feature grid flattened
            row-major (7x7 for EfficientNet-Lite0 at 224 px, 14x14 for ViT-S/16), crops in
            :func:`~qfm_iqm.data.transforms.grid_crops` order.
        image_size: (H, W) of the image the crops were cut from (after the small-image rule).
        crop_size: crop side ``S``.
        grid: (rows, cols) of the crops; they must cover the image (see :func:`covering_grid`).
        out_size: (H, W) of the returned map (the original image size).

    Each crop's map is bilinearly upsampled to ``S x S``, overlapping crops are averaged, the result
    is resized to ``out_size`` and min-max scaled (a uniform map gives zeros).
    """
    n, tokens = attention.shape
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"{tokens} tokens do not form a square feature grid")
    maps = F.interpolate(
        attention.float().reshape(n, 1, side, side), size=(crop_size, crop_size), mode="bilinear", align_corners=False
    )[:, 0]
    height, width = image_size
    total = torch.zeros(height, width)
    count = torch.zeros(height, width)
    offsets = product(grid_offsets(height, crop_size, grid[0]), grid_offsets(width, crop_size, grid[1]))
    for crop_map, (top, left) in zip(maps, offsets, strict=True):
        total[top : top + crop_size, left : left + crop_size] += crop_map
        count[top : top + crop_size, left : left + crop_size] += 1
    if not bool((count > 0).all()):
        raise ValueError(f"a {grid[0]}x{grid[1]} grid of {crop_size}-px crops does not cover {height}x{width}")
    heat = total / count
    if (height, width) != tuple(out_size):
        heat = F.interpolate(heat[None, None], size=out_size, mode="bilinear", antialias=True)[0, 0]
    low, high = heat.min(), heat.max()
    heat = (heat - low) / (high - low) if high > low else torch.zeros_like(heat)
    return heat.numpy().astype(np.float32)


@torch.no_grad()
def quality_map(
    model: QFMIQM, image: Image.Image, pre: Preprocessing, grid: int, device: torch.device | str = "cpu"
) -> np.ndarray:
    """Heat map (H, W) in [0, 1] of where the attention panel of ``model`` looks in an RGB image.

    The decoder's cross-attention is averaged over panel members, reshaped to each crop's feature
    grid, pasted back at the crop's place and averaged where crops overlap. The crops are the fixed
    ``grid``, made denser on large images so that they cover every pixel.
    """
    size = pre.input_size
    resized = prepare_image(image, pre)
    width, height = resized.size
    rows_cols = covering_grid(height, width, size, grid)
    crops = grid_crops(resized, pre, rows_cols)
    attention = torch.cat(
        [model(chunk.to(device), need_attention=True).cross_attention.mean(dim=1).cpu() for chunk in crops.split(MAP_CHUNK)]
    )
    return assemble_quality_map(attention, (height, width), size, rows_cols, (image.height, image.width))


def _colormap() -> Colormap | None:
    """matplotlib's ``inferno`` colormap when matplotlib is installed (it is optional), else ``None``."""
    try:
        import matplotlib
    except ImportError:
        return None
    return matplotlib.colormaps["inferno"]


def overlay_quality_map(image: Image.Image, heat: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """Blend a [0, 1] heat map (H, W) over an RGB image of the same size.

    With matplotlib the map is drawn with its ``inferno`` colormap at opacity ``alpha``; without it,
    red is blended in with opacity ``alpha * heat``.
    """
    base = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    if base.shape[:2] != heat.shape:
        raise ValueError(f"heat map {heat.shape} does not match image {base.shape[:2]}")
    colormap = _colormap()
    if colormap is None:
        colors = np.zeros_like(base)
        colors[..., 0] = 1.0
        weight = alpha * heat[..., None]
    else:
        colors = np.asarray(colormap(heat), dtype=np.float32)[..., :3]
        weight = np.float32(alpha)
    blended = base * (1.0 - weight) + colors * weight
    return Image.fromarray(np.rint(np.clip(blended, 0.0, 1.0) * 255.0).astype(np.uint8))
