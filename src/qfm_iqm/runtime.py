"""Runtimes that score crops: the eager PyTorch model, or its exported ONNX graph in onnxruntime.

The graph maps crops (N, 3, S, S) to the panel members' scores (N, L), so an :class:`OnnxNetwork` is
called like the eager model and :func:`qfm_iqm.evaluation.predict.score_crops` serves both. Graphs are
exported on first use into :func:`cache_dir`, named by :func:`graph_key`, and checked against the eager
model every time one is loaded. The ``onnx`` runtime needs ``pip install "qfm-iqm[onnx]"`` and runs on
the CPU; attention maps (quality maps) always come from the eager model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from qfm_iqm import __version__
from qfm_iqm.models.decoder import PanelOutput
from qfm_iqm.utils.checkpoint import atomic_write, atomic_write_json, checkpoint_paths

if TYPE_CHECKING:  # the model classes import timm (and torchvision): a cached graph is scored without them
    from qfm_iqm.models.qfm import QFMIQM

__all__ = ["RUNTIMES", "OnnxNetwork", "cache_dir", "cached_checkpoint_network", "checkpoint_key", "export_onnx",
           "graph_key", "onnx_network", "remember_checkpoint_network", "resolve_runtime"]

RUNTIMES = ("torch", "onnx")  # and "auto", which picks one of them
GRAPH_FORMAT = "qfm-iqm-onnx/1"  # part of every graph's key: change it when the exported graph changes
OPSET = 18
PROBE_TOLERANCE = 1e-4  # largest member-score difference from the eager model (normalised scale: 0.01 MOS)
_INPUT, _OUTPUT = "crops", "member_scores"
_EXPORT_NEEDS = ("onnx", "onnxscript")


def _require(*modules: str) -> None:
    """Raise ``ImportError`` naming the fix when one of ``modules`` is not installed."""
    missing = [name for name in modules if find_spec(name) is None]
    if missing:
        raise ImportError(f"the onnx runtime needs {', '.join(missing)}: pip install \"qfm-iqm[onnx]\" "
                          "(or use the torch runtime)")


def resolve_runtime(runtime: str, device: torch.device) -> str:
    """``torch`` or ``onnx`` for a requested runtime on ``device``; ``auto`` is ``onnx`` on a CPU where
    the ``onnx`` extra is installed, else ``torch``."""
    if runtime not in (*RUNTIMES, "auto"):
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)} or auto")
    if runtime == "auto":
        installed = all(find_spec(name) is not None for name in ("onnxruntime", *_EXPORT_NEEDS))
        return "onnx" if installed and device.type == "cpu" else "torch"
    if runtime == "onnx" and device.type != "cpu":
        raise ValueError(f"the onnx runtime runs on the CPU only, not on {device}; use device cpu or the torch runtime")
    return runtime


def cache_dir() -> Path:
    """Where exported graphs are kept: ``$QFM_IQM_CACHE/onnx``, else ``$XDG_CACHE_HOME/qfm-iqm/onnx``,
    else ``~/.cache/qfm-iqm/onnx``."""
    root = os.environ.get("QFM_IQM_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "qfm-iqm"
    return Path(root).expanduser() / "onnx"


def graph_key(model: QFMIQM) -> str:
    """SHA-256 of what a model's graph is made from: its weights and config, this package's version,
    torch's version (the exporter) and :data:`GRAPH_FORMAT`."""
    digest = hashlib.sha256(
        json.dumps([GRAPH_FORMAT, __version__, torch.__version__, model.config.to_dict()], sort_keys=True).encode()
    )
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def checkpoint_key(checkpoint: str | Path) -> str:
    """SHA-256 of a checkpoint's two files (weights and JSON), this package's version, torch's version and
    :data:`GRAPH_FORMAT`: it names the graph of a checkpoint whose files have not changed since."""
    digest = hashlib.sha256(json.dumps([GRAPH_FORMAT, __version__, torch.__version__]).encode())
    for path in checkpoint_paths(checkpoint):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _probe_crops(size: int) -> Tensor:
    """Two fixed random crops on which a graph must score as its model does."""
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


class _MemberScores(nn.Module):
    """The network as the graph computes it: crops -> the panel members' scores."""

    def __init__(self, network: QFMIQM) -> None:
        super().__init__()
        self.network = network

    def forward(self, crops: Tensor) -> Tensor:
        return self.network(crops).member_scores


def _export_copy(model: QFMIQM) -> QFMIQM:
    """A CPU copy of ``model`` with its weights, built for export: timm's exportable layers and its
    padded "same" convolutions (whose padding the exporter folds into each convolution)."""
    from timm.layers import set_layer_config

    from qfm_iqm.models.backbones import fold_batch_norms, restore_padded_same_convs
    from qfm_iqm.models.qfm import ModelConfig, build_model

    with set_layer_config(exportable=True):
        network = build_model(ModelConfig.from_dict(model.config.to_dict()), pretrained_backbone=False)
    restore_padded_same_convs(network)
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        fold_batch_norms(network.backbone)  # the layers of a folded model (``load_model`` folds them)
    network.load_state_dict(model.state_dict())
    return network


