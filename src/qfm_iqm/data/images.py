"""Robust image decoding to 8-bit RGB with clear errors for every way a file can be bad."""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_INT_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}
# Exceptions Pillow raises while decoding damaged files (truncated data, broken headers/tables).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)
# What folder inputs and image-folder datasets count as images (any letter case).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})


class ImageLoadError(RuntimeError):
    """An image file could not be read; the message names the path and the problem."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"cannot load image {self.path}: {problem}")


def set_max_image_pixels(n: int | None) -> int | None:
    """Set Pillow's decompression-bomb limit (pixels; ``None`` disables it); return the previous limit."""
    if n is not None and n <= 0:
        raise ValueError(f"max image pixels must be positive or None, got {n}")
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = n
    return previous


def _to_uint8_gray(img: Image.Image) -> Image.Image:
    """Scale a single-channel integer/float image to 8-bit ``L`` without clipping.

    ``I;16*`` images use the full 16-bit range (v -> round(v / 257)). ``I`` images whose values lie in
    [0, 65535] are treated the same way; other ``I`` images, and ``F`` images outside [0, 1], are
    min-max scaled. ``F`` images inside [0, 1] are multiplied by 255.
    """
    a = np.asarray(img).astype(np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if img.mode.startswith("I;16") or (img.mode == "I" and lo >= 0.0 and hi <= 65535.0):
        a = a / 257.0
    elif img.mode == "F" and lo >= 0.0 and hi <= 1.0:
        a = a * 255.0
    elif hi > lo:
        a = (a - lo) * (255.0 / (hi - lo))
    else:
        a = np.zeros_like(a)
    return Image.fromarray(np.rint(a).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a PIL image of any common mode to 8-bit RGB.

    Transparency (alpha channels, palette transparency) is composited onto white; 16-bit and float
    grayscale are rescaled to 8 bits (see ``_to_uint8_gray``); CMYK, palette, 1-bit, YCbCr and others
    use Pillow's conversion. RGB input is returned unchanged (same object).
    """
    if img.mode == "RGB":
        return img
    if img.mode in _INT_MODES or img.mode == "F":
        return _to_uint8_gray(img).convert("RGB")
    if img.mode in _ALPHA_MODES or (img.mode in {"P", "L"} and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise ValueError(f"cannot convert image mode {img.mode!r} to RGB: {exc}") from exc


def _oriented(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a damaged EXIF block leaves the image as stored."""
    try:
        out = ImageOps.exif_transpose(img)
    except _DECODE_ERRORS:
        return img.copy()
    return out if out is not None else img.copy()


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Decode ``path`` fully into an 8-bit RGB image (first frame of animations, EXIF-oriented).

    Raises ``ImageLoadError`` for a missing, unreadable, empty, non-image, corrupt or truncated file,
    and for images above the decompression-bomb limit (see ``set_max_image_pixels``).
    """
    p = Path(path)
    try:
        fh = open(p, "rb")
    except FileNotFoundError:
        raise ImageLoadError(p, "file not found") from None
    except IsADirectoryError:
        raise ImageLoadError(p, "is a directory, not a file") from None
    except PermissionError:
        raise ImageLoadError(p, "permission denied") from None
    except OSError as exc:
        raise ImageLoadError(p, f"cannot open file ({exc.strerror or exc})") from exc
    with fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise ImageLoadError(p, "file is empty (0 bytes)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(fh) as img:
                    img.load()
                    oriented = _oriented(img)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageLoadError(
                p,
                f"{exc} If the file is trusted, raise the limit with `qfm-iqm score --max-pixels N` or "
                "qfm_iqm.data.images.set_max_image_pixels(n) (0 / None disables the check).",
            ) from exc
        except UnidentifiedImageError as exc:
            raise ImageLoadError(p, "not a recognised image file") from exc
        except _DECODE_ERRORS as exc:
            raise ImageLoadError(p, f"corrupt or truncated image data ({type(exc).__name__}: {exc})") from exc
    try:
        return to_rgb(oriented)
    except ValueError as exc:
        raise ImageLoadError(p, str(exc)) from exc
