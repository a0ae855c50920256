from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qfm_iqm.data.records import ImageRecord
from qfm_iqm.data.torch_datasets import EvalCrops, TrainCrops
from qfm_iqm.utils.seeds import item_seed
from qfm_iqm.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    TrainTransform,
    ensure_min_side,
    grid_crops,
    grid_offsets,
)

PRE = Preprocessing(input_size=32)


def _img(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def test_to_tensor_normalized_values() -> None:
    img = Image.new("RGB", (3, 2), (255, 0, 128))
    x = Preprocessing().to_tensor_normalized(img)
    assert x.shape == (3, 2, 3) and x.dtype == torch.float32
    expected = [(v / 255 - m) / s for v, m, s in zip((255, 0, 128), IMAGENET_MEAN, IMAGENET_STD)]
    torch.testing.assert_close(x[:, 0, 0], torch.tensor(expected, dtype=torch.float32))


def test_preprocessing_validation() -> None:
    with pytest.raises(ValueError):
        Preprocessing(input_size=0)
    with pytest.raises(ValueError):
        Preprocessing(std=(0.5, 0.0, 0.5))


def test_grid_crops_shape_and_determinism() -> None:
    img = _img(100, 70)
    a = grid_crops(img, PRE, grid=3)
    assert a.shape == (9, 3, 32, 32)
    torch.testing.assert_close(a, grid_crops(img, PRE, grid=3), rtol=0, atol=0)
    assert grid_crops(img, PRE, grid=1).shape == (1, 3, 32, 32)
    assert grid_crops(img, PRE, grid=2).shape == (4, 3, 32, 32)


def test_grid_crops_cover_corners() -> None:
    img = _img(100, 70)
    full = PRE.to_tensor_normalized(img)
    crops = grid_crops(img, PRE, grid=3)
    torch.testing.assert_close(crops[0], full[:, :32, :32])  # top-left
    torch.testing.assert_close(crops[2], full[:, :32, -32:])  # top-right
    torch.testing.assert_close(crops[6], full[:, -32:, :32])  # bottom-left
    torch.testing.assert_close(crops[8], full[:, -32:, -32:])  # bottom-right
    torch.testing.assert_close(crops[4], full[:, 19:51, 34:66])  # centre
    assert grid_offsets(100, 32, 3) == [0, 34, 68]
    assert grid_offsets(70, 32, 1) == [19]


def test_small_image_rule() -> None:
    assert ensure_min_side(_img(20, 40), 32).size == (32, 64)
    assert ensure_min_side(_img(50, 10), 32).size == (160, 32)
    big = _img(40, 40)
    assert ensure_min_side(big, 32) is big
    assert grid_crops(_img(20, 40), PRE, grid=3).shape == (9, 3, 32, 32)
    assert TrainTransform(PRE)(_img(10, 12)).shape == (3, 32, 32)
    # a square image below the crop size is resized to exactly S x S: all grid crops coincide
    crops = grid_crops(_img(16, 16), PRE, grid=2)
    torch.testing.assert_close(crops[0], crops[3])


def test_train_transform_reproducible_with_generator() -> None:
    img, t = _img(80, 60), TrainTransform(PRE)
    a = t(img, torch.Generator().manual_seed(5))
    b = t(img, torch.Generator().manual_seed(5))
    assert a.shape == (3, 32, 32)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    outs = {t(img, torch.Generator().manual_seed(s)).sum().item() for s in range(10)}
    assert len(outs) > 1


def test_train_transform_is_crop_or_flipped_crop() -> None:
    img = _img(50, 40)
    full = PRE.to_tensor_normalized(img)
    windows = full.unfold(1, 32, 1).unfold(2, 32, 1)  # (3, 9, 19, 32, 32)
    flips = set()
    for seed in range(12):
        x = TrainTransform(PRE)(img, torch.Generator().manual_seed(seed))
        direct = (windows == x[:, None, None]).flatten(3).all(-1).all(0)
        mirrored = (windows == x.flip(2)[:, None, None]).flatten(3).all(-1).all(0)
        assert bool(direct.any()) or bool(mirrored.any())
        flips.add(bool(mirrored.any()) and not bool(direct.any()))
    assert flips == {True, False}


def _records(tmp_path: Path, n: int = 4) -> list[ImageRecord]:
    recs = []
    for i in range(n):
        path = tmp_path / f"{i}.png"
        _img(48, 40, seed=i).save(path)
        recs.append(ImageRecord(path=path, label=i / n, raw_label=100 * i / n))
    return recs


def test_train_crops_dataset_reproducible(tmp_path: Path) -> None:
    recs = _records(tmp_path)
    ds = TrainCrops(recs, TrainTransform(PRE), seed=7, cache=True)
    x, y, idx = ds[2]
    assert x.shape == (3, 32, 32) and y.dtype == torch.float32 and idx == 2
    assert y.item() == pytest.approx(0.5)
    fresh = TrainCrops(recs, TrainTransform(PRE), seed=7)
    torch.testing.assert_close(fresh[2][0], x, rtol=0, atol=0)
    epoch0 = [ds[i][0] for i in range(4)]
    ds.set_epoch(1)
    assert any(not torch.equal(ds[i][0], epoch0[i]) for i in range(4))
    ds.set_epoch(0)
    assert all(torch.equal(ds[i][0], epoch0[i]) for i in range(4))
    assert len(ds) == 4
    assert item_seed(7, 0, 2) == item_seed(7, 0, 2) != item_seed(7, 1, 2)


def test_eval_crops_dataset(tmp_path: Path) -> None:
    recs = _records(tmp_path)
    ds = EvalCrops(recs, PRE, grid=2)
    x, y, idx = ds[1]
    assert x.shape == (4, 3, 32, 32) and idx == 1
    assert y.item() == pytest.approx(0.25)
    torch.testing.assert_close(x, grid_crops(Image.open(recs[1].path), PRE, 2), rtol=0, atol=0)


def test_resize_short_side_rule_applies_before_cropping():
    from qfm_iqm.data.transforms import prepare_image

    big = Image.new("RGB", (1200, 900), (10, 20, 30))
    pre = Preprocessing(input_size=64, mean=(0.5,) * 3, std=(0.5,) * 3, resize_short_side=128)
    assert prepare_image(big, pre).size == (171, 128) or prepare_image(big, pre).size == (170, 128)
    assert prepare_image(big, Preprocessing(input_size=64)).size == (1200, 900)
    tiny = Image.new("L", (30, 20))
    assert prepare_image(tiny, pre).size[1] == 128  # shorter side to the dataset's rule, then >= crop
    assert Preprocessing.from_dict({"input_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3}).resize_short_side is None


@pytest.mark.parametrize("mean,std", [((0.5,) * 3, (0.5,) * 3), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
def test_normalised_pixels_are_the_float32_arithmetic_on_each_pixel(mean, std):
    """The lookup of every 8-bit value gives exactly what scaling and normalising each pixel gives."""
    pixels = np.random.default_rng(0).integers(0, 256, (37, 256, 3), dtype=np.uint8)
    pixels[0, :, :] = np.arange(256, dtype=np.uint8)[:, None]  # every value in every channel
    expected = pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    expected = (expected - np.asarray(mean, np.float32).reshape(3, 1, 1)) / np.asarray(std, np.float32).reshape(3, 1, 1)
    got = Preprocessing(64, mean, std).normalized_array(Image.fromarray(pixels))
    assert got.dtype == np.float32 and got.shape == (3, 37, 256) and np.array_equal(got, expected)
