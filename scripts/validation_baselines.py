"""The feature baselines on the same validation parts as scripts/validation_sweep.py: each regressor is
fitted on a split's fit part (its own hyper-parameters by cross-validation inside it) and scored on the
validation part, so trained variants can be compared with them without touching a test part.

    python scripts/validation_baselines.py --data-root ../shared/datasets/livec --seeds 0 1 \\
        --baselines ridge-stages kernel-ridge-stages \\
        --features-dir results/benchmark/livec-multistage/livec --output results/validation/livec-lite0/baselines.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qfm_iqm.data.registry import load_dataset
from qfm_iqm.data.splits import Split, make_split
from qfm_iqm.experiments.baselines import get_baseline, regress_on_split
from qfm_iqm.evaluation.metrics import compute_metrics
from qfm_iqm.experiments.protocol import validation_part
from qfm_iqm.training.config import TrainConfig
from qfm_iqm.utils.checkpoint import atomic_write_csv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="livec")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--baselines", nargs="+", required=True)
    parser.add_argument("--features-dir", type=Path, required=True, help="where features-<set>.npy are (or go)")
    parser.add_argument("--val-fraction", type=float, default=TrainConfig.val_fraction)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    dataset = load_dataset(args.dataset, args.data_root)
    labels = dataset.labels()
    config = TrainConfig(val_fraction=args.val_fraction)
    rows = [["baseline", "seed", "fit_size", "val_size", "val_srcc", "val_plcc", "val_rmse", "regressor"]]
    for name in args.baselines:
        baseline = get_baseline(name)
        features = baseline.cached_features(dataset, args.features_dir)
        for seed in args.seeds:
            fit, val = validation_part(config, dataset, make_split(dataset, seed))
            scores, chosen = regress_on_split(features, labels, Split(seed, fit, val), baseline.candidates)
            metrics = compute_metrics(scores, labels[list(val)])
            rows.append([name, seed, len(fit), len(val), f"{metrics['srcc']:.4f}", f"{metrics['plcc']:.4f}",
                         f"{metrics['rmse']:.4f}", repr(chosen).replace(", blocks=(16, 24, 40, 80, 112, 192, 320, 1280)", "")])
            print(*rows[-1], flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(args.output, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
