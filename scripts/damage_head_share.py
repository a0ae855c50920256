"""Which part of a model with a damage head orders a kind of damage: the head's penalty or the panel?

    python scripts/damage_head_share.py qfm-iqm-lite0-livec-v2-2 --data-root ../shared/datasets/livec \
        --check results/release/qfm_iqm_lite0_livec_v2_2/degradation_check.json \
        --output results/release/qfm_iqm_lite0_livec_v2_2/damage_head_share.json

A model's score is the attention panel's minus the damage head's penalty. On the photos of a committed
degradation check (``--check``; their labels are not read), damaged as the check damages them, this
reports per kind and strength step the share of photos whose penalty grows and whose panel score falls,
and per level the median penalty and panel score (normalised units: x100 for MOS).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from qfm_iqm.data.degradations import check_kinds, damaged_view, levels
from qfm_iqm.data.images import load_image
from qfm_iqm.data.registry import load_dataset
from qfm_iqm.data.transforms import grid_crops
from qfm_iqm.evaluation.degradation_check import records_named
from qfm_iqm.inference.checkpoint import load_checkpoint_model
from qfm_iqm.inference.predict import model_preprocessing
from qfm_iqm.inference.pretrained import resolve_model
from qfm_iqm.training.config import TrainConfig
from qfm_iqm.utils.checkpoint import atomic_write_json
from qfm_iqm.utils.seeds import path_seed


def step_shares(values: np.ndarray, growing: bool) -> list[float]:
    """Per strength step of ``values`` (photos, levels), the share of photos where the value grows (or falls)."""
    changes = np.diff(values, axis=1)
    return [round(float(np.mean(step > 0 if growing else step < 0)), 4) for step in changes.T]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="released model name or checkpoint")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--check", type=Path, required=True, help="a degradation check JSON naming its photos")
    parser.add_argument("--kinds", nargs="+", default=["colour_diffusion", "chromatic_aberration", "colour_quantisation",
                                                       "quantisation", "pixelation", "lens_blur"])
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    kinds = check_kinds(args.kinds)
    model, info = load_checkpoint_model(resolve_model(args.model), "cpu")
    if model.damage_head is None:
        raise SystemExit(f"{args.model} has no damage head: its score is the panel's alone")
    grid, pre = TrainConfig.from_checkpoint(info).eval_grid, model_preprocessing(model)
    try:
        photos = records_named(load_dataset("livec", args.data_root).records, json.loads(args.check.read_text())["photos"])
    except ValueError as error:
        raise SystemExit(f"{args.check}: {error} ({args.data_root})") from None
    penalty = {kind: np.empty((len(photos), levels(kind) + 1)) for kind in kinds}
    panel = {kind: np.empty((len(photos), levels(kind) + 1)) for kind in kinds}
    with torch.inference_mode():
        for row, record in enumerate(photos):
            path = record.path
            image, seed = load_image(path), path_seed(path)

            def parts(kind: str | None, level: int) -> tuple[float, float]:
                output = model(grid_crops(damaged_view(image, pre, kind, level, seed), pre, grid))
                head = output.damage.mean().item()
                return head, output.score.mean().item() + head

            original = parts(None, 0)
            for kind in kinds:
                for level in range(levels(kind) + 1):
                    penalty[kind][row, level], panel[kind][row, level] = original if level == 0 else parts(kind, level)
    report = {kind: {"penalty_grows": step_shares(penalty[kind], growing=True),
                     "panel_falls": step_shares(panel[kind], growing=False),
                     "median_penalty": [round(float(v), 4) for v in np.median(penalty[kind], axis=0)],
                     "median_panel": [round(float(v), 4) for v in np.median(panel[kind], axis=0)]}
              for kind in kinds}
    atomic_write_json(args.output, {
        "command": "python scripts/damage_head_share.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "model": args.model, "photos": len(photos), "kinds": report, "seconds": round(time.perf_counter() - start, 1)})
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
