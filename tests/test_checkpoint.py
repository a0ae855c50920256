"""Tests for pickle-free atomic checkpoints and training-state round trips."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from qfm_iqm.utils import files as ckpt  # the atomic writers checkpoints are saved with
from qfm_iqm.utils.checkpoint import (
    atomic_write_json,
    flatten_state,
    load_checkpoint,
    load_training_state,
    save_checkpoint,
    save_training_state,
    unflatten_state,
)


def _files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def test_round_trip_tensors_and_config(tmp_path: Path) -> None:
    base = torch.arange(12.0).reshape(3, 4)
    tensors = {"w": torch.randn(4, 5), "tied": base, "tied_again": base, "t": base.t(), "n": torch.tensor(7)}
    config = {"backbone": "tf_efficientnet_lite0", "members": 6, "lr": 1e-4, "tags": [1, None]}
    path = save_checkpoint(tmp_path / "run", tensors, config)
    assert path == tmp_path / "run" / "model.safetensors"
    assert _files(tmp_path / "run") == {"model.safetensors", "model.json"}
    for where in (tmp_path / "run", path, path.with_suffix(".json")):
        loaded, loaded_config = load_checkpoint(where)
        assert loaded_config == config
        assert loaded.keys() == tensors.keys()
        for key, value in tensors.items():
            assert torch.equal(loaded[key], value)
    assert json.loads((tmp_path / "run" / "model.json").read_text()) == config


def test_failed_save_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_checkpoint(tmp_path, {"w": torch.ones(3)}, {"version": 1})

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, {"w": torch.zeros(3)}, {"version": 2})
    monkeypatch.undo()
    assert _files(tmp_path) == {"model.safetensors", "model.json"}  # no temp or partial files
    tensors, config = load_checkpoint(tmp_path)
    assert config == {"version": 1} and torch.equal(tensors["w"], torch.ones(3))


def test_interrupted_pair_is_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_checkpoint(tmp_path, {"w": torch.ones(3)}, {"version": 1})
    real_replace = ckpt.os.replace
    calls: list[str] = []

    def replace_then_fail(src: str, dst: str) -> None:
        calls.append(str(dst))
        if str(dst).endswith(".json"):
            raise OSError("killed")
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", replace_then_fail)
    with pytest.raises(OSError, match="killed"):
        save_checkpoint(tmp_path, {"w": torch.zeros(3)}, {"version": 2})
    assert calls[0].endswith(".safetensors")  # weights first, then the JSON
    monkeypatch.undo()
    with pytest.raises(ValueError, match="model.json"):
        load_checkpoint(tmp_path)


def test_missing_and_corrupt_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_checkpoint(tmp_path)
    weights = save_checkpoint(tmp_path, {"w": torch.randn(100)}, {"a": 1})
    weights.write_bytes(weights.read_bytes()[:-40])
    with pytest.raises(ValueError, match="corrupt checkpoint file .*model.safetensors"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, {"w": torch.randn(100)}, {"a": 1})
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ValueError, match="model.json"):
        load_checkpoint(tmp_path)
    (tmp_path / "model.json").unlink()
    with pytest.raises(FileNotFoundError, match="model.json"):
        load_checkpoint(tmp_path)


def test_unserialisable_config_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, {"w": torch.ones(1)}, {"bad": object()})
    assert _files(tmp_path) == set()


def test_atomic_write_json_format(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "a.json", {"z": 1, "a": [1, 2]})
    assert (tmp_path / "a.json").read_text() == '{\n  "z": 1,\n  "a": [\n    1,\n    2\n  ]\n}\n'


def test_flatten_preserves_types() -> None:
    state = {
        "opt": {"state": {0: {"step": torch.tensor(3.0)}, 1: {}}, "groups": [{"betas": (0.9, 0.99)}]},
        "mixed": {None: 1, 2.5: "x", True: [None]},
        "array": np.arange(4, dtype=np.uint32),
        "scalar": np.int64(5),
        "__tensor__": "not a marker here",
    }
    tensors, skeleton = flatten_state(state, prefix="root")
    assert set(tensors) == {"root.opt.state.0.step", "root.array"}
    json.dumps(skeleton)
    restored = unflatten_state(json.loads(json.dumps(skeleton)), tensors)
    assert list(restored["opt"]["state"]) == [0, 1]
    assert restored["opt"]["groups"][0]["betas"] == (0.9, 0.99)
    assert restored["mixed"] == {None: 1, 2.5: "x", True: [None]}
    assert restored["array"].dtype == np.uint32 and restored["array"].tolist() == [0, 1, 2, 3]
    assert restored["scalar"] == 5 and restored["__tensor__"] == "not a marker here"
    with pytest.raises(ValueError, match="same key"):
        flatten_state({"a.b": torch.ones(1), "a": {"b": torch.ones(1)}})


def _train_steps(model: nn.Module, opt: torch.optim.Optimizer, sched, n: int) -> None:
    for _ in range(n):
        x = torch.randn(8, 4)
        noise = float(np.random.rand()) + random.random()
        loss = (model(x) - noise).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def _make(seed: int):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    return model, opt, sched


def test_training_state_round_trip_resumes_identically(tmp_path: Path) -> None:
    model, opt, sched = _make(0)
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    _train_steps(model, opt, sched, 3)
    memory = torch.randn(16, 4)
    save_training_state(
        tmp_path,
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            "memory": memory,
            "epoch": 3,
            "best": None,
            "note": "resume me",
        },
    )
    _train_steps(model, opt, sched, 2)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    state = load_training_state(tmp_path)
    assert list(state["optimizer"]["state"]) == [0, 1, 2, 3]
    assert state["rng"]["torch"].dtype == torch.uint8
    assert state["epoch"] == 3 and state["best"] is None and state["note"] == "resume me"
    assert torch.equal(state["memory"], memory)
    model2, opt2, sched2 = _make(123)
    model2.load_state_dict(state["model"])
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    _train_steps(model2, opt2, sched2, 2)
    for key, value in model2.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_load_training_state_rejects_plain_checkpoint(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, {"w": torch.ones(1)}, {"a": 1}, name="training_state")
    with pytest.raises(ValueError, match="training-state"):
        load_training_state(tmp_path)
