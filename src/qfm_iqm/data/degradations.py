"""Synthetic degradations at graded strengths: pairs of versions of one photo whose quality order is known.

Level 0 is the photo itself; levels 1, 2, ... are ever stronger versions of one kind of damage, so of any
two levels the lower one is the better image. Used by the degradation-ranking loss (training) and by
the degradation check (evaluation), both through :func:`damaged_view`: the photo is brought to the
scale the model sees it at (the resize rules of its preprocessing) and damaged there, so that a
strength in pixels means the same on every dataset. Every kind is deterministic given ``seed``.

The kinds cover the common families of real damage (after KADID-10k's): blurs, noises, compression,
resampling, exposure, contrast, haze, quantisation, colour (fringes, bleeding, palettes) and spatial
jitter. They come in two sets:

* :data:`TRAINED_KINDS`, the default of the ranking loss (``rank_kinds``): additive Gaussian noise, Gaussian
  blur, JPEG, under- and overexposure. Training on nine kinds lowered validation SRCC both times it was
  tried (+ speckle, motion blur, contrast, quantisation: results/validation/livec-damage-kinds; + impulse,
  motion blur, pixelation, jitter on 5 splits: results/benchmark/livec-broad-damage), so the five stay.
  A damage head ranked alone on the nine (``damage_kinds``, results/benchmark/livec-damage-head) kept
  validation SRCC and is the release recipe's; on eleven (+ chromatic aberration, quantisation) it lost
  validation SRCC and still did not order chromatic aberration (results/benchmark/livec-damage-head-colour);
* :data:`HELD_OUT_KINDS`, every other kind, at least one per family, that the loss never sees, so
  that the degradation check on them measures whether the sense of damage generalises, not whether
  the loss was fitted. WebP, median filtering, chromatic aberration and haze, and later colour diffusion and
  colour quantisation, were added with their strengths fixed before any model was checked on them.

Additive Gaussian noise is ``gaussian_noise`` (``noise`` before: a name it shared with the method's semantic
noise; records that use it still read, see :data:`LEGACY_KIND_NAMES`).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from scipy import ndimage, signal

from qfm_iqm.data.transforms import Preprocessing, prepare_image

# kind -> the strength of each level >= 1, mildest first
STRENGTHS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (8.0, 18.0, 35.0),  # additive Gaussian noise: sigma in 8-bit units
    "speckle": (0.08, 0.18, 0.35),  # multiplicative Gaussian noise: sigma relative to the pixel
    "impulse": (0.02, 0.06, 0.15),  # salt-and-pepper noise: share of pixels
    "blur": (1.0, 2.0, 4.0),  # Gaussian blur: radius in pixels
    "motion_blur": (5.0, 11.0, 21.0),  # horizontal motion: length of the streak in pixels
    "lens_blur": (2.0, 4.0, 7.0),  # defocus: radius of the disc in pixels
    "jpeg": (30.0, 12.0, 5.0),  # JPEG quality
    "jpeg2000": (40.0, 120.0, 320.0),  # JPEG 2000 compression ratio
    "pixelation": (2.0, 4.0, 8.0),  # box-downscaled by this factor, then upscaled with nearest neighbours
    "underexposure": (0.65, 0.42, 0.25),  # brightness factor
    "overexposure": (1.45, 1.9, 2.5),  # brightness factor
    "contrast": (0.6, 0.35, 0.15),  # contrast factor (towards the mean grey)
    "quantisation": (4.0, 3.0, 2.0),  # bits per channel
    "jitter": (1.0, 2.0, 4.0),  # every pixel taken from a random neighbour at most this many pixels away
    # added for issue [1/6] with their strengths fixed before any model was checked on them:
    "webp": (30.0, 10.0, 2.0),  # WebP quality
    "median": (3.0, 5.0, 9.0),  # median filter (a denoiser's smearing): window size in pixels
    "chromatic_aberration": (2.0, 4.0, 8.0),  # red and blue shifted apart: pixels each way, horizontally
    "haze": (0.25, 0.45, 0.65),  # blend towards a light grey (220): its weight
    # added when chromatic aberration and quantisation were tried in the damage head's ranking, so that the colour
    # and quantisation families keep a held-out kind; strengths fixed before any model was checked on them:
    "colour_diffusion": (4.0, 8.0, 16.0),  # colour bleeding: Gaussian blur of the chroma (Cb, Cr), radius in pixels
    "colour_quantisation": (48.0, 16.0, 6.0),  # a palette of this many colours (median cut, no dithering)
}
KINDS = tuple(STRENGTHS)
TRAINED_KINDS = ("gaussian_noise", "blur", "jpeg", "underexposure", "overexposure")
LEGACY_KIND_NAMES = {"noise": "gaussian_noise"}  # names of kinds in earlier versions' records
HELD_OUT_KINDS = tuple(kind for kind in KINDS if kind not in TRAINED_KINDS)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


def _image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def _gaussian_noise(image: Image.Image, sigma: float, seed: int) -> Image.Image:
    pixels = _pixels(image)
    return _image(pixels + np.random.default_rng(seed).normal(0.0, sigma, pixels.shape).astype(np.float32))


def _speckle(image: Image.Image, sigma: float, seed: int) -> Image.Image:
    pixels = _pixels(image)
    return _image(pixels * (1.0 + np.random.default_rng(seed).normal(0.0, sigma, pixels.shape).astype(np.float32)))


def _impulse(image: Image.Image, share: float, seed: int) -> Image.Image:
    pixels = np.array(image)
    draw = np.random.default_rng(seed).random(pixels.shape[:2])
    pixels[draw < share / 2] = 0
    pixels[draw > 1.0 - share / 2] = 255
    return Image.fromarray(pixels)


def _blur(image: Image.Image, radius: float, seed: int) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius))


def _motion_blur(image: Image.Image, length: float, seed: int) -> Image.Image:
    return _image(ndimage.uniform_filter1d(_pixels(image), int(length), axis=1, mode="reflect"))


def _lens_blur(image: Image.Image, radius: float, seed: int) -> Image.Image:
    r = int(np.ceil(radius))
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    disc = (x * x + y * y <= radius * radius).astype(np.float32)
    disc /= disc.sum()
    pixels = np.pad(_pixels(image), ((r, r), (r, r), (0, 0)), mode="reflect")
    return _image(np.stack([signal.fftconvolve(pixels[..., c], disc, mode="valid") for c in range(3)], axis=-1))


def _encoded(image: Image.Image, **options) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, **options)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _jpeg(image: Image.Image, quality: float, seed: int) -> Image.Image:
    return _encoded(image, format="JPEG", quality=int(quality))


def _jpeg2000(image: Image.Image, ratio: float, seed: int) -> Image.Image:
    return _encoded(image, format="JPEG2000", quality_mode="rates", quality_layers=[ratio])


def _pixelation(image: Image.Image, factor: float, seed: int) -> Image.Image:
    small = (max(1, round(image.width / factor)), max(1, round(image.height / factor)))
    return image.resize(small, Image.Resampling.BOX).resize(image.size, Image.Resampling.NEAREST)


def _exposure(image: Image.Image, factor: float, seed: int) -> Image.Image:
    return ImageEnhance.Brightness(image).enhance(factor)


def _contrast(image: Image.Image, factor: float, seed: int) -> Image.Image:
    return ImageEnhance.Contrast(image).enhance(factor)


def _quantisation(image: Image.Image, bits: float, seed: int) -> Image.Image:
    return ImageOps.posterize(image, int(bits))


def _webp(image: Image.Image, quality: float, seed: int) -> Image.Image:
    return _encoded(image, format="WEBP", quality=int(quality))


def _median(image: Image.Image, size: float, seed: int) -> Image.Image:
    return image.filter(ImageFilter.MedianFilter(int(size)))


def _chromatic_aberration(image: Image.Image, shift: float, seed: int) -> Image.Image:
    pixels = np.array(image)
    pixels[..., 0] = np.pad(pixels[..., 0], ((0, 0), (int(shift), 0)), mode="edge")[:, : image.width]
    pixels[..., 2] = np.pad(pixels[..., 2], ((0, 0), (0, int(shift))), mode="edge")[:, int(shift) :]
    return Image.fromarray(pixels)


def _haze(image: Image.Image, weight: float, seed: int) -> Image.Image:
    return _image(_pixels(image) * (1.0 - weight) + 220.0 * weight)


def _colour_diffusion(image: Image.Image, radius: float, seed: int) -> Image.Image:
    luma, blue, red = image.convert("YCbCr").split()
    chroma = [channel.filter(ImageFilter.GaussianBlur(radius)) for channel in (blue, red)]
    return Image.merge("YCbCr", (luma, *chroma)).convert("RGB")


def _colour_quantisation(image: Image.Image, colours: float, seed: int) -> Image.Image:
    palette = image.quantize(int(colours), method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    return palette.convert("RGB")


def _jitter(image: Image.Image, reach: float, seed: int) -> Image.Image:
    pixels = np.asarray(image)
    height, width = pixels.shape[:2]
    rng = np.random.default_rng(seed)
    rows = np.clip(np.arange(height)[:, None] + rng.integers(-reach, reach + 1, (height, width)), 0, height - 1)
    cols = np.clip(np.arange(width)[None, :] + rng.integers(-reach, reach + 1, (height, width)), 0, width - 1)
    return Image.fromarray(pixels[rows, cols])


_APPLY: dict[str, Callable[[Image.Image, float, int], Image.Image]] = {
    "gaussian_noise": _gaussian_noise,
    "speckle": _speckle,
    "impulse": _impulse,
    "blur": _blur,
    "motion_blur": _motion_blur,
    "lens_blur": _lens_blur,
    "jpeg": _jpeg,
    "jpeg2000": _jpeg2000,
    "pixelation": _pixelation,
    "underexposure": _exposure,
    "overexposure": _exposure,
    "contrast": _contrast,
    "quantisation": _quantisation,
    "jitter": _jitter,
    "webp": _webp,
    "median": _median,
    "chromatic_aberration": _chromatic_aberration,
    "haze": _haze,
    "colour_diffusion": _colour_diffusion,
    "colour_quantisation": _colour_quantisation,
}


def check_kinds(kinds: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``kinds`` as a tuple, each known and named once (``ValueError`` naming the offender); an earlier
    version's name (:data:`LEGACY_KIND_NAMES`) is read as the kind's name now."""
    kinds = [LEGACY_KIND_NAMES.get(kind, kind) for kind in kinds]
    unknown = [kind for kind in kinds if kind not in STRENGTHS]
    if unknown:
        raise ValueError(f"unknown degradation {unknown[0]!r}; known: {', '.join(KINDS)}")
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"degradation kinds named twice in {list(kinds)}")
    return tuple(kinds)


def levels(kind: str) -> int:
    """The number of degraded levels of ``kind`` (level 0, the photo itself, not counted)."""
    return len(STRENGTHS[check_kinds([kind])[0]])


def degrade(image: Image.Image, kind: str, level: int, seed: int = 0) -> Image.Image:
    """``image`` (RGB) damaged by ``kind`` at ``level`` (0 returns it unchanged; higher is worse)."""
    if not 0 <= level <= levels(kind):
        raise ValueError(f"{kind} has levels 0-{levels(kind)}, got {level}")
    if level == 0:
        return image
    return _APPLY[kind](image.convert("RGB"), STRENGTHS[kind][level - 1], seed)


def damaged_view(image: Image.Image, pre: Preprocessing, kind: str | None, level: int, seed: int) -> Image.Image:
    """``image`` as a model with preprocessing ``pre`` sees it (:func:`~qfm_iqm.data.transforms.prepare_image`),
    damaged by ``kind`` at ``level`` (unchanged for ``None`` or level 0); the one degradation pipeline of
    training and of the degradation check."""
    prepared = prepare_image(image, pre)
    return prepared if kind is None else degrade(prepared, kind, level, seed)
