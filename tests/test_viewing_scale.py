"""The canonical viewing scale: a photo scores the same at any pixel count; ``native`` scores as stored."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import qfm_iqm
from qfm_iqm.api import load_model
from qfm_iqm.data.transforms import Preprocessing, crop_grid, prepare_image, resize_tensor

pytestmark = pytest.mark.usefixtures("one_thread")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sharp.jpg"


def test_only_photos_larger_than_the_viewing_scale_are_downscaled():
    pre = Preprocessing(input_size=224, max_short_side=500)
    assert prepare_image(Image.new("RGB", (1500, 1000)), pre).size == (750, 500)
    assert prepare_image(Image.new("RGB", (900, 4000)), pre).size == (500, 2222)
    small = Image.new("RGB", (480, 300))
    assert prepare_image(small, pre).size == (480, 300)  # never upscaled to the viewing scale
    assert prepare_image(Image.new("RGB", (300, 100)), pre).size == (672, 224)  # the small-image rule still holds
    assert prepare_image(Image.new("RGB", (1500, 1000)), pre.without_viewing_scale()).size == (1500, 1000)
    assert Preprocessing.from_dict({"input_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3, "max_short_side": 500}) == \
        Preprocessing(224, (0.5,) * 3, (0.5,) * 3, max_short_side=500)


def test_with_a_min_short_side_smaller_photos_are_enlarged_to_the_viewing_scale():
    pre = Preprocessing(input_size=224, max_short_side=500, min_short_side=500)
    assert prepare_image(Image.new("RGB", (480, 300)), pre).size == (800, 500)
    assert prepare_image(Image.new("RGB", (300, 100)), pre).size == (1500, 500)
    assert prepare_image(Image.new("RGB", (1500, 1000)), pre).size == (750, 500)
    assert pre.resize_steps(500) == [] and pre.resize_steps(256) == [500]
    assert pre.without_viewing_scale() == Preprocessing(input_size=224)
    assert Preprocessing.from_dict({"input_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3,
                                    "min_short_side": 500}).min_short_side == 500


@pytest.fixture(scope="module")
def photos() -> tuple[Image.Image, Image.Image]:
    """A photo at 750x500 (the released models' viewing scale) and a 6000x4000 enlargement of it."""
    photo = Image.open(EXAMPLE).convert("RGB").resize((750, 500), Image.Resampling.LANCZOS)
    return photo, photo.resize((6000, 4000), Image.Resampling.LANCZOS)


@pytest.fixture(scope="module")
def scorer():
    return load_model(runtime="torch")


def test_a_photo_and_its_enlargement_score_alike_and_natively_they_do_not(scorer, photos):
    photo, large = photos
    assert scorer.preprocessing.max_short_side == 500
    same, enlarged = scorer.score([photo, large])
    assert abs(same.score - enlarged.score) < 1.0
    native = load_model(runtime="torch", native=True)
    assert native.preprocessing.max_short_side is None
    assert native.score(photo).score == pytest.approx(same.score, abs=1e-6)  # already at the scale: untouched
    assert abs(native.score(large).score - enlarged.score) > 5.0  # 3x3 crops of 224 px see 2% of 24 MP


def test_a_photo_smaller_than_the_viewing_scale_scores_like_its_enlargement(scorer):
    """The released model sees every photo at 500 px, smaller ones enlarged to it: ``sharp.jpg`` (384x256)
    and a 6000x4000 enlargement of it are then nearly the same view (scored as stored they were 11 MOS apart)."""
    photo = Image.open(EXAMPLE).convert("RGB")
    assert photo.size == (384, 256) and scorer.preprocessing.min_short_side == 500
    original, enlarged = scorer.score([photo, photo.resize((6000, 4000), Image.Resampling.LANCZOS)])
    assert abs(original.score - enlarged.score) < 5.0
    as_stored = load_model(runtime="torch", native=True).score(photo)  # the small-image rule only: 256 >= 224
    assert abs(as_stored.score - original.score) > 5.0


def test_the_metric_views_tensors_at_the_same_scale_with_the_same_resampling(scorer, photos):
    _, large = photos
    small_copy = large.resize((1800, 1200), Image.Resampling.LANCZOS)
    tensor = torch.from_numpy(np.asarray(small_copy).copy()).permute(2, 0, 1).float().div(255).unsqueeze(0)
    viewed = resize_tensor(tensor, 500)
    metric = qfm_iqm.create_metric(device="cpu")
    assert float(metric(tensor)) == pytest.approx(float(metric(viewed)), abs=1e-4)
    # files go through the same resampling, then are rounded to 8 bits as a stored photo would be (which
    # moves the score by about 1 MOS: the model notices 8-bit rounding)
    crops = crop_grid((viewed - metric.mean) / metric.std, 224, scorer.grid)[0]
    assert (scorer.crops(small_copy) - crops).abs().max() < 3 / 255 / 0.5  # rounding, and clipping overshoot
    native = qfm_iqm.create_metric(device="cpu", native=True)
    assert abs(float(native(tensor)) - float(metric(tensor))) > 1.0
