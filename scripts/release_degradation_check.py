"""The degradation check of a released LIVEC model on photos it did not fit: its calibration part.

    python scripts/release_degradation_check.py qfm-iqm-lite0-livec-v2-1 --data-root ../shared/datasets/livec \
        --photos 40 --output results/release/qfm_iqm_lite0_livec_v2_1/degradation_check.json

A release trained with ``train --all`` fits every LIVEC image but a seeded validation part (its
``val_fraction``), which calibrates its score range. Those photos are remade here from the recorded
settings, ``--photos`` of them are drawn (seeded), and every degradation kind is checked on them, as
users get scores; kinds its ranking loss never trained on are marked ``"trained": false``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from qfm_iqm.data.degradations import KINDS
from qfm_iqm.data.registry import load_dataset
from qfm_iqm.data.splits import Split
from qfm_iqm.evaluation.degradation_check import check_photos, degradation_check
from qfm_iqm.experiments.protocol import config_for_dataset, validation_part
from qfm_iqm.inference.pretrained import resolve_model
from qfm_iqm.inference.checkpoint import load_checkpoint_model
from qfm_iqm.training.config import TrainConfig
from qfm_iqm.utils.checkpoint import atomic_write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="released model name or checkpoint")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--photos", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    model, info = load_checkpoint_model(resolve_model(args.model), "cpu")
    config = TrainConfig.from_checkpoint(info)
    dataset = load_dataset("livec", args.data_root)
    fit, calibration = validation_part(config_for_dataset(config, dataset), dataset,
                                       Split(0, tuple(range(len(dataset))), ()))
    if len(fit) != info["training_data"]["train_size"]:
        raise SystemExit(f"{args.model} fitted {info['training_data']['train_size']} images, not the {len(fit)} "
                         "this remade partition leaves: it was not made by train --all on this LIVEC copy")
    photos = [dataset.records[i] for i in check_photos(calibration, args.photos, args.seed)]
    check = degradation_check(model, photos, config.eval_grid, kinds=KINDS, trained_kinds=config.ranked_kinds)
    atomic_write_json(args.output, {
        "command": "python scripts/release_degradation_check.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "model": args.model, "photos": [str(p.path.name) for p in photos], "check": check,
        "seconds": round(time.perf_counter() - start, 1)})
    print(json.dumps(check, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
