"""Synthetic degradations at graded strengths: pairs of versions of one photo whose quality order is known.

Level 0 is the photo itself; levels 1, 2, ... are ever stronger versions of one kind of damage, so of any
two levels the lower one is the better image. Used by the degradation-ranking loss (training) and by
the degradation check (evaluation). Every kind is deterministic given ``seed``.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

# kind -> the strength of each level >= 1 (noise: sigma in 8-bit units; blur: Gaussian radius in
# pixels; jpeg: quality; exposure: brightness factor, under < 1 < over)
STRENGTHS: dict[str, tuple[float, ...]] = {
    "noise": (8.0, 18.0, 35.0),
    "blur": (1.0, 2.0, 4.0),
    "jpeg": (30.0, 12.0, 5.0),
    "underexposure": (0.65, 0.42, 0.25),
    "overexposure": (1.45, 1.9, 2.5),
}
KINDS = tuple(STRENGTHS)
CHECKED_KINDS = ("noise", "blur", "jpeg")  # the kinds a shipped model must order (>= 90% of pairs)


def _noise(image: Image.Image, sigma: float, seed: int) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32)
    noisy = pixels + np.random.default_rng(seed).normal(0.0, sigma, pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


def _blur(image: Image.Image, radius: float, seed: int) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius))


def _jpeg(image: Image.Image, quality: float, seed: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _exposure(image: Image.Image, factor: float, seed: int) -> Image.Image:
    return ImageEnhance.Brightness(image).enhance(factor)


_APPLY: dict[str, Callable[[Image.Image, float, int], Image.Image]] = {
    "noise": _noise,
    "blur": _blur,
    "jpeg": _jpeg,
    "underexposure": _exposure,
    "overexposure": _exposure,
}


def levels(kind: str) -> int:
    """The number of degraded levels of ``kind`` (level 0, the photo itself, not counted)."""
    if kind not in STRENGTHS:
        raise ValueError(f"unknown degradation {kind!r}; known: {', '.join(KINDS)}")
    return len(STRENGTHS[kind])


def degrade(image: Image.Image, kind: str, level: int, seed: int = 0) -> Image.Image:
    """``image`` (RGB) damaged by ``kind`` at ``level`` (0 returns it unchanged; higher is worse)."""
    if not 0 <= level <= levels(kind):
        raise ValueError(f"{kind} has levels 0-{levels(kind)}, got {level}")
    if level == 0:
        return image
    return _APPLY[kind](image.convert("RGB"), STRENGTHS[kind][level - 1], seed)
