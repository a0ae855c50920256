"""Scoring with a checkpoint's exported ONNX graph in onnxruntime, without torch.

The graph maps crops (N, 3, S, S) to the panel members' scores (N, L). :mod:`qfm_iqm.inference.runtime` exports
it with torch into :func:`cache_dir` and records which checkpoint files it came from, with the eager
model's scores of two fixed probe crops. From then on :func:`load_graph_scorer` serves those very files
from the cache in a process that imports neither torch nor the model code (timm, torchvision): what
``qfm-iqm score`` does, so that its start-up and memory are those of onnxruntime alone
(docs/scoring.md#runtimes). A release copy may ship its graph beside its weights (:func:`shipped_network`),
so that not even its first use exports one.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from qfm_iqm.version import __version__
from qfm_iqm.data.transforms import Preprocessing, grid_crop_array
from qfm_iqm.inference.pretrained import read_checkpoint_json, recorded_interval, resolve_model, score_scale, scoring_grid
from qfm_iqm.inference.score_result import ScoreResult, image_result, panel_scores
from qfm_iqm.utils.files import checkpoint_paths, written_together

if TYPE_CHECKING:
    import torch

    from qfm_iqm.models.decoder import PanelOutput
    from qfm_iqm.models.qfm import QFMIQM

__all__ = ["CHUNK_CROPS", "GRAPH_FORMAT", "GraphScorer", "OnnxNetwork", "cache_dir", "cached_checkpoint_network",
           "checkpoint_key", "load_graph_scorer", "probe_crops", "shipped_network", "usable_cpus"]

GRAPH_FORMAT = "qfm-iqm-onnx/2"  # part of every graph's key: change it when the exported graph or the probe changes
PROBE_TOLERANCE = 1e-4  # largest member-score difference from the eager model (normalised scale: 0.01 MOS)
INPUT, OUTPUT = "crops", "member_scores"
# Crops per onnxruntime call. Measured with the v2 model (results/benchmark/onnx-chunks.json, one run each):
# 9, 18, 36 and 144 (a whole batch of 16 images) crops gave 10.7, 11.2, 10.1 and 9.5 images/s, and the
# same peak memory (1176-1186 MiB).
CHUNK_CROPS = 18


def require(*modules: str) -> None:
    """Raise ``ImportError`` naming the fix when one of ``modules`` is not installed."""
    missing = [name for name in modules if find_spec(name) is None]
    if missing:
        raise ImportError(f"the onnx runtime needs {', '.join(missing)}: pip install onnxruntime onnx onnxscript "
                          "(dependencies of qfm-iqm; or use the torch runtime)")


def cache_dir() -> Path:
    """Where exported graphs are kept: ``$QFM_IQM_CACHE/onnx``, else ``$XDG_CACHE_HOME/qfm-iqm/onnx``,
    else ``~/.cache/qfm-iqm/onnx``."""
    root = os.environ.get("QFM_IQM_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "qfm-iqm"
    return Path(root).expanduser() / "onnx"


def torch_version() -> str:
    """The installed torch's version (the exporter of the graphs), read without importing torch."""
    try:
        return version("torch")
    except PackageNotFoundError:  # torch without package metadata (a source build)
        import torch

        return torch.__version__


def checkpoint_key(checkpoint: str | Path) -> str:
    """SHA-256 of a checkpoint's two files (weights and JSON), this package's version, torch's version and
    :data:`GRAPH_FORMAT`: it names the graph of a checkpoint whose files have not changed since."""
    digest = hashlib.sha256(json.dumps([GRAPH_FORMAT, __version__, torch_version()]).encode())
    for path in checkpoint_paths(checkpoint):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def probe_crops(size: int) -> np.ndarray:
    """Two fixed random crops (2, 3, size, size) on which a graph must score as its model does."""
    return np.random.default_rng(0).uniform(-1.0, 1.0, (2, 3, size, size)).astype(np.float32)


