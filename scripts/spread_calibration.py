"""Does the panel spread ("uncertainty") tell the size of the error? Per benchmark cell and split,
from the cells' ``predictions.csv`` (normalised scale); writes ``spread_calibration.csv`` and prints
medians over splits.

    python scripts/spread_calibration.py results/benchmark/livec-lite0
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from qfm_iqm.evaluation.metrics import spread_calibration
from qfm_iqm.utils.checkpoint import atomic_write_csv


def main(benchmark_dir: str) -> None:
    root = Path(benchmark_dir)
    rows = []
    for path in sorted(root.glob("*/*/split_*/predictions.csv")):
        frame = pd.read_csv(path)
        if "uncertainty" not in frame or not frame["uncertainty"].fillna(0).any():
            continue  # baselines have no spread (0 or empty)
        dataset, method, split = path.parts[-4:-1]
        # files written before score/uncertainty moved to the raw-label scale hold the normalised ones as these
        score, spread = ("score_normalised", "uncertainty_normalised") if "score_normalised" in frame else ("score", "uncertainty")
        rows.append({"dataset": dataset, "method": method, "seed": int(split.removeprefix("split_")),
                     **spread_calibration(frame[score], frame["label"], frame[spread])})
    if not rows:
        raise SystemExit(f"no predictions.csv with a spread under {root}")
    table = pd.DataFrame(rows)
    atomic_write_csv(root / "spread_calibration.csv", [list(table.columns), *table.round(6).itertuples(index=False)])
    print(table.groupby(["dataset", "method"]).median(numeric_only=True).drop(columns="seed").round(4).to_string())


if __name__ == "__main__":
    main(*sys.argv[1:])
