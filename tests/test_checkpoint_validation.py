"""A checkpoint's JSON is checked against a schema and its weights' header before anything is built."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from qfm_iqm.cli.main import main
from qfm_iqm.inference.pretrained import MODEL_FORMAT
from qfm_iqm.inference.score_map import ConformalInterval
from qfm_iqm.inference.checkpoint import load_trained_model
from qfm_iqm.models.qfm import ModelConfig, architecture_config, build_model, list_architectures
from qfm_iqm.inference.checkpoint import check_model_checkpoint
from qfm_iqm.utils.checkpoint import CheckpointError, TensorInfo, load_checkpoint, save_checkpoint

MOS = {"name": "MOS", "low": 0, "high": 100, "higher_is_better": True}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and JSON of a random tiny model (64-px crops)."""
    torch.manual_seed(0)
    config = ModelConfig(dim=64, num_heads=4, preprocessing={"input_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3})
    model = build_model(config, pretrained_backbone=False)
    return model.state_dict(), {"format": MODEL_FORMAT, "model": model.config.to_dict(), "score_scale": MOS}


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("image") / "a.png"
    Image.fromarray(np.full((70, 80, 3), 120, np.uint8)).save(path)
    return path


def _edited(config: dict, field: str, value: object) -> dict:
    """``config`` with the dotted ``field`` set to ``value``."""
    edited = copy.deepcopy(config)
    *parents, last = field.split(".")
    target = edited
    for key in parents:
        target = target[key]
    target[last] = value
    return edited


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("model.dim", 10**9, "model.dim: expected an integer from 1 to 4096, got 1000000000"),
        ("model.panel_size", 10**9, "model.panel_size: expected an integer from 1 to 256"),
        ("model.preprocessing.input_size", 10**6, "model.preprocessing.input_size: expected an integer from 16 to 1024"),
        ("model.preprocessing.resize_short_side", 10**6, "model.preprocessing.resize_short_side: expected an integer"),
        ("model.num_heads", "4", "model.num_heads: expected an integer from 1 to 64, got '4'"),
        ("model.num_heads", 3, "model.dim (64) is not a multiple of model.num_heads (3)"),
        ("model.mlp_ratio", None, "model.mlp_ratio: expected a number from 0.25 to 16, got None"),
        ("model.token_gate", 1, "model.token_gate: expected true or false, got 1"),
        ("model.backbone", ["tf_efficientnet_lite0"], "model.backbone: expected a string"),
        ("model.backbone", "resnet50", "model.backbone: 'resnet50' is none of"),
        ("model.preprocessing.mean", [0.5, 0.5], "model.preprocessing.mean: expected a list of 3 items"),
        ("model.preprocessing.std", [0.5, 0.5, 0], "model.preprocessing.std: expected a list of 3 items, each a number"),
        ("model.preprocessing", {"input_size": 64}, "model.preprocessing: missing mean, std"),
        ("model", [1, 2], "is not a QFM-IQM model checkpoint"),
        ("score_scale.high", "100", "score_scale.high: expected a number"),
        ("score_scale", {"low": 0, "high": 100}, "score_scale: missing higher_is_better, name"),
        ("score_scale.low", 100, "score_scale: low (100) is not below high (100)"),
        ("interval", {"quantile": 0.1}, "interval: missing coverage"),
        ("interval", {"coverage": 1, "quantile": 0.1}, "interval.coverage: expected a number above 0 and below 1, got 1"),
        ("interval", {"coverage": 0.9, "quantile": -0.1}, "interval.quantile: expected a number from 0 to 1000, got -0.1"),
        ("interval", {"coverage": 0.9, "quantile": "0.1"}, "interval.quantile: expected a number from 0 to 1"),
        ("interval", {"coverage": 0.9, "quantile": 0.1, "scaled": True}, "interval.scaled: expected false"),
        ("interval", {"coverage": 0.9, "quantile": 0.1, "calibration_size": 9.5}, "interval.calibration_size: expected an integer"),
        ("training", {"eval_grid": 0}, "training.eval_grid: expected an integer from 1 to 16, got 0"),
        ("settings", {"eval_grid": "4"}, "settings.eval_grid: expected an integer from 1 to 16, got '4'"),
        ("training", [4], "training: expected an object, got [4]"),
    ],
)
def test_bad_checkpoint_json_is_one_line_naming_file_and_field_with_status_2(
    tiny, image: Path, tmp_path: Path, capsys, field: str, value: object, message: str
) -> None:
    tensors, config = tiny
    save_checkpoint(tmp_path, tensors, _edited(config, field, value))
    assert main(["--quiet", "score", str(image), "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {tmp_path / 'model.json'}") and message in err, err


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("model.dim", 128, "tensor proj.weight has shape [64, 1280]; the model described by its JSON needs [128, 1280]"),
        ("model.panel_size", 7, "tensor decoder.panel has shape [6, 64]; the model described by its JSON needs [7, 64]"),
        ("model.token_gate", True, "tensors of the model missing from the weights (2 in total): gate.weight, gate.bias"),
    ],
)
def test_json_that_does_not_fit_the_weights_is_refused_before_building(
    tiny, tmp_path: Path, monkeypatch, field: str, value: object, message: str
) -> None:
    tensors, config = tiny
    save_checkpoint(tmp_path, tensors, _edited(config, field, value))
    with pytest.raises(CheckpointError) as error:
        load_trained_model(tmp_path)
    assert str(error.value) == f"{tmp_path / 'model.safetensors'}: {message}"


