"""Mixed precision: the autocast precision chosen per device, fp16 training with loss scaling (on the
CPU's autocast, the part of the GPU path a CPU can run), and float32 where precision decides."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import tiny_config, tiny_vit_model
from qfm_iqm.training.noise import FeatureMemory, match_semantic_noise, norm_matched_noise
from qfm_iqm.training.trainer import STATE_DIR, Trainer
from qfm_iqm.utils.checkpoint import load_training_state


@pytest.mark.parametrize(("amp", "device", "bf16", "expected"), [
    ("auto", "cpu", True, None),
    ("auto", "cuda", True, torch.bfloat16),
    ("auto", "cuda", False, torch.float16),  # e.g. a V100 or T4: no bf16
    ("fp16", "cpu", True, torch.float16),
    ("bf16", "cuda", False, torch.bfloat16),
    ("off", "cuda", True, None),
])
def test_autocast_precision(monkeypatch: pytest.MonkeyPatch, amp: str, device: str, bf16: bool, expected) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    trainer = SimpleNamespace(config=SimpleNamespace(amp=amp), device=torch.device(device))
    assert Trainer._amp_dtype(trainer) == expected


def test_amp_option_is_checked() -> None:
    with pytest.raises(ValueError, match="amp must be one of"):
        tiny_config(amp="fp8")


def test_fp16_training_scales_the_loss_and_saves_the_scaler(tmp_path: Path, blur_records) -> None:
    """The first steps' scaled fp16 gradients overflow: the scaler skips them and lowers its scale, and
    the steps after it train; its state is saved for resuming."""
    config = tiny_config(mode="qfm", amp="fp16", epochs=2, model=tiny_vit_model())
    trainer = Trainer(config, blur_records, tmp_path, progress=False)
    assert trainer.amp_dtype == torch.float16 and trainer.scaler.is_enabled()
    seen = []
    hook = trainer.model.decoder.register_forward_hook(lambda module, inputs, output: seen.append(output.score.dtype))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    history = trainer.fit()
    hook.remove()
    assert torch.float16 in seen  # the decoder ran in half precision
    assert all(math.isfinite(epoch["total"]) for epoch in history.epochs)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in trainer.model.parameters())
    assert trainer.scaler.get_scale() < 2.0**16  # the initial scale, lowered after overflows
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))  # later steps were taken
    state = load_training_state(tmp_path / STATE_DIR)
    assert state["scaler"]["scale"] == trainer.scaler.get_scale()
    resumed = Trainer(config, blur_records, tmp_path, progress=False)
    resumed.load_state()
    assert resumed.scaler.get_scale() == trainer.scaler.get_scale()


def test_matching_compares_similarities_in_float32_inside_autocast() -> None:
    """Two memory entries whose cosine similarities differ by less than bf16 resolves: the less similar
    (slot 1) must win, also inside a bf16 autocast region."""
    memory = FeatureMemory(2)
    angle = [math.acos(0.5015), math.acos(0.5000)]
    semantic = torch.tensor([[math.cos(a), math.sin(a)] for a in angle])
    memory.push(semantic, torch.zeros(2, 4), torch.zeros(2, 3, 4), torch.tensor([0.5, 0.5]), torch.tensor([1, 2]))
    query = torch.tensor([[1.0, 0.0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        slots, found = match_semantic_noise(query, torch.tensor([0.5]), torch.tensor([0]), memory, 0.05)
    assert found.tolist() == [True] and slots.tolist() == [1]


def test_norm_matched_noise_keeps_the_dtype_and_computes_in_float32() -> None:
    tokens = torch.full((1, 2, 2), 300.0, dtype=torch.float16)  # squares overflow float16 (max 65504)
    noise = torch.full((1, 2, 2), 1.0, dtype=torch.float16)
    result = norm_matched_noise(tokens, noise, 0.5)
    assert result.dtype == torch.float16
    torch.testing.assert_close(result.float(), torch.full((1, 2, 2), 150.0))
