"""Crop-based preprocessing: random training crops and a deterministic grid of test crops.

Resize rules (train, test and scoring alike, applied before cropping, in this order):
* datasets of very large photos (SPAQ) set ``resize_short_side``: every image is first resized
  (aspect kept) so that its shorter side equals it;
* the canonical viewing scale: the scale the training data was rated at (500 px for LIVE Challenge).
  An image whose shorter side is larger than ``max_short_side`` is downscaled (aspect kept) so that its
  shorter side equals it; one whose shorter side is smaller than ``min_short_side`` is enlarged to it.
  With both at the rated scale every photo is seen at that one scale, so that a photo and any enlarged
  copy of it score alike; without ``min_short_side`` smaller images are left as they are;
* small-image rule: an image whose shorter side is below the crop size ``S`` is then upscaled,
  keeping its aspect ratio, so that its shorter side equals ``S``.
Otherwise images are never resized; crops are taken at native resolution. Every resize is bicubic
with antialiasing: Pillow's for files, torch's for the metric's tensors (:func:`resize_tensor`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from PIL import Image

from qfm_iqm.data.images import to_rgb

if TYPE_CHECKING:  # torch is imported where tensors are made: scoring a cached graph needs none
    import torch

Pixels = TypeVar("Pixels", np.ndarray, "torch.Tensor")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """Crop size, per-channel normalisation and resize rules (module docstring) of a model's input."""

    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize_short_side: int | None = None
    max_short_side: int | None = None
    min_short_side: int | None = None

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocessing":
        """From a model config's ``preprocessing`` entry."""
        return cls(
            input_size=int(data["input_size"]),
            mean=tuple(data["mean"]),
            std=tuple(data["std"]),
            resize_short_side=data.get("resize_short_side"),
            max_short_side=data.get("max_short_side"),
            min_short_side=data.get("min_short_side"),
        )

    def resize_steps(self, short_side: int) -> list[int]:
        """The rules of the module docstring for an image whose shorter side is ``short_side``: the shorter
        side after each resize, in order (empty when the image is used as it is). Pillow
        (:func:`prepare_image`) and torch (:func:`prepare_tensor`) both follow them."""
        steps = []
        if self.resize_short_side and self.resize_short_side != short_side:
            steps.append(short_side := self.resize_short_side)
        if self.max_short_side and short_side > self.max_short_side:
            steps.append(short_side := self.max_short_side)
        if self.min_short_side and short_side < self.min_short_side:
            steps.append(short_side := self.min_short_side)
        if short_side < self.input_size:
            steps.append(self.input_size)
        return steps

    def without_viewing_scale(self) -> "Preprocessing":
        """The same preprocessing at native resolution (no viewing scale either way): ``--native`` scoring."""
        return replace(self, max_short_side=None, min_short_side=None)

    def __post_init__(self) -> None:
        if self.input_size <= 0:
            raise ValueError(f"input_size must be positive, got {self.input_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"need 3 means and 3 positive stds, got mean={self.mean}, std={self.std}")

    @cached_property
    def _levels(self) -> np.ndarray:
        """(3, 256) float32: each channel's 256 8-bit values scaled to [0, 1] then normalised with
        mean/std, in float32 step by step (so a pixel's value is the one the arithmetic on it gives)."""
        levels = np.arange(256, dtype=np.float32) / np.float32(255.0)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(3, 1)
        return (levels[None, :] - mean) / np.asarray(self.std, dtype=np.float32).reshape(3, 1)

    def normalized_array(self, img: Image.Image) -> np.ndarray:
        """PIL image -> float32 array (3, H, W), scaled to [0, 1] then normalised with mean/std (looked up
        per 8-bit value: half the time of the arithmetic on every pixel, the same numbers)."""
        pixels = np.asarray(to_rgb(img), dtype=np.uint8)
        return np.stack([self._levels[channel][pixels[..., channel]] for channel in range(3)])

    def to_tensor_normalized(self, img: Image.Image) -> torch.Tensor:
        """PIL image -> float32 tensor (3, H, W): :meth:`normalized_array` as a tensor."""
        import torch

        return torch.from_numpy(self.normalized_array(img))


def short_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """``(width, height)`` after a resize (aspect kept) that makes the shorter side equal ``size``."""
    short = min(width, height)
    if short == size:
        return width, height
    scale = size / short
    return (size if width == short else max(size, round(width * scale)),
            size if height == short else max(size, round(height * scale)))


def resize_short_side(img: Image.Image, size: int) -> Image.Image:
    """Bicubic resize (aspect kept, antialiased when shrinking) so that the shorter side equals ``size``."""
    new_size = short_side_size(*img.size, size)
    return img if new_size == img.size else img.resize(new_size, Image.Resampling.BICUBIC)


def resize_tensor(x: torch.Tensor, size: int) -> torch.Tensor:
    """:func:`resize_short_side` for images (..., C, H, W) in torch (the metric's tensors, with gradients):
    bicubic with antialiasing, within about 0.05 MOS of Pillow's resampling of the same photo."""
    import torch.nn.functional as F

    width, height = short_side_size(x.shape[-1], x.shape[-2], size)
    if (height, width) == tuple(x.shape[-2:]):
        return x
    batch = x.reshape(-1, *x.shape[-3:])
    resized = F.interpolate(batch, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return resized.reshape(*x.shape[:-2], height, width)


def ensure_min_side(img: Image.Image, size: int) -> Image.Image:
    """Apply the small-image rule: upscale so the shorter side is ``size`` (no-op if already >=)."""
    return img if min(img.size) >= size else resize_short_side(img, size)


def prepare_image(img: Image.Image, pre: Preprocessing) -> Image.Image:
    """RGB conversion and the resize rules of the module docstring (:meth:`Preprocessing.resize_steps`)."""
    img = to_rgb(img)
    for size in pre.resize_steps(min(img.size)):
        img = resize_short_side(img, size)
    return img


def prepare_tensor(x: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """:func:`prepare_image` for images (..., C, H, W) in torch (:func:`resize_tensor`; the metric's tensors)."""
    for size in pre.resize_steps(min(x.shape[-2:])):
        x = resize_tensor(x, size)
    return x


class TrainTransform:
    """Training augmentation: a uniformly random ``S x S`` crop and a horizontal flip with p = 0.5.

    Images with a side shorter than ``S`` are first bicubic-upscaled so the shorter side equals ``S``.
    All randomness comes from ``generator`` (torch's global generator when ``None``), so the same
    generator state always gives the same crop.
    """

    def __init__(self, pre: Preprocessing) -> None:
        self.pre = pre

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        import torch

        s = self.pre.input_size
        img = prepare_image(img, self.pre)
        w, h = img.size
        top = int(torch.randint(0, h - s + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - s + 1, (1,), generator=generator))
        flip = bool(torch.rand(1, generator=generator) < 0.5)
        x = torch.from_numpy(np.ascontiguousarray(cut_crop(self.pre.normalized_array(img), top, left, s)))
        return torch.flip(x, dims=(2,)) if flip else x


def cut_crop(x: Pixels, top: int, left: int, size: int) -> Pixels:
    """The ``size x size`` crop at (``top``, ``left``) of an image tensor or array (..., C, H, W): every
    crop of training, test and scoring is cut here."""
    return x[..., top : top + size, left : left + size]


def grid_offsets(length: int, size: int, grid: int) -> list[int]:
    """``grid`` crop offsets evenly spaced from 0 to ``length - size`` inclusive (both ends covered)."""
    if grid == 1:
        return [(length - size) // 2]
    return [int(v) for v in np.rint(np.linspace(0, length - size, grid))]


def grid_crops(img: Image.Image, pre: Preprocessing, grid: int | tuple[int, int] = 3) -> torch.Tensor:
    """Deterministic ``grid x grid`` (or ``rows x cols``) crops of size ``S``, corners included.

    Returns a float32 tensor (rows*cols, 3, S, S), rows top to bottom, each row left to right. The
    small-image rule applies first; a count of 1 gives centred crops along that axis.
    """
    import torch

    return torch.from_numpy(grid_crop_array(img, pre, grid))


def grid_crop_array(img: Image.Image, pre: Preprocessing, grid: int | tuple[int, int] = 3) -> np.ndarray:
    """:func:`grid_crops` as a numpy array (what an exported graph scores without torch)."""
    return crop_grid(pre.normalized_array(prepare_image(img, pre)), pre.input_size, grid)


def crop_grid(x: Pixels, size: int, grid: int | tuple[int, int]) -> Pixels:
    """The ``grid`` crops of size ``size`` of an image tensor or array (..., C, H, W) with H, W >= ``size``
    -> (..., rows*cols, C, size, size), in the order of :func:`grid_crops`."""
    rows, cols = (grid, grid) if isinstance(grid, int) else grid
    if min(rows, cols) < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    h, w = x.shape[-2:]
    tops, lefts = grid_offsets(h, size, rows), grid_offsets(w, size, cols)
    crops = [cut_crop(x, t, l, size) for t in tops for l in lefts]
    if isinstance(x, np.ndarray):
        return np.stack(crops, axis=-4)
    import torch

    return torch.stack(crops, dim=-4)
