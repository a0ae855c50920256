"""Ablation of the test-time crop grid: re-score the test part of each benchmark split with the
split's trained model, for several grid sizes, and record accuracy and scoring time.

    python scripts/test_crop_grid.py --dataset livec --splits CELL/splits.json \\
        --models RUN_DIR --grids 1 2 3 4 5 --label noise-only --output FILE.csv

``RUN_DIR`` holds ``split_<seed>/`` checkpoint folders (as written by ``qfm-iqm evaluate``); rows
are appended to ``FILE.csv`` (dataset, label, seed, grid, crops, srcc, plcc, ms_per_image).
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

from qfm_iqm.data.registry import load_dataset
from qfm_iqm.data.splits import load_splits
from qfm_iqm.inference.predict import predict_records
from qfm_iqm.experiments.protocol import metrics_on
from qfm_iqm.inference.checkpoint import load_checkpoint_model
from qfm_iqm.inference.speed import for_inference
from qfm_iqm.utils.allocator import reuse_freed_memory

FIELDS = ["dataset", "label", "seed", "grid", "crops", "srcc", "plcc", "ms_per_image"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--root", default=None)
    parser.add_argument("--splits", required=True, type=Path)
    parser.add_argument("--models", required=True, type=Path)
    parser.add_argument("--grids", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--label", required=True)
    parser.add_argument("--output", required=True, type=Path)
    args = parser.parse_args()
    reuse_freed_memory()
    dataset = load_dataset(args.dataset, args.root)
    new_file = not args.output.exists()
    with open(args.output, "a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        if new_file:
            writer.writeheader()
        for split in load_splits(args.splits, dataset):
            model = for_inference(load_checkpoint_model(args.models / f"split_{split.seed}")[0])
            test = [dataset.records[i] for i in split.test]
            for grid in args.grids:
                start = time.perf_counter()
                predictions = predict_records(model, test, grid=grid)
                seconds = time.perf_counter() - start
                metrics = metrics_on(dataset, split.test, predictions)
                writer.writerow({"dataset": dataset.name, "label": args.label, "seed": split.seed, "grid": grid,
                                 "crops": grid * grid, "srcc": round(metrics["srcc"], 6),
                                 "plcc": round(metrics["plcc"], 6), "ms_per_image": round(1000 * seconds / len(test), 1)})
                handle.flush()
                print(args.label, split.seed, grid, round(metrics["srcc"], 4), flush=True)


if __name__ == "__main__":
    main()