class OnnxNetwork:
    """An exported graph in an onnxruntime session: :meth:`member_scores` of crop arrays, or called
    like the eager model on tensors (scores only, no attention maps). ``threads``: onnxruntime's
    intra-op threads (default: its own, one per physical core, as PyTorch's). A call runs its crops
    ``chunk`` at a time (default :data:`CHUNK_CROPS`)."""

    def __init__(self, path: str | Path, threads: int | None = None, chunk: int | None = None) -> None:
        chunk = CHUNK_CROPS if chunk is None else chunk
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1 crop, got {chunk}")
        require("onnxruntime")
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or 0
        options.inter_op_num_threads = 1
        self.path = Path(path)
        self.chunk = chunk
        self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    @property
    def input_size(self) -> int:
        """The crop size ``S`` the graph takes."""
        return int(self.session.get_inputs()[0].shape[-1])

    def member_scores(self, crops: np.ndarray) -> np.ndarray:
        """The panel members' scores (N, L) of crops (N, 3, S, S), float32."""
        pixels = np.ascontiguousarray(crops, dtype=np.float32)
        parts = [self.session.run([OUTPUT], {INPUT: pixels[i : i + self.chunk]})[0]
                 for i in range(0, len(pixels), self.chunk)]
        return np.concatenate(parts)

    def __call__(self, crops: torch.Tensor) -> PanelOutput:
        import torch

        from qfm_iqm.models.decoder import PanelOutput

        return PanelOutput(torch.from_numpy(self.member_scores(crops.detach().cpu().numpy())))


def checked_against(network: OnnxNetwork, expected: np.ndarray) -> OnnxNetwork:
    """``network``, after checking that it gives the :func:`probe_crops` the member scores ``expected``."""
    error = float(np.abs(network.member_scores(probe_crops(network.input_size)) - expected).max())
    if not error <= PROBE_TOLERANCE:  # NaN too
        raise RuntimeError(f"{network.path}: the graph's scores differ from PyTorch's by {error:.3g} "
                           f"(tolerance {PROBE_TOLERANCE}); use the torch runtime")
    return network


def shipped_network(checkpoint: str | Path, info: dict, threads: int | None = None,
                    chunk: int | None = None) -> OnnxNetwork | None:
    """The graph a release copy ships beside its weights, as its JSON ``info`` records it (``graph``: the
    file's name, its SHA-256 and the eager model's scores of the :func:`probe_crops`), checked; ``None``
    when it ships none, or (with a warning) when the file is missing, edited or scores otherwise: the
    graph is then exported as for any checkpoint."""
    record = info.get("graph")
    if not isinstance(record, dict):
        return None
    require("onnxruntime")
    name = str(record.get("file"))
    path = checkpoint_paths(checkpoint)[0].parent / Path(name).name
    try:
        if not written_together(checkpoint):  # an edited JSON is checked in full by loading the model
            raise ValueError("the release's JSON is not the one saved with its weights")
        if hashlib.sha256(path.read_bytes()).hexdigest() != record.get("sha256"):
            raise ValueError("the file is not the one the release records (SHA-256 differs)")
        return checked_against(OnnxNetwork(path, threads, chunk), np.asarray(record["probe"], dtype=np.float32))
    except Exception as error:  # noqa: BLE001 - whatever is wrong, the graph is exported instead
        warnings.warn(f"the release's ONNX graph {path} is unusable ({str(error).strip()[:200]}); "
                      "exporting the model's graph instead", stacklevel=2)
        return None


def checkpoint_index(key: str) -> Path:
    """The cache entry that names the graph of the checkpoint files whose :func:`checkpoint_key` is ``key``."""
    return cache_dir() / f"checkpoint-{key}.json"


