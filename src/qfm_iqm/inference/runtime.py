"""Runtimes that score crops: the eager PyTorch model, or its exported ONNX graph in onnxruntime.

The graph maps crops (N, 3, S, S) to the panel members' scores (N, L), so an
:class:`~qfm_iqm.inference.graph.OnnxNetwork` is called like the eager model and
:func:`qfm_iqm.inference.predict.score_crops` serves both. Graphs are exported on first use into
:func:`~qfm_iqm.inference.graph.cache_dir`, named by :func:`graph_key`, and checked against the eager model
every time one is loaded. The ``onnx`` runtime runs on the CPU; attention maps (quality maps) always
come from the eager model. What serves a cached graph without torch is in :mod:`qfm_iqm.inference.graph`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import warnings
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from qfm_iqm.version import __version__
from qfm_iqm.inference.graph import (  # re-exported: the runtime's whole interface is here
    CHUNK_CROPS,
    GRAPH_FORMAT,
    OUTPUT,
    INPUT,
    OnnxNetwork,
    cache_dir,
    cached_checkpoint_network,
    checked_against,
    checkpoint_index,
    checkpoint_key,
    probe_crops,
    require,
    shipped_network,
)
from qfm_iqm.utils.checkpoint import atomic_write, atomic_write_json, checkpoint_paths

if TYPE_CHECKING:  # the model classes import timm (and torchvision): a cached graph is scored without them
    from qfm_iqm.models.qfm import QFMIQM

__all__ = ["CHUNK_CROPS", "RUNTIMES", "OnnxNetwork", "cache_dir", "cached_checkpoint_network", "checkpoint_key",
           "export_onnx", "graph_key", "onnx_network", "remember_checkpoint_network", "resolve_runtime",
           "probe_scores", "ship_graph", "shipped_network"]

RUNTIMES = ("torch", "onnx")  # and "auto", which picks one of them
OPSET = 18
_EXPORT_NEEDS = ("onnx", "onnxscript")


def resolve_runtime(runtime: str, device: torch.device) -> str:
    """``torch`` or ``onnx`` for a requested runtime on ``device``; ``auto`` is ``onnx`` on a CPU where
    onnxruntime and the exporter (onnx, onnxscript: dependencies of qfm-iqm) are installed, else ``torch``."""
    if runtime not in (*RUNTIMES, "auto"):
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)} or auto")
    if runtime == "auto":
        installed = all(find_spec(name) is not None for name in ("onnxruntime", *_EXPORT_NEEDS))
        return "onnx" if installed and device.type == "cpu" else "torch"
    if runtime == "onnx" and device.type != "cpu":
        raise ValueError(f"the onnx runtime runs on the CPU only, not on {device}; use device cpu or the torch runtime")
    return runtime


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


class _MemberScores(nn.Module):
    """The network as the graph computes it: crops -> the panel members' scores."""

    def __init__(self, network: QFMIQM) -> None:
        super().__init__()
        self.network = network

    def forward(self, crops: Tensor) -> Tensor:
        return self.network(crops).member_scores


def _export_copy(model: QFMIQM) -> QFMIQM:
    """A CPU copy of ``model`` with its weights, built for export: the reference network with timm's
    exportable layers, whose padded "same" convolutions the exporter folds into each convolution (no
    :class:`~qfm_iqm.inference.speed.StrideTwoSameConv2d`)."""
    from timm.layers import set_layer_config

    from qfm_iqm.inference.speed import fold_batch_norms
    from qfm_iqm.models.qfm import ModelConfig, build_model

    with set_layer_config(exportable=True):
        network = build_model(ModelConfig.from_dict(model.config.to_dict()), pretrained_backbone=False)
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        fold_batch_norms(network.backbone)  # the layers of a folded model (``load_model`` folds them)
    network.load_state_dict(model.state_dict())
    return network


