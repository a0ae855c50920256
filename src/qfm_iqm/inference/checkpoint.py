"""Distrust every checkpoint: its JSON is checked before anything is built from it.

Each section of a model checkpoint's JSON is checked against the dataclass it becomes (``model``:
:class:`ModelConfig`, ``model.preprocessing``: :class:`Preprocessing`, ``score_scale``:
:class:`LabelScale`, ``interval``: :class:`ConformalInterval`): the JSON type of every field follows
the field's annotation, and every number must lie in the range :data:`BOUNDS` gives it. Of the
training settings (``training``, or ``settings`` in release copies) only the test grid ``eval_grid``
is used, and checked (1 to :data:`MAX_GRID`). Keys the dataclasses do not know are ignored (a
checkpoint of a newer version), but the model they describe must then still fit the weights: the
model is built on the ``meta`` device (no memory) and its tensor names, shapes and dtypes are
compared with the safetensors header before a single weight is read.

A new field of one of these dataclasses is checked from its annotation; a number needs a range in
:data:`BOUNDS` (``tests/test_checkpoint_validation.py`` checks that every field is covered).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch

from qfm_iqm.data.records import LabelScale, offenders_message
from qfm_iqm.data.transforms import Preprocessing
from qfm_iqm.inference.score_map import ConformalInterval
from qfm_iqm.models.backbones import list_backbones
from qfm_iqm.models.qfm import QFMIQM, ModelConfig, build_model
from qfm_iqm.utils.checkpoint import CheckpointError, TensorInfo, checkpoint_paths, inspect_checkpoint, load_tensors

__all__ = ["BOUNDS", "MAX_CROP_SIZE", "MAX_GRID", "MAX_SHORT_SIDE", "check_model_checkpoint",
           "inspect_model_checkpoint", "load_checkpoint_model", "load_trained_model", "read_model_checkpoint"]

MAX_CROP_SIZE = 1024  # pixels per side of a crop
MAX_SHORT_SIDE = 4096  # the shorter side an image may be resized to before cropping
MAX_GRID = 16  # test crops per side
MAX_LIST_LENGTH = 64

# The allowed range of every number in a checked section, by dataclass and field (both ends included).
BOUNDS: dict[type, dict[str, tuple[float, float]]] = {
    ModelConfig: {
        "dim": (1, 4096),
        "panel_size": (1, 256),
        "num_heads": (1, 64),
        "mlp_ratio": (0.25, 16.0),
        "stage_grid": (1, 64),
    },
    Preprocessing: {
        "input_size": (16, MAX_CROP_SIZE),
        "mean": (0.0, 1.0),
        "std": (0.01, 1.0),
        "resize_short_side": (16, MAX_SHORT_SIDE),
        "max_short_side": (16, MAX_SHORT_SIDE),
        "min_short_side": (16, MAX_SHORT_SIDE),
    },
    LabelScale: {"low": (-1e9, 1e9), "high": (-1e9, 1e9)},
    # the half-width is in raw network units (before the score map), which can exceed the [0, 1] scale
    # where labels lie at its ends; coverage 0 and 1 are refused on their own
    ConformalInterval: {"coverage": (0.0, 1.0), "quantile": (0.0, 1000.0), "calibration_size": (0, 10**9)},
}
_SETTINGS_KEYS = ("training", "settings")  # where a training run's and a release copy's JSON keep settings
_PREPROCESSING_KEYS = ("input_size", "mean", "std")  # what ``Preprocessing.from_dict`` reads
_FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})


def _unknown(kind: object) -> TypeError:
    return TypeError(f"the checkpoint schema cannot check values of type {kind}; teach qfm_iqm.inference.checkpoint")


def _describe(kind: object, bounds: tuple[float, float] | None) -> str:
    """What a JSON value of annotation ``kind`` must be, in words."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg, bounds) for arg in args)
    if origin in (list, tuple):
        size = f"{len(args)} " if origin is tuple and Ellipsis not in args else ""
        return f"a list of {size}items, each {_describe(args[0], bounds)}"
    names = {type(None): "null", bool: "true or false", str: "a string", dict: "an object", int: "an integer",
             float: "a number"}
    if kind not in names:
        raise _unknown(kind)
    return f"{names[kind]} from {bounds[0]:g} to {bounds[1]:g}" if kind in (int, float) and bounds else names[kind]


