import pytest
import torch

from qfm_iqm.models.decoder import AttentionPanelDecoder


def test_panel_shapes_score_is_member_mean_and_spread():
    torch.manual_seed(0)
    decoder = AttentionPanelDecoder(dim=32, panel_size=6, num_heads=4)
    c, tokens = torch.randn(3, 32), torch.randn(3, 49, 32)
    out = decoder(c, tokens, need_attention=True)
    assert out.member_scores.shape == (3, 6)
    assert torch.allclose(out.score, out.member_scores.mean(1))
    assert torch.allclose(out.spread, out.member_scores.std(1, unbiased=False))
    assert out.cross_attention.shape == (3, 6, 49)
    assert torch.allclose(out.cross_attention.sum(-1), torch.ones(3, 6), atol=1e-5)
    assert (out.spread > 0).all()


def test_head_is_shared_and_bias_free():
    decoder = AttentionPanelDecoder(dim=32, panel_size=6, num_heads=4)
    assert decoder.head.bias is None
    assert decoder.head.weight.shape == (1, 32)
    assert decoder.panel.shape == (6, 32)


def test_gradients_reach_panel_queries_and_tokens():
    decoder = AttentionPanelDecoder(dim=16, panel_size=3, num_heads=2)
    c = torch.randn(2, 16, requires_grad=True)
    tokens = torch.randn(2, 10, 16, requires_grad=True)
    decoder(c, tokens).score.sum().backward()
    for tensor in (c, tokens, decoder.panel, decoder.head.weight):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0


def test_tokens_are_attended_not_ignored():
    torch.manual_seed(1)
    decoder = AttentionPanelDecoder(dim=16, panel_size=3, num_heads=2)
    c, tokens = torch.randn(1, 16), torch.randn(1, 10, 16)
    assert not torch.allclose(decoder(c, tokens).score, decoder(c, tokens * 3).score)


def test_final_norm_and_deiqt_init_are_options_of_the_model():
    from qfm_iqm.models.qfm import create_model

    plain = create_model("qfm_iqm_lite0", pretrained_backbone=False, dim=64, num_heads=4, final_norm=False)
    assert isinstance(plain.decoder.norm, torch.nn.Identity)
    assert not any(k.startswith("decoder.norm.") for k in plain.state_dict())
    torch.manual_seed(0)
    deiqt = create_model("qfm_iqm_lite0", pretrained_backbone=False, dim=64, num_heads=4, head_init="deiqt")
    weight = deiqt.decoder.layer.ffn[0].weight
    assert weight.std().item() == pytest.approx(0.02, rel=0.15)
    assert torch.count_nonzero(deiqt.decoder.layer.ffn[0].bias) == 0
    default = create_model("qfm_iqm_lite0", pretrained_backbone=False, dim=64, num_heads=4)
    assert default.decoder.layer.ffn[0].weight.std().item() > 0.05  # PyTorch's: uniform, 1/sqrt(fan_in)
    with pytest.raises(ValueError, match="head_init"):
        create_model("qfm_iqm_lite0", pretrained_backbone=False, dim=64, num_heads=4, head_init="xavier")