def export_onnx(model: QFMIQM, path: str | Path) -> Path:
    """Export ``model`` to an ONNX file at ``path`` (written atomically): input ``crops`` (N, 3, S, S),
    any N, output ``member_scores`` (N, L), whose mean and std over L are the score and spread of
    :class:`~qfm_iqm.models.decoder.PanelOutput`. Uses ``torch.onnx.export(dynamo=True)``."""
    _require(*_EXPORT_NEEDS)
    size = int(model.config.preprocessing["input_size"])
    optimiser_log = logging.getLogger("onnxscript")  # it warns about every constant it does not fold
    level = optimiser_log.level
    optimiser_log.setLevel(logging.ERROR)
    network = _MemberScores(_export_copy(model)).eval()
    try:
        program = torch.onnx.export(
            network, (torch.zeros(2, 3, size, size),), dynamo=True, opset_version=OPSET, input_names=[_INPUT],
            output_names=[_OUTPUT], dynamic_shapes=({0: torch.export.Dim("n")},), verbose=False,
        )
    finally:
        optimiser_log.setLevel(level)
    path = Path(path)
    atomic_write(path, lambda tmp: program.save(tmp, external_data=False))
    return path


# Crops per onnxruntime call. Measured with the v2 model (results/benchmark/onnx-chunks.json, one run each):
# 9, 18, 36 and 144 (a whole batch of 16 images) crops gave 10.7, 11.2, 10.1 and 9.5 images/s, and the
# same peak memory (1176-1186 MiB).
CHUNK_CROPS = 18


class OnnxNetwork:
    """An exported graph in an onnxruntime session, called like the eager model (scores only, no
    attention maps). ``threads``: onnxruntime's intra-op threads (default: ``torch.get_num_threads()``).
    A call runs its crops ``chunk`` at a time (default :data:`CHUNK_CROPS`)."""

    def __init__(self, path: str | Path, threads: int | None = None, chunk: int | None = None) -> None:
        chunk = CHUNK_CROPS if chunk is None else chunk
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1 crop, got {chunk}")
        _require("onnxruntime")
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads() if threads is None else threads
        options.inter_op_num_threads = 1
        self.path = Path(path)
        self.chunk = chunk
        self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def __call__(self, crops: Tensor) -> PanelOutput:
        pixels = crops.detach().cpu().float().contiguous().numpy()
        scores = [self.session.run([_OUTPUT], {_INPUT: pixels[i : i + self.chunk]})[0]
                  for i in range(0, len(pixels), self.chunk)]
        return PanelOutput(torch.from_numpy(np.concatenate(scores)))


def _probe_scores(model: QFMIQM) -> Tensor:
    """``model``'s member scores of the probe crops."""
    with torch.inference_mode():
        return model(_probe_crops(int(model.config.preprocessing["input_size"]))).member_scores


def _checked(network: OnnxNetwork, model: QFMIQM) -> OnnxNetwork:
    """``network``, after checking that it scores two fixed random crops as ``model`` does."""
    return _checked_against(network, _probe_scores(model))


def _checked_against(network: OnnxNetwork, expected: Tensor) -> OnnxNetwork:
    """``network``, after checking that it gives the probe crops the member scores ``expected``."""
    crops = _probe_crops(int(network.session.get_inputs()[0].shape[-1]))
    error = (network(crops).member_scores - expected).abs().max().item()
    if not error <= PROBE_TOLERANCE:  # NaN too
        raise RuntimeError(f"{network.path}: the graph's scores differ from PyTorch's by {error:.3g} "
                           f"(tolerance {PROBE_TOLERANCE}); use the torch runtime")
    return network


def onnx_network(model: QFMIQM, threads: int | None = None, chunk: int | None = None) -> OnnxNetwork:
    """``model`` (in eval mode, on the CPU) as an :class:`OnnxNetwork`: its graph from :func:`cache_dir`,
    exported there on first use. A cached graph that cannot be loaded or scores otherwise than ``model``
    is exported again, with a warning; a fresh graph that scores otherwise raises ``RuntimeError``."""
    _require("onnxruntime")
    path = cache_dir() / f"{graph_key(model)}.onnx"
    if path.is_file():
        try:
            return _checked(OnnxNetwork(path, threads, chunk), model)
        except Exception as error:  # noqa: BLE001 - whatever is wrong with a cached file, it is made again
            warnings.warn(f"cached ONNX graph {path} is unusable ({str(error).strip()[:200]}); exporting it again",
                          stacklevel=2)
    return _checked(OnnxNetwork(export_onnx(model, path), threads, chunk), model)


def _checkpoint_index(key: str) -> Path:
    return cache_dir() / f"checkpoint-{key}.json"


def remember_checkpoint_network(key: str, network: OnnxNetwork, model: QFMIQM) -> None:
    """Record in :func:`cache_dir` that ``network`` (a checked graph of ``model``) is the graph of the
    checkpoint files whose :func:`checkpoint_key` is ``key``, with ``model``'s scores of the probe crops,
    so that :func:`cached_checkpoint_network` can serve them without building ``model``."""
    probe = _probe_scores(model).tolist()
    atomic_write_json(_checkpoint_index(key), {"format": GRAPH_FORMAT, "graph": network.path.name, "probe": probe})


def cached_checkpoint_network(key: str, threads: int | None = None, chunk: int | None = None) -> OnnxNetwork | None:
    """The graph :func:`remember_checkpoint_network` recorded for the checkpoint files whose
    :func:`checkpoint_key` is ``key``, checked against the recorded probe scores; ``None`` when there is
    none, or it is unreadable or scores otherwise (the caller then builds the model and
    :func:`onnx_network` exports or repairs the graph)."""
    _require("onnxruntime")
    index = _checkpoint_index(key)
    if not index.is_file():
        return None
    try:
        entry = json.loads(index.read_text())
        network = OnnxNetwork(cache_dir() / entry["graph"], threads, chunk)
        return _checked_against(network, torch.tensor(entry["probe"], dtype=torch.float32))
    except Exception as error:  # noqa: BLE001 - whatever is wrong, the model is built and checked instead
        warnings.warn(f"cached ONNX graph entry {index} is unusable ({str(error).strip()[:200]}); "
                      "building the model to check it", stacklevel=2)
        return None