def _fits(value: Any, kind: object, bounds: tuple[float, float] | None) -> bool:
    """Whether a JSON value is of annotation ``kind`` and, for numbers, within ``bounds``."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg, bounds) for arg in args)
    if origin in (list, tuple):
        fixed = origin is tuple and Ellipsis not in args
        if not isinstance(value, list) or len(value) > MAX_LIST_LENGTH or (fixed and len(value) != len(args)):
            return False
        return all(_fits(item, args[0], bounds) for item in value)
    if kind is type(None):
        return value is None
    if kind in (bool, str, dict):
        return isinstance(value, kind)
    if kind not in (int, float):
        raise _unknown(kind)
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        return False
    return math.isfinite(value) and (bounds is None or bounds[0] <= value <= bounds[1])


def _numeric(kind: object) -> bool:
    return kind in (int, float) or any(_numeric(arg) for arg in typing.get_args(kind))


def _check_section(
    data: Any, schema: type, where: str, section: str, required: Collection[str] | None = None
) -> dict[str, Any]:
    """The known fields of JSON object ``data`` after checking them against dataclass ``schema``.

    ``required`` defaults to the fields without a default value. Raises ``CheckpointError`` naming
    ``where`` (the file) and the field.
    """
    if not isinstance(data, dict):
        raise CheckpointError(f"{where}: {section}: expected an object, got {_shown(data)}")
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    if required is None:
        unset = dataclasses.MISSING
        required = [n for n, f in fields.items() if f.default is unset and f.default_factory is unset]
    missing = [name for name in required if name not in data]
    if missing:
        raise CheckpointError(f"{where}: {section}: missing {', '.join(missing)}")
    for name in fields.keys() & data.keys():
        kind = hints[name]
        bounds = BOUNDS.get(schema, {}).get(name)
        if bounds is None and _numeric(kind):
            raise TypeError(f"{schema.__name__}.{name} has no range in qfm_iqm.inference.checkpoint.BOUNDS")
        if not _fits(data[name], kind, bounds):
            expected = _describe(kind, bounds)
            raise CheckpointError(f"{where}: {section}.{name}: expected {expected}, got {_shown(data[name])}")
    return {name: data[name] for name in fields.keys() & data.keys()}


def _shown(value: Any) -> str:
    """A JSON value for a message, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_config(config: Any, where: str) -> ModelConfig:
    """The :class:`ModelConfig` of a checkpoint's JSON, every value checked (see the module docstring)."""
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{where} is not a QFM-IQM model checkpoint (its JSON has no 'model' object)")
    model = ModelConfig.from_dict(_check_section(config["model"], ModelConfig, where, "model"))
    if model.backbone not in list_backbones():
        raise CheckpointError(f"{where}: model.backbone: {model.backbone!r} is none of {', '.join(list_backbones())}")
    if model.dim % model.num_heads:
        raise CheckpointError(f"{where}: model.dim ({model.dim}) is not a multiple of model.num_heads ({model.num_heads})")
    if model.preprocessing:
        _check_section(model.preprocessing, Preprocessing, where, "model.preprocessing", _PREPROCESSING_KEYS)
    if "score_scale" in config:
        scale = _check_section(config["score_scale"], LabelScale, where, "score_scale")
        if scale["low"] >= scale["high"]:
            raise CheckpointError(f"{where}: score_scale: low ({scale['low']}) is not below high ({scale['high']})")
    if "interval" in config:
        interval = _check_section(config["interval"], ConformalInterval, where, "interval")
        if not 0 < interval["coverage"] < 1:
            raise CheckpointError(f"{where}: interval.coverage: expected a number above 0 and below 1, "
                                  f"got {interval['coverage']}")
        if interval.get("scaled"):
            raise CheckpointError(f"{where}: interval.scaled: expected false (scores have no per-image difficulty "
                                  "to scale an interval by)")
    for section in _SETTINGS_KEYS:
        _check_test_grid(config.get(section), where, section)
    return model