def export_onnx(model: QFMIQM, path: str | Path) -> Path:
    """Export ``model`` to an ONNX file at ``path`` (written atomically): input ``crops`` (N, 3, S, S),
    any N, output ``member_scores`` (N, L), whose mean and std over L are the score and spread of
    :class:`~qfm_iqm.models.decoder.PanelOutput`. Uses ``torch.onnx.export(dynamo=True)``."""
    require(*_EXPORT_NEEDS)
    size = int(model.config.preprocessing["input_size"])
    optimiser_log = logging.getLogger("onnxscript")  # it warns about every constant it does not fold
    level = optimiser_log.level
    optimiser_log.setLevel(logging.ERROR)
    network = _MemberScores(_export_copy(model)).eval()
    try:
        program = torch.onnx.export(
            network, (torch.zeros(2, 3, size, size),), dynamo=True, opset_version=OPSET, input_names=[INPUT],
            output_names=[OUTPUT], dynamic_shapes=({0: torch.export.Dim("n")},), verbose=False,
        )
    finally:
        optimiser_log.setLevel(level)
    path = Path(path)
    atomic_write(path, lambda tmp: program.save(tmp, external_data=False))
    return path


def probe_scores(model: QFMIQM) -> Tensor:
    """``model``'s member scores of the :func:`~qfm_iqm.inference.graph.probe_crops`."""
    with torch.inference_mode():
        return model(torch.from_numpy(probe_crops(int(model.config.preprocessing["input_size"])))).member_scores


def _checked(network: OnnxNetwork, model: QFMIQM) -> OnnxNetwork:
    """``network``, after checking that it scores two fixed random crops as ``model`` does."""
    return checked_against(network, probe_scores(model).numpy())


def onnx_network(model: QFMIQM, threads: int | None = None, chunk: int | None = None) -> OnnxNetwork:
    """``model`` (in eval mode, on the CPU) as an :class:`OnnxNetwork` with ``threads`` intra-op threads
    (default: ``torch.get_num_threads()``): its graph from :func:`cache_dir`, exported there on first
    use (saying so on stderr). A cached graph that cannot be loaded or scores otherwise than ``model`` is
    exported again, with a warning; a fresh graph that scores otherwise raises ``RuntimeError``."""
    require("onnxruntime")
    threads = torch.get_num_threads() if threads is None else threads
    path = cache_dir() / f"{graph_key(model)}.onnx"
    if path.is_file():
        try:
            return _checked(OnnxNetwork(path, threads, chunk), model)
        except Exception as error:  # noqa: BLE001 - whatever is wrong with a cached file, it is made again
            warnings.warn(f"cached ONNX graph {path} is unusable ({str(error).strip()[:200]}); exporting it again",
                          stacklevel=2)
    print(f"qfm-iqm: exporting the model to ONNX for onnxruntime, once (it takes a while on a CPU); "
          f"the graph is cached in {path.parent}", file=sys.stderr, flush=True)
    return _checked(OnnxNetwork(export_onnx(model, path), threads, chunk), model)


def remember_checkpoint_network(key: str, network: OnnxNetwork, model: QFMIQM) -> None:
    """Record in :func:`cache_dir` that ``network`` (a checked graph of ``model``) is the graph of the
    checkpoint files whose :func:`checkpoint_key` is ``key``, with ``model``'s scores of the probe crops,
    so that :func:`cached_checkpoint_network` can serve them without building ``model``."""
    probe = probe_scores(model).tolist()
    atomic_write_json(checkpoint_index(key), {"format": GRAPH_FORMAT, "graph": network.path.name, "probe": probe})


def ship_graph(release: str | Path) -> Path:
    """Export the ONNX graph of a release copy beside its weights (``<stem>.onnx``) and record it in the
    copy's JSON (``graph``: the file's name, its SHA-256 and the eager model's scores of the probe crops),
    so that the release's first use exports nothing (:func:`shipped_network`).
    The weights are written again unchanged (their metadata holds the JSON's hash). Returns the graph's path."""
    from qfm_iqm.inference.checkpoint import load_checkpoint_model
    from qfm_iqm.inference.speed import for_inference
    from qfm_iqm.utils.checkpoint import load_tensors, save_checkpoint

    weights_path, _ = checkpoint_paths(release)
    model, info = load_checkpoint_model(release)
    model = for_inference(model)  # as load_model scores with it
    probe = probe_scores(model).numpy()
    graph = export_onnx(model, weights_path.with_suffix(".onnx"))
    checked_against(OnnxNetwork(graph), probe)
    record = {"file": graph.name, "sha256": hashlib.sha256(graph.read_bytes()).hexdigest(), "probe": probe.tolist()}
    save_checkpoint(weights_path.parent, load_tensors(release), {**info, "graph": record}, name=weights_path.stem)
    return graph
