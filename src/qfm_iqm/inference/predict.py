"""Deterministic prediction: each image is scored as the mean over a fixed grid of crops."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from qfm_iqm.data.images import load_image
from qfm_iqm.data.records import ImageRecord
from qfm_iqm.data.torch_datasets import EvalCrops
from qfm_iqm.data.transforms import Preprocessing, prepare_image
from qfm_iqm.models.decoder import PanelOutput
from qfm_iqm.inference.score_result import panel_scores
from qfm_iqm.utils.distributed import all_gather_uneven, is_main, shard

if TYPE_CHECKING:  # the model classes import timm; scoring an exported graph needs neither
    from qfm_iqm.models.qfm import QFMIQM

# What scores a crop stack: the eager model, or its exported graph (qfm_iqm.inference.runtime.OnnxNetwork).
CropNetwork = Callable[[torch.Tensor], PanelOutput]


class BackboneOutputs(Protocol):
    """A frozen backbone's stored outputs (``c`` then the tokens, see ``QFMIQM.encode_cached``) for the test
    crops of a record, of the record damaged by ``kind`` at ``level`` when given (the training layer's
    feature cache is one)."""

    def grid(self, record: ImageRecord, grid: int, kind: str | None = None, level: int = 0) -> torch.Tensor:
        """(grid*grid, 1 + N, C): the outputs of the record's ``grid x grid`` test crops."""
        ...


@dataclass
class Predictions:
    """Normalised scores ([0, 1], higher is better) and panel spreads, in input order."""

    scores: np.ndarray
    spreads: np.ndarray


def model_preprocessing(model: QFMIQM) -> Preprocessing:
    """The preprocessing a model was trained with (stored in its config)."""
    return Preprocessing.from_dict(model.config.preprocessing)


@torch.inference_mode()
def score_crops(model: CropNetwork, crops: torch.Tensor) -> tuple[float, float]:
    """Score one image from its crop stack (n, 3, S, S): mean score and mean panel spread."""
    return score_images(model, [crops])[0]


@torch.inference_mode()
def score_images(model: CropNetwork, stacks: Sequence[torch.Tensor]) -> list[tuple[float, float]]:
    """Score several images from their crop stacks in one call of ``model``: per image, the mean score
    and mean panel spread over its own crops. The network scores every crop on its own (eval mode), so
    an image's numbers are those of :func:`score_crops` on it alone, up to float32 rounding where the
    batch size changes how a kernel sums (tests/test_scoring.py, tests/test_onnx.py)."""
    if not stacks:
        return []
    output = model(torch.cat(list(stacks)) if len(stacks) > 1 else stacks[0])
    return panel_scores(output.member_scores.float().cpu().numpy(), [len(stack) for stack in stacks])


@torch.inference_mode()
def score_tokens(model: QFMIQM, outputs: torch.Tensor) -> float:
    """Score one image from a frozen backbone's cached outputs for its crops (n, 1 + N, C): the mean
    score, the same number as :func:`score_crops` on the crops themselves (up to the float16 storage)."""
    return model.forward_cached(outputs).score.float().mean().item()


def whole_image(image: Image.Image, pre: Preprocessing) -> torch.Tensor:
    """An image as one input of the network (1, 3, H, W), prepared as for its crops: a whole-image pass,
    for backbones that take any input size (CNNs)."""
    return pre.to_tensor_normalized(prepare_image(image, pre)).unsqueeze(0)


@torch.inference_mode()
def predict_whole_images(model: QFMIQM, records: list[ImageRecord], device: torch.device | str = "cpu") -> np.ndarray:
    """Normalised scores of a whole-image pass (:func:`whole_image`) of each record, in input order."""
    if model.backbone.kind != "cnn":
        raise ValueError(f"a {model.backbone.kind} backbone takes crops of a fixed size: no whole-image pass")
    model.eval()
    pre = model_preprocessing(model)
    return np.array([score_crops(model, whole_image(load_image(record.path), pre).to(device))[0] for record in records])


@torch.inference_mode()
def predict_records(
    model: QFMIQM,
    records: list[ImageRecord],
    grid: int = 3,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    progress: bool = False,
    features: BackboneOutputs | None = None,
) -> Predictions:
    """Score labelled records with the model in eval mode; from ``features``, the model's frozen
    backbone's cached outputs, when given (the same numbers, the backbone run once per crop).

    Under ``torchrun`` every process scores its share of the records (every ``world``-th one) and
    all processes return the predictions of all records, each exactly once, in input order. Each image
    is one forward pass; the scores stay on ``device`` until the last one (no wait per image).
    """
    model.eval()
    positions = shard(range(len(records)))
    if features is None:
        dataset = EvalCrops(records, model_preprocessing(model), grid)
        loader = DataLoader(dataset, batch_size=None, sampler=positions, num_workers=num_workers,
                            pin_memory=torch.device(device).type == "cuda")
        panels = (model(crops.to(device, non_blocking=True)) for crops, _, _ in loader)
    else:
        panels = (model.forward_cached(features.grid(records[i], grid).to(device, non_blocking=True).float())
                  for i in positions)
    means = []  # (score, spread) of each image, on the device
    bar = tqdm(total=len(positions), desc="scoring", disable=not (progress and is_main()), leave=False)
    for panel in panels:
        means.append(torch.stack([panel.score.float().mean(), panel.spread.float().mean()]))
        bar.update()
    bar.close()
    scored = torch.stack(means).cpu().double() if means else torch.empty(0, 2, dtype=torch.float64)
    local = torch.cat([torch.tensor(positions, dtype=torch.float64).unsqueeze(1), scored], dim=1)
    rows = torch.cat(all_gather_uneven(local))
    scores = np.empty(len(records))
    spreads = np.empty(len(records))
    order = rows[:, 0].long().numpy()
    scores[order], spreads[order] = rows[:, 1].numpy(), rows[:, 2].numpy()
    return Predictions(scores, spreads)
