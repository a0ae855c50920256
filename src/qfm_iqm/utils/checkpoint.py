"""Pickle-free checkpoints: tensors in safetensors, everything else in JSON, written atomically.

A checkpoint ``<name>`` is the pair ``<name>.safetensors`` + ``<name>.json``. Each file is written to
a temporary file in the same directory, fsynced and moved into place with ``os.replace``; the
weights are written first, and their safetensors metadata records the SHA-256 of the JSON text, so
:func:`load_checkpoint` detects a pair left mismatched by an interrupted save.

Nested training state (model, AdamW, scheduler, RNG states, extra buffers) is split by
:func:`flatten_state` into dotted-key tensors and a JSON skeleton that keeps dict key types
(e.g. the int parameter ids of optimizer states), tuples and numpy arrays.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from qfm_iqm.utils.files import (  # re-exported: written without torch, for the command line's checks
    CONFIG_HASH_KEY,
    atomic_write,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    checkpoint_paths,
)

__all__ = [
    "CheckpointError",
    "TensorInfo",
    "atomic_write",
    "atomic_write_csv",
    "atomic_write_json",
    "atomic_write_text",
    "checkpoint_paths",
    "flatten_state",
    "inspect_checkpoint",
    "load_checkpoint",
    "load_tensors",
    "load_training_state",
    "save_checkpoint",
    "save_training_state",
    "unflatten_state",
]

TRAINING_STATE_NAME = "training_state"
TRAINING_STATE_FORMAT = "qfm-iqm-training-state/1"
_TENSOR, _NDARRAY, _TUPLE, _DICT = "__tensor__", "__ndarray__", "__tuple__", "__dict__"
_MARKERS = frozenset({_TENSOR, _NDARRAY, _TUPLE, _DICT})


class CheckpointError(ValueError):
    """A checkpoint is unreadable or corrupt, or its JSON does not describe the weights beside it."""


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as the safetensors header declares it: dtype code (``F32``, ``I64``, ...) and shape."""

    dtype: str
    shape: tuple[int, ...]


