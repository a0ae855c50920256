"""Scoring API: ``load_model()`` gives a :class:`Scorer` that rates images on its model's score scale.

>>> from qfm_iqm import load_model
>>> scorer = load_model()                      # the default released model
>>> scorer.score("photo.jpg").score            # MOS, 0-100, higher is better

Every image is scored as the mean over a fixed grid of crops. The network scores each crop on its
own, so a score does not depend on the order, the run or the other images whose crops share its
forward pass (:meth:`Scorer.score_crop_stacks`; beyond float32 rounding). The grid is the one the
checkpoint records (its training's ``eval_grid``; 3x3 for checkpoints that record none) unless
``grid`` says otherwise. ``runtime="onnx"`` runs the network in onnxruntime (:mod:`qfm_iqm.inference.runtime`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
import torch
from PIL import Image

from qfm_iqm.data.images import load_image, to_rgb
from qfm_iqm.data.records import LabelScale
from qfm_iqm.data.transforms import Preprocessing, grid_crops
from qfm_iqm.inference.score_map import ConformalInterval
from qfm_iqm.inference.predict import CropNetwork, model_preprocessing, score_images
from qfm_iqm.inference.quality_map import quality_map
from qfm_iqm.inference.pretrained import (
    DEFAULT_GRID, DEFAULT_MODEL, NORMALISED_SCALE, read_checkpoint_json, recorded_interval, resolve_model, score_scale,
    scoring_grid,
)
from qfm_iqm.inference.runtime import (
    OnnxNetwork, cached_checkpoint_network, checkpoint_key, onnx_network, remember_checkpoint_network, resolve_runtime,
    shipped_network,
)
from qfm_iqm.inference.score_result import ScoreResult, image_result  # noqa: F401 - re-exported
from qfm_iqm.utils.device import usable_device

if TYPE_CHECKING:  # the model classes import timm; a cached graph scores without them (load_model)
    from qfm_iqm.models.qfm import QFMIQM

__all__ = ["ImageInput", "NORMALISED_SCALE", "ScoreResult", "Scorer", "load_model", "to_rgb_image"]

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]


def _array_to_image(array: np.ndarray) -> Image.Image:
    """HxW, HxWx1, HxWx3 or HxWx4 array, uint8 or float in [0, 1] (quantised to 8 bits) -> RGB image."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)) or array.size == 0:
        raise ValueError(f"expected an HxW, HxWx3 or HxWx4 image array, got shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        if not (np.isfinite(array).all() and array.min() >= 0.0 and array.max() <= 1.0):
            raise ValueError("float image arrays must hold finite values in [0, 1]")
        array = np.rint(array * 255.0).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise TypeError(f"image arrays must be uint8 or float in [0, 1], got {array.dtype}")
    return to_rgb(Image.fromarray(np.ascontiguousarray(array)))


def to_rgb_image(image: ImageInput) -> tuple[Image.Image, str | None]:
    """Any single supported input -> (8-bit RGB image, path or ``None``).

    Paths are decoded with :func:`~qfm_iqm.data.images.load_image` (EXIF orientation applied, first
    frame of animations); PIL images are used as given; arrays and CHW tensors follow
    :func:`_array_to_image` rules (alpha is composited onto white, as for files).
    """
    if isinstance(image, (str, os.PathLike)):
        return load_image(image), str(image)
    if isinstance(image, Image.Image):
        return to_rgb(image), None
    if isinstance(image, torch.Tensor):
        if image.dim() != 3:
            raise ValueError(f"expected a CxHxW image tensor, got shape {tuple(image.shape)}")
        return _array_to_image(image.detach().cpu().permute(1, 2, 0).numpy()), None
    if isinstance(image, np.ndarray):
        return _array_to_image(image), None
    raise TypeError(f"cannot score a {type(image).__name__}; give a path, PIL image, numpy array or tensor")


def _checked_grid(grid: int) -> int:
    if grid < 1:
        raise ValueError(f"grid must be >= 1 crops per side, got {grid}")
    return grid


class Scorer:
    """A trained QFM-IQM model with its preprocessing and score scale.

    Attributes:
        model: the network (eval mode, on ``device``); quality maps always use it. A scorer that
            :func:`load_model` made from a cached graph builds it on first use.
        runtime: what scores crops, ``"torch"`` (``model``) or ``"onnx"`` (its exported graph, CPU only;
            ``"auto"`` picks ``"onnx"`` where it can run, see :func:`qfm_iqm.inference.runtime.resolve_runtime`).
        network: ``model`` or its :class:`~qfm_iqm.inference.runtime.OnnxNetwork`, as ``runtime`` says.
        preprocessing: crop size and normalisation the model was trained with.
        scale: the scale scores are reported on (``NORMALISED_SCALE`` when the checkpoint records none).
        grid: crops per side of the fixed test grid.
        info: the checkpoint's JSON (backbone, training data, settings, ...).
        interval: the calibrated interval (normalised scale) that gives ``low``/``high``, or ``None``.
    """

    def __init__(
        self,
        model: QFMIQM,
        scale: LabelScale = NORMALISED_SCALE,
        device: torch.device | str = "cpu",
        grid: int = DEFAULT_GRID,
        info: dict | None = None,
        interval: ConformalInterval | None = None,
        runtime: str = "torch",
    ) -> None:
        self.device = torch.device(device)
        self._model: QFMIQM | None = model.to(self.device).eval()
        self._build_model: Callable[[], QFMIQM] | None = None
        self.preprocessing = model_preprocessing(model)
        self.scale = scale
        self.grid = _checked_grid(grid)
        self.info = info or {}
        self.interval = interval
        self.runtime = resolve_runtime(runtime, self.device)
        self.network: CropNetwork = onnx_network(model) if self.runtime == "onnx" else self._model

    @classmethod
    def _from_graph(
        cls, network: OnnxNetwork, build_model: Callable[[], QFMIQM], scale: LabelScale, grid: int, info: dict,
        interval: ConformalInterval | None,
    ) -> "Scorer":
        """A CPU scorer of an exported graph whose eager model is built by ``build_model`` only when needed."""
        scorer = cls.__new__(cls)
        scorer.device, scorer.runtime, scorer.network = torch.device("cpu"), "onnx", network
        scorer._model, scorer._build_model = None, build_model
        scorer.preprocessing = Preprocessing.from_dict(info["model"]["preprocessing"])
        scorer.scale, scorer.grid, scorer.info, scorer.interval = scale, _checked_grid(grid), info, interval
        return scorer

    @property
    def model(self) -> QFMIQM:
        if self._model is None:
            self._model = self._build_model().to(self.device).eval()
        return self._model

    def crops(self, image: Image.Image) -> torch.Tensor:
        """The fixed crop grid of an RGB image (grid*grid, 3, S, S)."""
        return grid_crops(image, self.preprocessing, self.grid)

    def score_crops(self, crops: torch.Tensor, path: str | None = None) -> ScoreResult:
        """Score one image from its :meth:`crops` (the raw output through the one monotone map onto the
        model's scale, see :func:`qfm_iqm.inference.score_result.image_result`)."""
        return self.score_crop_stacks([crops], [path])[0]

    def score_crop_stacks(self, stacks: Sequence[torch.Tensor], paths: Sequence[str | None]) -> list[ScoreResult]:
        """Score several images from their :meth:`crops` in one call of the network (what
        :func:`qfm_iqm.scoring.score_files` does); each result is that of :meth:`score_crops` on the
        image alone, up to float32 rounding (:func:`qfm_iqm.inference.predict.score_images`)."""
        outputs = score_images(self.network, [stack.to(self.device) for stack in stacks])
        return [image_result(score, spread, path, self.scale, self.interval)
                for (score, spread), path in zip(outputs, paths)]

    def score(self, images: ImageInput | Sequence[ImageInput]) -> ScoreResult | list[ScoreResult]:
        """Score one image, or each of a list (or of a Bx3xHxW tensor) -> a result or a list of them.

        Accepts paths, PIL images, numpy arrays (HxW, HxWx3/4; uint8 or float in [0, 1]) and tensors
        (3xHxW float in [0, 1]). Raises :class:`~qfm_iqm.data.images.ImageLoadError` for a file that
        cannot be read, ``ValueError``/``TypeError`` for unsupported arrays.
        """
        if isinstance(images, (list, tuple)) or (isinstance(images, torch.Tensor) and images.dim() == 4):
            return [self._score_one(image) for image in images]
        return self._score_one(images)

    def _score_one(self, image: ImageInput) -> ScoreResult:
        rgb, path = to_rgb_image(image)
        return self.score_crops(self.crops(rgb), path)

    def quality_map(self, image: ImageInput) -> np.ndarray:
        """Heat map (H, W) in [0, 1] of where the attention panel looks (1 = most attention;
        :func:`qfm_iqm.inference.quality_map.quality_map`)."""
        return quality_map(self.model, to_rgb_image(image)[0], self.preprocessing, self.grid, self.device)


def load_model(
    name_or_path: str | Path = DEFAULT_MODEL,
    device: torch.device | str = "cpu",
    grid: int | None = None,
    runtime: str = "auto",
    native: bool = False,
) -> Scorer:
    """Load a released model by name (see ``list_pretrained()``) or a trained checkpoint by path.

    ``grid``: crops per side of the test grid; by default the one the checkpoint records
    (``eval_grid``), else 3. Measured on 5 LIVEC splits (docs/scoring.md): 4 is about 0.01 SRCC better
    than 3 with every split model, and 1.7x slower. The checkpoint's ``interval``, when it records one,
    gives every score its calibrated ``low``/``high``.
    ``runtime``: ``"auto"`` (the default: ``"onnx"`` where it can run, i.e. on the CPU, else ``"torch"``),
    ``"torch"`` or ``"onnx"`` (onnxruntime on the CPU; the graph is exported on first use and cached).
    ``device`` is checked first (``ValueError`` for a misspelt one or one this machine lacks).
    Once a checkpoint's files have a cached graph, the onnx runtime loads it without building the eager
    model (or importing timm): faster and about 200 MB lighter; the eager model is built if a quality
    map asks for it. (:func:`qfm_iqm.inference.graph.load_graph_scorer` serves such a graph without torch at all.)
    ``native``: score photos at their own resolution. By default a photo larger than the scale the
    model's training data was rated at (its ``preprocessing.max_short_side``, 500 px for the released
    models) is first downscaled to it, so that its score does not depend on its pixel count.
    """
    scorer = _load_scorer(name_or_path, usable_device(device), grid, runtime)
    if native:
        scorer.preprocessing = scorer.preprocessing.without_viewing_scale()
    return scorer


def _load_scorer(name_or_path: str | Path, device: torch.device, grid: int | None, runtime: str) -> Scorer:
    """:func:`load_model` at the checkpoint's own preprocessing, on a device known to be usable."""
    path = resolve_model(name_or_path)
    onnx = resolve_runtime(runtime, device) == "onnx"
    key = None
    if onnx:
        info = read_checkpoint_json(path)
        threads = torch.get_num_threads()
        network = shipped_network(path, info, threads)  # the release's own graph
        if network is None:  # else one exported before for these very files (hashed once, before loading)
            key = checkpoint_key(path)
            network = cached_checkpoint_network(key, threads)
        if network is not None:
            return Scorer._from_graph(network, lambda: _load_for_inference(path, device)[0], score_scale(info),
                                      scoring_grid(info, grid), info, recorded_interval(info))
    model, info = _load_for_inference(path, device)
    scorer = Scorer(model, score_scale(info), device, scoring_grid(info, grid), info, recorded_interval(info), runtime)
    if onnx:
        remember_checkpoint_network(key, scorer.network, model)
    return scorer


def _load_for_inference(path: Path, device: torch.device | str) -> tuple[QFMIQM, dict]:
    """A checkpoint's model, checked and loaded, with the speed steps of :mod:`qfm_iqm.inference.speed`
    (same scores to float32 rounding), and its JSON."""
    from qfm_iqm.inference.checkpoint import load_checkpoint_model
    from qfm_iqm.inference.speed import for_inference

    model, info = load_checkpoint_model(path, device)
    return for_inference(model), info
