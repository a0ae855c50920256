"""``qfm_iqm.create_metric``: the pyiqa-style metric module and its use as a differentiable loss."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import qfm_iqm
from qfm_iqm.data.transforms import crop_grid
from qfm_iqm.inference.pretrained import DEFAULT_MODEL


pytestmark = pytest.mark.usefixtures("one_thread")


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """4 bundled example photos (sharp and damaged), each cut to 240x264 (no resizing before the crops).
    Real photos: the released model scores random pixels as 0, which would not tell them apart."""
    names = ("sharp", "noisy", "blurred", "underexposed")
    return np.stack([np.asarray(Image.open(EXAMPLES / f"{name}.jpg").convert("RGB"))[8:248, 60:324] for name in names])


def _batch(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images.copy()).permute(0, 3, 1, 2).float() / 255.0


def test_batch_scores_equal_scorer_scores(images: np.ndarray) -> None:
    """At their own size (``native``: no resize) the metric and ``score`` give the same numbers. By default
    both first enlarge these 240x264 photos to the 500-px viewing scale, and ``score`` rounds the enlarged
    photo to 8 bits as a stored photo is, which the model notices: v2.2 (its damage head reads the early
    stages) puts the two up to 3.7 MOS apart, on the blurred photo; v2.1 up to 2."""
    metric = qfm_iqm.create_metric(device="cpu", native=True)
    assert isinstance(metric, torch.nn.Module) and DEFAULT_MODEL in qfm_iqm.list_models()
    assert metric.lower_better is False and metric.score_range == (0.0, 100.0)
    x = _batch(images).requires_grad_()
    scores = metric(x)
    assert scores.shape == (4,) and not scores.requires_grad  # as_loss=False records no graph
    expected = [r.score for r in qfm_iqm.load_model(runtime="torch", native=True).score(list(images))]
    np.testing.assert_allclose(scores.numpy(), expected, atol=1e-3)
    assert len(set(np.round(expected, 2))) == 4  # the images are told apart
    viewed = qfm_iqm.create_metric(device="cpu")(x).detach().numpy()
    expected = [r.score for r in qfm_iqm.load_model(runtime="torch").score(list(images))]
    np.testing.assert_allclose(viewed, expected, atol=4.0)
    assert np.abs(viewed - scores.detach().numpy()).max() > 4.0  # the viewing scale was applied


def test_underscore_name_and_eval_mode_kept(images: np.ndarray) -> None:
    metric = qfm_iqm.create_metric(DEFAULT_MODEL.replace("-", "_"), device="cpu")
    torch.nn.Sequential(metric).train()
    assert metric.training and not metric.net.training  # dropout etc. stay off inside a training model
    with pytest.raises(ValueError, match="Bx3xHxW"):
        metric(_batch(images)[0])


def test_small_images_are_upscaled_like_files() -> None:
    """A 120x150 image is upscaled to the crop size first; torch's bicubic is close to PIL's."""
    rng = np.random.default_rng(1)
    small = Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)).resize((150, 120), Image.Resampling.BICUBIC)
    pixels = np.asarray(small)
    score = qfm_iqm.create_metric(device="cpu")(_batch(pixels[None]))
    assert score.item() == pytest.approx(qfm_iqm.load_model().score(pixels).score, abs=1.0)


def test_gradient_step_raises_the_score(images: np.ndarray) -> None:
    loss_fn = qfm_iqm.create_metric(device="cpu", as_loss=True)
    x = _batch(images).requires_grad_()
    before = loss_fn(x)
    (-before.sum()).backward()  # higher is better: minimise -score
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss_fn.parameters())  # the metric itself is frozen
    stepped = (x - 2.0 / 255.0 * x.grad.sign()).clamp(0.0, 1.0).detach()  # a descent step on the loss
    after = loss_fn(stepped)
    assert bool((after > before.detach() + 0.1).all()), (before, after)


def test_scores_stay_on_the_scale_whatever_the_network_outputs(images: np.ndarray) -> None:
    """A head scaled 50x drives the raw output far outside [0, 1]: ``score``, the metric and the loss
    all map it into the model's range by the same strictly increasing map, so scores stay distinct and
    in order, and the loss's gradient does not vanish."""
    # at the photos' own size, so that ``raw`` below is what the network sees
    metric = qfm_iqm.create_metric(DEFAULT_MODEL, device="cpu", grid=1, native=True)
    loss = qfm_iqm.create_metric(DEFAULT_MODEL, device="cpu", grid=1, as_loss=True, native=True)
    scorer = qfm_iqm.load_model(DEFAULT_MODEL, "cpu", grid=1, runtime="torch", native=True)
    for net in (metric.net, loss.net, scorer.model):
        with torch.no_grad():
            net.decoder.head.weight.mul_(50.0)
    x = _batch(images)
    raw = metric.net(crop_grid((x - metric.mean) / metric.std, 224, 1).flatten(0, 1)).score.float()
    assert (raw < 0).any() or (raw > 1).any()
    mapped = metric(x)
    assert ((mapped > 0) & (mapped < 100)).all() and len(set(mapped.tolist())) == len(mapped)
    assert torch.equal(torch.argsort(mapped), torch.argsort(raw))
    y = x.clone().requires_grad_()
    scores = loss(y)
    assert torch.allclose(scores.detach(), mapped)
    scores.sum().backward()
    assert all(bool(g.abs().sum() > 0) for g in y.grad)  # every image, even those mapped near an end
    assert [result.score for result in scorer.score(list(images))] == pytest.approx(mapped.tolist(), abs=1e-3)