def _prepare_tensors(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Detach, move to CPU, make contiguous and clone tensors that share storage with an earlier one."""
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for key, value in tensors.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"checkpoint tensor {key!r} is a {type(value).__name__}, not a Tensor")
        tensor = value.detach().cpu().contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen:
            tensor = tensor.clone()
        elif ptr != 0:
            seen.add(ptr)
        out[key] = tensor
    return out


def save_checkpoint(
    directory: str | Path, tensors: Mapping[str, Tensor], config: Any, name: str = "model"
) -> Path:
    """Write ``<name>.safetensors`` then ``<name>.json`` into ``directory``; return the weights path.

    ``config`` must be JSON-serialisable; it is serialised before anything is written.
    """
    directory = Path(directory)
    config_text = json.dumps(config, indent=2, sort_keys=False) + "\n"
    metadata = {CONFIG_HASH_KEY: hashlib.sha256(config_text.encode("utf-8")).hexdigest()}
    prepared = _prepare_tensors(tensors)
    weights_path = directory / f"{name}.safetensors"
    atomic_write(weights_path, lambda tmp: save_file(prepared, str(tmp), metadata=metadata))
    atomic_write_text(directory / f"{name}.json", config_text)
    return weights_path


def inspect_checkpoint(directory_or_file: str | Path, name: str = "model") -> tuple[dict[str, TensorInfo], Any]:
    """The tensors a checkpoint declares (from the safetensors header; no tensor is read) and its JSON.

    Raises:
        FileNotFoundError: a file of the pair is missing (the message names it).
        CheckpointError: a file is unreadable or corrupt, or the JSON does not belong to the weights.
    """
    weights_path, config_path = checkpoint_paths(directory_or_file, name)
    for path in (weights_path, config_path):
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            header = {}
            for key in handle.keys():
                part = handle.get_slice(key)
                header[key] = TensorInfo(part.get_dtype(), tuple(part.get_shape()))
        config_bytes = config_path.read_bytes()
    except SafetensorError as exc:
        raise CheckpointError(f"corrupt checkpoint file {weights_path}: {exc}") from exc
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint file {exc.filename or weights_path}: {exc.strerror}") from exc
    expected = metadata.get(CONFIG_HASH_KEY)
    if expected is not None and hashlib.sha256(config_bytes).hexdigest() != expected:
        raise CheckpointError(
            f"checkpoint file {config_path} does not belong to {weights_path} "
            "(interrupted save or edited JSON)"
        )
    try:
        config = json.loads(config_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise CheckpointError(f"corrupt checkpoint file {config_path}: {reason}") from exc
    return header, config


def load_checkpoint(directory_or_file: str | Path, name: str = "model") -> tuple[dict[str, Tensor], Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, given its directory or either file.

    Returns ``(tensors, config)`` with tensors on CPU. Raises as :func:`inspect_checkpoint`.
    """
    _, config = inspect_checkpoint(directory_or_file, name)
    return load_tensors(directory_or_file, name), config


def load_tensors(directory_or_file: str | Path, name: str = "model") -> dict[str, Tensor]:
    """The tensors of a checkpoint's ``.safetensors`` file, on CPU (``CheckpointError`` if corrupt)."""
    weights_path, _ = checkpoint_paths(directory_or_file, name)
    try:
        return load_file(str(weights_path), device="cpu")
    except SafetensorError as exc:
        raise CheckpointError(f"corrupt checkpoint file {weights_path}: {exc}") from exc


def flatten_state(obj: Any, prefix: str = "") -> tuple[dict[str, Tensor], Any]:
    """Split a nested state into ``(tensors, skeleton)``.

    Tensors (and numpy arrays) go to ``tensors`` under dotted keys (``prefix.path.to.leaf``); the
    JSON-able ``skeleton`` mirrors ``obj`` with markers in their place. Dicts with non-string keys
    (int, bool, float, None) and tuples are tagged so :func:`unflatten_state` restores their types.
    Supported leaves: tensors, numpy arrays and scalars, str, int, float, bool, None.
    """
    tensors: dict[str, Tensor] = {}

    def put(key: str, tensor: Tensor) -> str:
        if key in tensors:
            raise ValueError(f"two tensors flatten to the same key {key!r}")
        tensors[key] = tensor
        return key

    def encode(value: Any, path: str) -> Any:
        if isinstance(value, Tensor):
            return {_TENSOR: put(path, value)}
        if isinstance(value, np.ndarray):
            return {_NDARRAY: put(path, torch.from_numpy(np.ascontiguousarray(value)))}
        if isinstance(value, np.generic):
            return value.item()
        if value is None or isinstance(value, (str, int, float)):
            return value
        if isinstance(value, (list, tuple)):
            items = [encode(v, _join(path, str(i))) for i, v in enumerate(value)]
            return {_TUPLE: items} if isinstance(value, tuple) else items
        if isinstance(value, Mapping):
            if all(isinstance(k, str) for k in value) and not _MARKERS & set(value):
                return {k: encode(v, _join(path, k)) for k, v in value.items()}
            pairs = []
            for k, v in value.items():
                if k is not None and not isinstance(k, (str, int, float)):
                    raise TypeError(f"cannot store dict key {k!r} of type {type(k).__name__} at {path!r}")
                pairs.append([k, encode(v, _join(path, str(k)))])
            return {_DICT: pairs}
        raise TypeError(f"cannot store {type(value).__name__} at {path!r} in a checkpoint")

    skeleton = encode(obj, prefix)
    return tensors, skeleton


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def unflatten_state(skeleton: Any, tensors: Mapping[str, Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""

    def decode(value: Any) -> Any:
        if isinstance(value, list):
            return [decode(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((marker, payload),) = value.items()
            if marker == _TENSOR:
                return _lookup(tensors, payload)
            if marker == _NDARRAY:
                return _lookup(tensors, payload).numpy()
            if marker == _TUPLE:
                return tuple(decode(v) for v in payload)
            if marker == _DICT:
                return {k: decode(v) for k, v in payload}
        return {k: decode(v) for k, v in value.items()}

    return decode(skeleton)


def _lookup(tensors: Mapping[str, Tensor], key: str) -> Tensor:
    if key not in tensors:
        raise ValueError(f"checkpoint skeleton refers to missing tensor {key!r}")
    return tensors[key]


def save_training_state(directory: str | Path, state: Mapping[str, Any]) -> Path:
    """Save a nested training state (no pickle) as ``training_state.{safetensors,json}``."""
    tensors, skeleton = flatten_state(dict(state))
    config = {"format": TRAINING_STATE_FORMAT, "state": skeleton}
    return save_checkpoint(directory, tensors, config, name=TRAINING_STATE_NAME)


def load_training_state(directory: str | Path) -> dict[str, Any]:
    """Load a state written by :func:`save_training_state` (tensors on CPU)."""
    tensors, config = load_checkpoint(directory, name=TRAINING_STATE_NAME)
    if not isinstance(config, dict) or config.get("format") != TRAINING_STATE_FORMAT:
        raise ValueError(f"{directory} does not hold a {TRAINING_STATE_FORMAT} checkpoint")
    return unflatten_state(config["state"], tensors)
