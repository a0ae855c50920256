import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qfm_iqm.data.images import ImageLoadError, load_image, set_max_image_pixels, to_rgb


def _noise_rgb(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _expect_error(path: Path, fragment: str) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    msg = str(info.value)
    assert str(path) in msg
    assert fragment in msg
    return info.value


def test_valid_png_roundtrip(tmp_path: Path) -> None:
    img = _noise_rgb()
    img.save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.mode == "RGB" and out.size == (64, 48)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(img))


def test_missing_file(tmp_path: Path) -> None:
    _expect_error(tmp_path / "nope.png", "not found")


def test_directory(tmp_path: Path) -> None:
    _expect_error(tmp_path, "directory")


def test_zero_byte(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    _expect_error(tmp_path / "empty.jpg", "empty")


def test_text_file(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("this is not an image\n" * 10)
    _expect_error(tmp_path / "notes.png", "not a recognised image")


def test_truncated_jpeg(tmp_path: Path) -> None:
    buf = io.BytesIO()
    _noise_rgb(256, 256).save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    _expect_error(tmp_path / "cut.jpg", "corrupt or truncated")


def test_corrupt_png(tmp_path: Path) -> None:
    buf = io.BytesIO()
    _noise_rgb(128, 128).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    start = data.index(b"IDAT") + 8
    data[start : start + 400] = bytes(400)  # clobber compressed pixel data
    (tmp_path / "bad.png").write_bytes(bytes(data))
    _expect_error(tmp_path / "bad.png", "corrupt or truncated")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores file permissions")
def test_permission_denied(tmp_path: Path) -> None:
    path = tmp_path / "locked.png"
    _noise_rgb().save(path)
    path.chmod(0)
    try:
        _expect_error(path, "permission denied")
    finally:
        path.chmod(0o644)


def test_grayscale(tmp_path: Path) -> None:
    Image.fromarray(np.full((8, 10), 77, np.uint8), "L").save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.mode == "RGB"
    assert (np.asarray(out) == 77).all()


def test_palette_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (4, 2))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putdata([0, 0, 1, 1, 0, 0, 1, 1])
    img.save(tmp_path / "p.png", transparency=0)
    out = np.asarray(load_image(tmp_path / "p.png"))
    assert (out[:, :2] == 255).all()  # transparent red -> white background
    assert (out[:, 2:] == [0, 0, 255]).all()


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    a = np.zeros((2, 3, 4), np.uint8)
    a[:, 0] = [255, 0, 0, 0]  # fully transparent
    a[:, 1] = [0, 0, 255, 255]  # opaque blue
    a[:, 2] = [0, 0, 0, 128]  # half-transparent black
    Image.fromarray(a, "RGBA").save(tmp_path / "rgba.png")
    out = np.asarray(load_image(tmp_path / "rgba.png")).astype(int)
    assert (out[:, 0] == 255).all()
    assert (out[:, 1] == [0, 0, 255]).all()
    assert np.abs(out[:, 2] - 127).max() <= 1


def test_la_composited_on_white() -> None:
    out = np.asarray(to_rgb(Image.new("LA", (2, 2), (0, 0))))
    assert (out == 255).all()


def test_cmyk_jpeg(tmp_path: Path) -> None:
    img = Image.new("CMYK", (32, 32), (255, 0, 0, 0))  # pure cyan
    img.paste((0, 0, 0, 0), (0, 0, 16, 32))  # left half: paper white
    img.save(tmp_path / "c.jpg", quality=95)
    out = np.asarray(load_image(tmp_path / "c.jpg")).astype(int)
    assert np.abs(out[8, 4] - [255, 255, 255]).max() <= 8
    assert np.abs(out[8, 28] - [0, 255, 255]).max() <= 8


def test_16bit_png_scaled_not_clipped(tmp_path: Path) -> None:
    a = np.array([[0, 257 * 100, 32768, 65535]], np.uint16)
    Image.fromarray(a).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    out = np.asarray(load_image(tmp_path / "d.png"))[0, :, 0].astype(int)
    assert out[0] == 0 and out[1] == 100 and out[3] == 255
    assert abs(out[2] - 128) <= 1


def test_16bit_big_endian_and_int32_and_float() -> None:
    a = np.array([[0, 32768, 65535]], np.uint16)
    big = Image.frombytes("I;16B", (3, 1), a.astype(">u2").tobytes())
    np.testing.assert_allclose(np.asarray(to_rgb(big))[0, :, 0], [0, 128, 255], atol=1)
    as_i = Image.fromarray(a.astype(np.int32), "I")
    np.testing.assert_allclose(np.asarray(to_rgb(as_i))[0, :, 0], [0, 128, 255], atol=1)
    unit_float = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F")
    np.testing.assert_allclose(np.asarray(to_rgb(unit_float))[0, :, 0], [0, 128, 255], atol=1)
    wide_float = Image.fromarray(np.array([[-2.0, 0.0, 2.0]], np.float32), "F")
    np.testing.assert_allclose(np.asarray(to_rgb(wide_float))[0, :, 0], [0, 128, 255], atol=1)


def test_exif_orientation_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # stored left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    img.save(tmp_path / "o.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "o.jpg")
    assert out.size == (20, 40)
    a = np.asarray(out).astype(int)
    assert a[5, 10, 0] > 200 and a[5, 10, 2] < 50  # top is red
    assert a[35, 10, 2] > 200 and a[35, 10, 0] < 50  # bottom is blue


def test_animated_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (10, 10), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(tmp_path / "anim.gif").n_frames == 3
    out = np.asarray(load_image(tmp_path / "anim.gif"))
    assert (out == [255, 0, 0]).all()


@pytest.fixture
def low_pixel_limit() -> Iterator[None]:
    previous = set_max_image_pixels(100)
    try:
        yield
    finally:
        set_max_image_pixels(previous)


@pytest.mark.parametrize("size", [(15, 10), (40, 40)], ids=["above-limit-warning", "above-2x-limit-error"])
def test_decompression_bomb(tmp_path: Path, low_pixel_limit: None, size: tuple[int, int]) -> None:
    Image.new("RGB", size).save(tmp_path / "bomb.png")
    _expect_error(tmp_path / "bomb.png", "set_max_image_pixels")


def test_set_max_image_pixels_restores_and_validates() -> None:
    previous = set_max_image_pixels(None)
    try:
        assert Image.MAX_IMAGE_PIXELS is None
    finally:
        assert set_max_image_pixels(previous) is None
    assert Image.MAX_IMAGE_PIXELS == previous
    with pytest.raises(ValueError):
        set_max_image_pixels(0)


def test_rgb_passthrough_is_same_object() -> None:
    img = _noise_rgb(4, 4)
    assert to_rgb(img) is img
