"""Shared fixtures: tiny generated image sets and the real LIVE Challenge copy when present."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from qfm_iqm.data.records import ImageRecord
from qfm_iqm.training.config import TrainConfig


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Models run fastest on one thread when other jobs share the CPU (use it per module)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session", autouse=True)
def hub_offline() -> Iterator[None]:
    """No test reaches the Hugging Face Hub: offline mode, which a test serving a stand-in hub on
    127.0.0.1 turns off for itself."""
    import huggingface_hub.constants as hf_constants

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="session", autouse=True)
def graph_cache(tmp_path_factory) -> Iterator[None]:
    """Exported ONNX graphs (``load_model``'s default runtime exports one) go to this session's own
    folder, never to the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QFM_IQM_CACHE", str(tmp_path_factory.mktemp("qfm_iqm_cache")))
        yield


@pytest.fixture(scope="session")
def livec_root() -> Path:
    """The real copy: ``$QFM_IQM_LIVEC_ROOT``, ``./datasets/livec``, or the project's ``../shared/datasets/livec``."""
    from qfm_iqm.data.registry import default_root

    found = default_root("livec")
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "livec"
    root = found[0] if found else shared if shared.is_dir() else None
    if root is None:
        pytest.skip("real LIVE Challenge copy not found: set QFM_IQM_LIVEC_ROOT or place it at ../shared/datasets/livec")
    return root


@pytest.fixture(scope="session")
def blur_records(tmp_path_factory) -> list[ImageRecord]:
    """16 generated 72x72 images whose label falls with the blur applied to them."""
    folder = tmp_path_factory.mktemp("blur")
    rng = np.random.default_rng(0)
    records = []
    for i in range(16):
        pixels = rng.integers(0, 256, size=(72, 72, 3), dtype=np.uint8)
        radius = (i % 8) * 0.6
        image = Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(radius))
        path = folder / f"img{i:02d}.png"
        image.save(path)
        label = 1.0 - radius / 5.0
        records.append(ImageRecord(path=path, label=label, raw_label=100 * label))
    return records


def tiny_config(**overrides) -> TrainConfig:
    """A fast configuration of the full method: 64-px crops, small batches, few epochs."""
    options = dict(
        mode="qfm",
        epochs=2,
        batch_size=4,
        kd_views=2,
        lr=1e-3,
        warmup_epochs=0.0,
        model={"preprocessing": {"input_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3}, "dim": 64, "num_heads": 4},
        eval_grid=2,
        teacher="ema",  # no teacher to train first
        device="cpu",
    )
    options.update(overrides)
    if options["mode"] == "deiqt" and "teacher" not in overrides:
        options["teacher"] = "none"  # DEIQT mode trains without a teacher (a teacher there is refused)
    return TrainConfig.from_dict(options)


TINY_VIT = "test_tiny_vit"


def _register_tiny_vit() -> None:
    from qfm_iqm.models.backbones import Backbone, list_backbones, register_backbone

    if TINY_VIT in list_backbones():
        return

    @register_backbone(TINY_VIT)
    def _tiny_vit(pretrained: bool, weights_path: Path | None) -> Backbone:
        """A 2-block ViT (64 px, 64 channels) with random weights, CLS token included; no BatchNorm,
        whose statistics CPUs cannot synchronise across processes."""
        import timm

        model = timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=64, depth=2, embed_dim=64, num_heads=2
        )
        return Backbone(model, TINY_VIT, "vit", (0.5,) * 3, (0.5,) * 3)


_register_tiny_vit()


def tiny_vit_model() -> dict:
    """Model options of a QFM-IQM on the tiny random ViT."""
    return {"backbone": TINY_VIT, "dim": 64, "num_heads": 4,
            "preprocessing": {"input_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3}}
