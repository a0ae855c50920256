"""The degradation check: does a model rate a photo lower the more it is damaged?

Each photo is damaged at every level of every degradation kind at the scale the model sees it
(:func:`qfm_iqm.data.degradations.damaged_view`, as in training) and scored as users get scores: at the model's viewing scale and through the score map. Of every (milder, stronger) pair of
levels of one photo and kind, the model is right when the milder one scores higher (a tie counts as
wrong). The result is, per kind, the fraction of all pairs ordered right and of the neighbour pairs of
each strength step (level 0 vs 1, 1 vs 2, ...), and whether the ranking loss trained on the kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np
import torch

from qfm_iqm.data.degradations import KINDS, damaged_view, levels
from qfm_iqm.data.images import load_image
from qfm_iqm.data.records import ImageRecord
from qfm_iqm.data.transforms import grid_crops
from qfm_iqm.inference.predict import BackboneOutputs, model_preprocessing, score_crops, score_tokens
from qfm_iqm.inference.score_map import bounded
from qfm_iqm.models.qfm import QFMIQM
from qfm_iqm.utils.seeds import path_seed


def ordered_fraction(scores: np.ndarray) -> float:
    """Share of (milder, stronger) pairs ordered right, from ``scores`` (photos, levels) with level 0 first."""
    pairs = [(scores[:, i] > scores[:, j]) for i, j in combinations(range(scores.shape[1]), 2)]
    return float(np.mean(pairs))


def step_fractions(scores: np.ndarray) -> list[float]:
    """Per strength step ``k`` (level ``k - 1`` vs ``k``), the share of photos whose milder version scores higher."""
    return [float(np.mean(scores[:, k - 1] > scores[:, k])) for k in range(1, scores.shape[1])]


@torch.inference_mode()
def degradation_check(
    model: QFMIQM,
    records: Sequence[ImageRecord],
    grid: int = 3,
    device: torch.device | str = "cpu",
    kinds: Sequence[str] = KINDS,
    features: BackboneOutputs | None = None,
    trained_kinds: Sequence[str] = (),
) -> dict[str, dict]:
    """``{kind: {"ordered": fraction of pairs ordered right, "pairs": number of pairs, "steps": fraction
    ordered right per strength step, "trained": whether the kind is one of ``trained_kinds``}}`` on
    ``records``' photos (their labels are not read). Each photo's noise is seeded by its path. With ``features``
    (the model's frozen backbone and its cache) the backbone outputs of the damaged photos are
    computed once and shared by every model on that backbone."""
    model.eval()
    pre = model_preprocessing(model)
    scores = {kind: np.empty((len(records), levels(kind) + 1)) for kind in kinds}
    for row, record in enumerate(records):
        if features is not None:
            def score(kind: str | None, level: int) -> float:
                return score_tokens(model, features.grid(record, grid, kind, level).to(device).float())
        else:
            image, seed = load_image(record.path), path_seed(record.path)

            def score(kind: str | None, level: int) -> float:
                damaged = damaged_view(image, pre, kind, level, seed)
                return score_crops(model, grid_crops(damaged, pre, grid).to(device))[0]

        original = score(None, 0)
        for kind in kinds:
            scores[kind][row, 0] = original
            for level in range(1, levels(kind) + 1):
                scores[kind][row, level] = score(kind, level)
    pairs_per_photo = {kind: levels(kind) * (levels(kind) + 1) // 2 for kind in kinds}
    reported = {kind: bounded(raw) for kind, raw in scores.items()}  # the scores users get
    return {
        kind: {"ordered": round(ordered_fraction(reported[kind]), 4), "pairs": len(records) * pairs_per_photo[kind],
               "steps": [round(step, 4) for step in step_fractions(reported[kind])], "trained": kind in trained_kinds}
        for kind in kinds
    }


def check_photos(test: Sequence[int], count: int, seed: int) -> list[int]:
    """A seeded choice of ``count`` indices of a split's test part (all of them when it has fewer)."""
    if count >= len(test):
        return list(test)
    return sorted(np.random.default_rng(seed).choice(list(test), size=count, replace=False).tolist())


def records_named(records: Sequence[ImageRecord], names: Sequence[str]) -> list[ImageRecord]:
    """The records whose file names are ``names`` (a check's ``"photos"``), in that order.

    Raises:
        ValueError: a name no record has (the message counts them and names the first).
    """
    by_name = {record.path.name: record for record in records}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise ValueError(f"{len(missing)} of the check's photos are not in this dataset (first: {missing[0]})")
    return [by_name[name] for name in names]
