"""Speed steps for a model that only scores: applied to the copy a scorer loads, never to the reference
network of :mod:`qfm_iqm.models` (which trains and reads like the method).

Each step computes the same scores and pays for itself in a measurement on 2 CPU cores (docs/scoring.md,
``scripts/eager_speed_steps.py``):

- :func:`use_channels_last`: CNN weights in channels-last memory format, so convolutions run in it (a Lite0
  forward pass about 1.8x faster than contiguous NCHW). Training and the frozen-feature extractors use it
  too: it changes no arithmetic.
- :func:`fold_batch_norms`: BatchNorm statistics folded into the convolution before it (about 15% faster).
- :func:`copy_free_same_padding`: timm's stride-2 "same" convolutions without a padded copy of their input
  (:class:`StrideTwoSameConv2d`; about 10% faster in eval mode, no faster in training).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from torch import Tensor, nn

from qfm_iqm.models.backbones import Backbone
from qfm_iqm.models.qfm import QFMIQM

__all__ = ["StrideTwoSameConv2d", "copy_free_same_padding", "fold_batch_norms", "for_inference", "use_channels_last"]


def use_channels_last(backbone: Backbone) -> Backbone:
    """Store a CNN backbone's weights in channels-last memory format (its convolutions then compute in
    that format whatever the input's); a ViT backbone is left as it is. Returns ``backbone``."""
    if backbone.kind == "cnn":
        backbone.to(memory_format=torch.channels_last)
    return backbone


@torch.no_grad()
def fold_batch_norms(module: nn.Module) -> int:
    """Fold every eval-mode BatchNorm that directly follows a convolution into that convolution.

    For inference only (the running statistics become part of the weights). A timm ``BatchNormAct2d``
    keeps its activation. Returns the number of folded layers.
    """
    folded = 0
    for parent in module.modules():
        children = list(parent.named_children())
        for (_, conv), (bn_name, bn) in zip(children, children[1:]):
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats):
                continue
            scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
            shift = (bn.bias if bn.affine else torch.zeros_like(bn.running_mean)) - bn.running_mean * scale
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            bias = shift if conv.bias is None else conv.bias * scale + shift
            conv.bias = nn.Parameter(bias)
            tail = [getattr(bn, name) for name in ("drop", "act") if isinstance(getattr(bn, name, None), nn.Module)]
            setattr(parent, bn_name, nn.Sequential(*tail) if tail else nn.Identity())
            folded += 1
    return folded


class StrideTwoSameConv2d(Conv2dSame):
    """TensorFlow "same" padding for a stride-2 convolution with an odd kernel k >= 3, without
    copying the input into a padded tensor.

    On an even-sized input "same" pads (k - 3) / 2 before and (k - 1) / 2 after. That is exactly a
    plain convolution with symmetric padding (k - 1) / 2 whose kernel is grown to k + 1 by a leading
    row and column of zeros. Training mode and odd-sized inputs take timm's padded path. Parameters
    and state-dict keys are those of :class:`timm.layers.Conv2dSame`.
    """

    @staticmethod
    def fits(conv: nn.Module) -> bool:
        """Whether ``conv`` is a ``Conv2dSame`` this class computes exactly."""
        if not isinstance(conv, Conv2dSame):
            return False
        k_h, k_w = conv.kernel_size
        return tuple(conv.stride) == (2, 2) and tuple(conv.dilation) == (1, 1) and k_h == k_w >= 3 and k_h % 2 == 1

    def forward(self, x: Tensor) -> Tensor:
        if self.training or x.shape[-2] % 2 or x.shape[-1] % 2:
            return super().forward(x)
        weight = F.pad(self.weight, (1, 0, 1, 0))
        return F.conv2d(x, weight, self.bias, self.stride, self.kernel_size[0] // 2, 1, self.groups)


def copy_free_same_padding(model: nn.Module) -> int:
    """Turn every stride-2 ``Conv2dSame`` of ``model`` into a :class:`StrideTwoSameConv2d` (same
    parameters, same outputs; the padded copies were about 14% of a Lite0 forward pass in eval mode on
    CPU). Returns the number of converted layers."""
    convs = [m for m in model.modules() if type(m) is Conv2dSame and StrideTwoSameConv2d.fits(m)]
    for conv in convs:
        conv.__class__ = StrideTwoSameConv2d
    return len(convs)


def for_inference(model: QFMIQM) -> QFMIQM:
    """Every speed step of this module applied to ``model`` (a loaded copy that will only score), which is
    put in eval mode and returned. Its scores are those of the reference network to float32 rounding."""
    model.eval()
    fold_batch_norms(model.backbone)
    copy_free_same_padding(model.backbone)
    use_channels_last(model.backbone)
    return model
