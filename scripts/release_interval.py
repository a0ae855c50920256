"""The score interval a released model records, from the protocol cell of its recipe.

    python scripts/release_interval.py results/benchmark/livec-multistage/livec/qfm-rank

Each split of that cell calibrated a 90% split-conformal interval on its validation part (a model
trained on the other 80% of the training part) and measured its coverage on the test part. The
released model trains on every image, so no image is left to calibrate it on; it records the median
of the splits' half-widths, with the total number of calibration images behind them. Prints the
``interval`` JSON entry (normalised [0, 1] scale).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(cell: str) -> int:
    runs = json.loads((Path(cell) / "results.json").read_text())["runs"]
    intervals = [run["interval"] for run in runs if "interval" in run]
    if not intervals:
        raise SystemExit(f"{cell}: no split recorded an interval (was val_fraction 0?)")
    coverage = {interval["coverage_target"] for interval in intervals}
    if len(coverage) != 1:
        raise SystemExit(f"{cell}: splits calibrated different coverages {sorted(coverage)}")
    print(json.dumps({
        "coverage": coverage.pop(),
        "quantile": float(np.median([interval["quantile"] for interval in intervals])),
        "scaled": False,
        "calibration_size": int(sum(interval["calibration_size"] for interval in intervals)),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