def test_weights_of_another_type_or_not_finite_are_refused(tiny, tmp_path: Path) -> None:
    tensors, config = tiny
    save_checkpoint(tmp_path, {**tensors, "decoder.panel": tensors["decoder.panel"].long()}, config)
    with pytest.raises(CheckpointError, match="tensor decoder.panel is stored as I64; the model needs torch.float32"):
        load_trained_model(tmp_path)
    save_checkpoint(tmp_path, {**tensors, "extra": torch.ones(2)}, config)
    with pytest.raises(CheckpointError, match=r"tensors the model does not have \(1 in total\): extra"):
        load_trained_model(tmp_path)
    poisoned = tensors["decoder.head.weight"].clone()
    poisoned[0, 3] = float("nan")
    save_checkpoint(tmp_path, {**tensors, "decoder.head.weight": poisoned}, config)
    with pytest.raises(CheckpointError, match=r"weights that are not finite \(1 in total\): decoder.head.weight"):
        load_trained_model(tmp_path)


def test_json_nested_too_deeply_is_a_corrupt_file(tiny, tmp_path: Path, capsys, image: Path) -> None:
    tensors, _ = tiny
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / "model.safetensors"))  # no JSON hash
    (tmp_path / "model.json").write_text('{"model": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert main(["--quiet", "score", str(image), "--model", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: corrupt checkpoint file {tmp_path / 'model.json'}: nested too deeply\n"


def test_unknown_fields_of_newer_versions_are_ignored(tiny, tmp_path: Path, image: Path) -> None:
    tensors, config = tiny
    newer = _edited(_edited(config, "model.stages", [2, 3]), "score_scale.unit", "points")
    save_checkpoint(tmp_path, tensors, newer)
    assert main(["--quiet", "score", str(image), "--model", str(tmp_path)]) == 0  # loads
    assert load_checkpoint(tmp_path)[1] == newer


def test_schema_covers_every_field_of_every_architecture(tmp_path: Path) -> None:
    """Every field is checked (a new numeric field of ModelConfig, Preprocessing, LabelScale or
    ConformalInterval without a range in BOUNDS raises TypeError here) and the checkpoints of every
    architecture pass."""
    for name in list_architectures():
        config = architecture_config(name)
        with torch.device("meta"):
            model = build_model(config, pretrained_backbone=False)
        header = {key: TensorInfo("F32" if t.is_floating_point() else "I64", tuple(t.shape))
                  for key, t in model.state_dict().items()}
        checkpoint = {"model": json.loads(json.dumps(model.config.to_dict())), "score_scale": MOS,
                      "interval": ConformalInterval(0.9, 0.1, calibration_size=50).to_dict(), "training": {"eval_grid": 4}}
        assert check_model_checkpoint(checkpoint, header, tmp_path / "model.json") == ModelConfig.from_dict(
            checkpoint["model"]
        )


def test_a_checkpoint_of_format_1_loads_and_scores_as_the_current_format(tiny, tmp_path: Path, image: Path) -> None:
    """Format qfm-iqm/1 repeated the model (and its preprocessing) three times, kept the resize rules beside
    ``preprocessing`` and recorded the feature cache's folder; such checkpoints still load, unchanged."""
    from qfm_iqm import load_model
    from qfm_iqm.training.config import TrainConfig

    tensors, config = tiny
    preprocessing = {**config["model"]["preprocessing"], "max_short_side": 96}
    legacy_model = {**config["model"], "resize_short_side": None, "max_short_side": 96, "preprocessing": preprocessing}
    legacy = {"format": "qfm-iqm/1", "model": legacy_model, "backbone": legacy_model["backbone"],
              "preprocessing": preprocessing, "score_scale": MOS,
              "settings": {"model": legacy_model, "eval_grid": 2, "epochs": 3, "feature_cache_dir": "runs/feature-cache"}}
    save_checkpoint(tmp_path / "old", tensors, legacy)
    current = {**config, "model": {**config["model"], "preprocessing": preprocessing}, "training": {"eval_grid": 2}}
    save_checkpoint(tmp_path / "new", tensors, current)
    old, new = load_model(tmp_path / "old"), load_model(tmp_path / "new")
    assert old.preprocessing == new.preprocessing and old.preprocessing.max_short_side == 96 and old.grid == 2
    assert old.score(image).score == new.score(image).score
    restored = TrainConfig.from_checkpoint(legacy)
    assert restored.epochs == 3 and restored.feature_cache_dir is None
    assert restored.model.preprocessing == preprocessing
