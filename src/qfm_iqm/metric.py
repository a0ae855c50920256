"""pyiqa-style metric: ``create_metric(name)`` gives an ``nn.Module`` mapping image batches to scores.

>>> import qfm_iqm
>>> metric = qfm_iqm.create_metric("qfm-iqm-lite0-livec-v2-2")
>>> metric(images)                       # images: Bx3xHxW float in [0, 1] -> B scores (MOS 0-100)
>>> loss_fn = qfm_iqm.create_metric(as_loss=True)
>>> loss = -loss_fn(restored).mean()     # higher is better (``lower_better`` is False): minimise -score

A tensor is scored exactly as :meth:`qfm_iqm.Scorer.score` scores an image (the same viewing scale,
grid of crops, normalisation and score map) but without 8-bit quantisation. Images are resized (to the model's
viewing scale, or up to the crop size) with torch's antialiased bicubic interpolation, which is close
to, but not the same as, Pillow's resampling of files.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from qfm_iqm.api import Scorer, load_model
from qfm_iqm.data.transforms import crop_grid, prepare_tensor
from qfm_iqm.inference.score_map import reported_score
from qfm_iqm.inference.pretrained import DEFAULT_MODEL, list_pretrained

__all__ = ["QualityMetric", "create_metric", "list_models"]


def list_models() -> list[str]:
    """Names of the released models that :func:`create_metric` and ``load_model`` accept."""
    return list_pretrained()


class QualityMetric(nn.Module):
    """A QFM-IQM model as a metric: ``forward(x)`` maps Bx3xHxW floats in [0, 1] to B scores.

    Scores are on the model's scale (``score_range``; MOS 0-100 for the released model), higher is
    better unless ``lower_better``. The network is frozen and stays in eval mode; with ``as_loss``
    gradients flow to the input, otherwise the forward pass records none. Input values outside [0, 1]
    are not clipped. Scores go through the same strictly increasing map onto ``score_range`` as
    ``score``'s (:mod:`qfm_iqm.inference.score_map`), with or without ``as_loss``: bounded, and with a
    gradient everywhere.
    """

    def __init__(self, scorer: Scorer, as_loss: bool = False) -> None:
        super().__init__()
        self.net = scorer.model.requires_grad_(False)
        self.preprocessing = scorer.preprocessing
        self.grid = scorer.grid
        self.scale = scorer.scale
        self.as_loss = as_loss
        self.lower_better = not scorer.scale.higher_is_better
        self.score_range = (scorer.scale.low, scorer.scale.high)
        self.register_buffer("mean", torch.tensor(self.preprocessing.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(self.preprocessing.std, dtype=torch.float32).view(1, 3, 1, 1))
        self.to(scorer.device)

    def train(self, mode: bool = True) -> QualityMetric:
        """Keep the network in eval mode whatever the mode of the module holding the metric."""
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a Bx3xHxW image tensor, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"expected a float tensor with values in [0, 1], got {x.dtype}")
        with torch.set_grad_enabled(self.as_loss and torch.is_grad_enabled()):
            pre = self.preprocessing
            x = prepare_tensor(x.to(self.mean.device, torch.float32), pre)
            crops = crop_grid((x - self.mean) / self.std, pre.input_size, self.grid)  # (B, n, 3, S, S)
            raw = self.net(crops.flatten(0, 1)).score.float().view(len(x), -1).mean(dim=1)
            return reported_score(raw, self.scale)


def create_metric(
    name: str | Path = DEFAULT_MODEL,
    device: torch.device | str | None = None,
    as_loss: bool = False,
    grid: int | None = None,
    native: bool = False,
) -> QualityMetric:
    """A released model (``list_models()``; hyphens or underscores) or a trained checkpoint as a metric.

    ``device``: where it runs (default: CUDA when available, else CPU). ``as_loss``: let gradients
    flow to the input, to train a network with the metric as its loss. ``grid``: crops per side, as
    for ``load_model`` (by default the checkpoint's recorded grid, else 3). ``native``: score at the
    input's own resolution instead of the model's viewing scale, as for ``load_model``.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return QualityMetric(load_model(name, device, grid, runtime="torch", native=native), as_loss)