def cached_checkpoint_network(key: str, threads: int | None = None, chunk: int | None = None) -> OnnxNetwork | None:
    """The graph :func:`qfm_iqm.inference.runtime.remember_checkpoint_network` recorded for the checkpoint files
    whose :func:`checkpoint_key` is ``key``, checked against the recorded probe scores; ``None`` when
    there is none, or it is unreadable or scores otherwise (the caller then builds the model, and
    :func:`qfm_iqm.inference.runtime.onnx_network` exports or repairs the graph)."""
    require("onnxruntime")
    index = checkpoint_index(key)
    if not index.is_file():
        return None
    try:
        entry = json.loads(index.read_text())
        network = OnnxNetwork(cache_dir() / entry["graph"], threads, chunk)
        return checked_against(network, np.asarray(entry["probe"], dtype=np.float32))
    except Exception as error:  # noqa: BLE001 - whatever is wrong, the model is built and checked instead
        warnings.warn(f"cached ONNX graph entry {index} is unusable ({str(error).strip()[:200]}); "
                      "building the model to check it", stacklevel=2)
        return None


class GraphScorer:
    """A checkpoint's cached graph with its preprocessing, test grid, score scale and interval.

    It scores as :class:`qfm_iqm.api.Scorer` does with the onnx runtime: the same crops, the same graph
    and the same arithmetic after it (:mod:`qfm_iqm.inference.score_result`), so the same numbers, without torch.
    Quality maps need the attention maps of the eager model, which is loaded (with torch) on first use.
    ``calls``: how many network calls :func:`qfm_iqm.scoring.score_files` runs at once (each on the
    network's own intra-op threads).
    """

    runtime = "onnx"

    def __init__(self, checkpoint: Path, network: OnnxNetwork, info: dict, grid: int, calls: int = 1) -> None:
        if calls < 1:
            raise ValueError(f"calls must be >= 1, got {calls}")
        self.checkpoint = checkpoint
        self.network = network
        self.calls = calls
        self.info = info
        self.preprocessing = Preprocessing.from_dict(info["model"]["preprocessing"])
        self.scale = score_scale(info)
        self.grid = grid
        self.interval = recorded_interval(info)
        self._model: QFMIQM | None = None

    def crops(self, image: Image.Image) -> np.ndarray:
        """The fixed crop grid of an RGB image (grid*grid, 3, S, S), as ``Scorer.crops`` cuts it."""
        return grid_crop_array(image, self.preprocessing, self.grid)

    def score_crop_stacks(self, stacks: Sequence[np.ndarray], paths: Sequence[str | None]) -> list[ScoreResult]:
        """Score several images from their :meth:`crops` in one call of the graph (see
        ``Scorer.score_crop_stacks``)."""
        if not stacks:
            return []
        members = self.network.member_scores(np.concatenate(stacks))
        return [image_result(score, spread, path, self.scale, self.interval)
                for (score, spread), path in zip(panel_scores(members, [len(stack) for stack in stacks]), paths)]

    def quality_map(self, image: Image.Image) -> np.ndarray:
        """``Scorer.quality_map``: the attention maps of the eager model (built, with torch, on first use)."""
        from qfm_iqm.inference.quality_map import quality_map

        if self._model is None:
            from qfm_iqm.inference.checkpoint import load_checkpoint_model
            from qfm_iqm.inference.speed import for_inference

            self._model = for_inference(load_checkpoint_model(self.checkpoint)[0])
        return quality_map(self._model, image, self.preprocessing, self.grid)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the system tells it, else all of them)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def load_graph_scorer(
    name_or_path: str | Path, grid: int | None = None, threads: int | None = None, calls: int = 1
) -> GraphScorer | None:
    """A :class:`GraphScorer` of a released model that ships its graph, or of a released model or
    checkpoint whose very files have a cached graph (``load_model(..., runtime="onnx")`` recorded one),
    else ``None``: onnxruntime is not installed, or there is no usable graph yet. ``threads``: the
    intra-op threads of each network call (default: onnxruntime's, one per core); ``calls``: network
    calls run at once when scoring many files (:class:`GraphScorer`)."""
    if find_spec("onnxruntime") is None:
        return None
    path = resolve_model(name_or_path)
    info = read_checkpoint_json(path)
    network = shipped_network(path, info, threads) or cached_checkpoint_network(checkpoint_key(path), threads)
    if network is None:
        return None
    return GraphScorer(path, network, info, scoring_grid(info, grid), calls)