def _check_test_grid(settings: Any, where: str, section: str) -> None:
    """Raise unless training ``settings`` are absent or an object whose ``eval_grid``, if any, is a grid."""
    if settings is None:
        return
    if not isinstance(settings, dict):
        raise CheckpointError(f"{where}: {section}: expected an object, got {_shown(settings)}")
    bounds = (1, MAX_GRID)
    if "eval_grid" in settings and not _fits(settings["eval_grid"], int, bounds):
        raise CheckpointError(f"{where}: {section}.eval_grid: expected {_describe(int, bounds)}, "
                              f"got {_shown(settings['eval_grid'])}")


def _check_tensors(model_config: ModelConfig, header: Mapping[str, TensorInfo], where: Path) -> None:
    """Raise unless the weights in ``header`` are exactly the tensors of the model ``model_config`` builds."""
    try:
        with torch.device("meta"):
            expected = build_model(model_config, pretrained_backbone=False).state_dict()
    except Exception as exc:  # noqa: BLE001 - any failure to build is a bad checkpoint, reported in one line
        raise CheckpointError(f"{where}: model: these settings build no model: {type(exc).__name__}: {exc}") from exc
    missing = [key for key in expected if key not in header]
    if missing:
        raise CheckpointError(offenders_message(f"{where}: tensors of the model missing from the weights", missing))
    unexpected = [key for key in header if key not in expected]
    if unexpected:
        raise CheckpointError(offenders_message(f"{where}: tensors the model does not have", unexpected))
    for key, tensor in expected.items():
        info = header[key]
        if info.shape != tuple(tensor.shape):
            raise CheckpointError(f"{where}: tensor {key} has shape {list(info.shape)}; the model described "
                                  f"by its JSON needs {list(tensor.shape)}")
        if (info.dtype in _FLOAT_DTYPES) != tensor.is_floating_point():
            raise CheckpointError(f"{where}: tensor {key} is stored as {info.dtype}; the model needs {tensor.dtype}")


def check_model_checkpoint(config: Any, header: Mapping[str, TensorInfo], path: str | Path) -> ModelConfig:
    """Check a model checkpoint's JSON ``config`` and safetensors ``header`` (see the module docstring)
    and return its :class:`ModelConfig`; ``CheckpointError`` names the file and the field otherwise."""
    weights_path, config_path = checkpoint_paths(path)
    model_config = _check_config(config, str(config_path))
    _check_tensors(model_config, header, weights_path)
    return model_config


def inspect_model_checkpoint(path: str | Path) -> tuple[ModelConfig, dict]:
    """``(model config, JSON)`` of a model checkpoint, checked against its weights' header (no weight
    is read); ``CheckpointError`` for a checkpoint that fails a check."""
    header, config = inspect_checkpoint(path)
    return check_model_checkpoint(config, header, path), config


def read_model_checkpoint(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """``(model config, tensors, JSON)`` of a model checkpoint, checked before the tensors are read;
    ``CheckpointError`` for a checkpoint that fails a check or holds non-finite weights."""
    model_config, config = inspect_model_checkpoint(path)
    tensors = load_tensors(path)
    bad = [key for key, value in tensors.items() if value.is_floating_point() and not bool(value.isfinite().all())]
    if bad:
        raise CheckpointError(offenders_message(f"{checkpoint_paths(path)[0]}: weights that are not finite", bad))
    return model_config, tensors, config


def load_checkpoint_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[QFMIQM, dict]:
    """Load a trained model and its checkpoint JSON from a folder or its ``.safetensors``/``.json`` file.

    No network access. The JSON and the weights' header are checked before anything is built
    (``CheckpointError``, a ``ValueError``, naming the file and the field; see the module docstring).
    Floating-point tensors stored in lower precision (fp16 release copies) are cast to float32; the
    model is returned in eval mode on ``device``.
    """
    model_config, tensors, config = read_model_checkpoint(path)
    model = build_model(model_config, pretrained_backbone=False)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
    return model.to(device).eval(), config


def load_trained_model(path: str | Path, device: torch.device | str = "cpu") -> QFMIQM:
    """Load a trained model from a checkpoint folder or its ``.safetensors``/``.json`` file (no network)."""
    return load_checkpoint_model(path, device)[0]
