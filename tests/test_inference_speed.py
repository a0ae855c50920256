"""Tests for the inference speed steps: each keeps the reference network's outputs, and none of them is
part of the reference network itself."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.layers import Conv2dSame

from qfm_iqm.inference.speed import (
    StrideTwoSameConv2d,
    copy_free_same_padding,
    fold_batch_norms,
    for_inference,
    use_channels_last,
)
from qfm_iqm.models.backbones import create_backbone
from qfm_iqm.models.qfm import create_model


def _random_statistics(module: torch.nn.Module) -> None:
    """Non-trivial BatchNorm statistics, so that a wrong fold shows."""
    for layer in module.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.running_mean.uniform_(-0.5, 0.5)
            layer.running_var.uniform_(0.5, 2.0)


def test_folding_batch_norms_keeps_outputs_and_removes_them() -> None:
    torch.manual_seed(0)
    backbone = create_backbone("tf_efficientnet_lite0", pretrained=False).eval()
    _random_statistics(backbone)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        before = backbone(x)
        assert fold_batch_norms(backbone) == 49
        after = backbone(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("size", [(16, 16), (15, 15), (16, 13)])
def test_stride_two_same_conv_equals_timm_padding(kernel: int, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    reference = Conv2dSame(4, 4, kernel, stride=2, groups=2)
    fast = Conv2dSame(4, 4, kernel, stride=2, groups=2)
    fast.load_state_dict(reference.state_dict())
    fast.__class__ = StrideTwoSameConv2d
    reference.eval(), fast.eval()  # the copy-free path runs in eval mode only
    x = torch.randn(2, 4, *size, requires_grad=True)
    expected, got = reference(x), fast(x)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    weights = torch.randn_like(expected)
    expected_grads = torch.autograd.grad((expected * weights).sum(), [x, reference.weight, reference.bias])
    got_grads = torch.autograd.grad((got * weights).sum(), [x, fast.weight, fast.bias])
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


def test_copy_free_padding_converts_lite0s_stride_two_convolutions_only() -> None:
    backbone = create_backbone("tf_efficientnet_lite0", pretrained=False)
    assert [type(m) for m in backbone.modules() if isinstance(m, Conv2dSame)] == [Conv2dSame] * 5  # reference
    assert copy_free_same_padding(backbone) == 5  # the stem and four stride-2 depthwise convolutions
    assert [type(m) for m in backbone.modules() if isinstance(m, Conv2dSame)] == [StrideTwoSameConv2d] * 5
    timm_keys = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).state_dict().keys()
    assert list(backbone.model.state_dict()) == list(timm_keys)
    assert not StrideTwoSameConv2d.fits(Conv2dSame(4, 4, 3, stride=1))
    assert not StrideTwoSameConv2d.fits(Conv2dSame(4, 4, 1, stride=2))
    assert not StrideTwoSameConv2d.fits(torch.nn.Conv2d(4, 4, 3, stride=2))


def test_channels_last_is_for_cnns_only() -> None:
    cnn = use_channels_last(create_backbone("tf_efficientnet_lite0", pretrained=False))
    assert cnn.model.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert not cnn.model.conv_stem.weight.is_contiguous()


def test_reference_network_has_no_speed_step_and_the_inference_copy_scores_the_same() -> None:
    torch.manual_seed(0)
    reference = create_model("qfm_iqm_lite0", pretrained_backbone=False, multi_stage=True).eval()
    _random_statistics(reference)
    modules = list(reference.modules())
    assert not any(isinstance(m, StrideTwoSameConv2d) for m in modules)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in modules) == 49
    assert reference.backbone.model.conv_stem.weight.is_contiguous()
    fast = create_model("qfm_iqm_lite0", pretrained_backbone=False, multi_stage=True)
    fast.load_state_dict(reference.state_dict())
    assert for_inference(fast) is fast and not fast.training
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert sum(isinstance(m, StrideTwoSameConv2d) for m in fast.modules()) == 5
    crops = torch.rand(3, 3, 96, 96) * 2 - 1
    with torch.inference_mode():
        expected, got = reference(crops), fast(crops)
    torch.testing.assert_close(got.member_scores, expected.member_scores, atol=1e-5, rtol=1e-4)
