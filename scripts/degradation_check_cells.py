"""Add the degradation check, or the kinds it lacks, to finished protocol cells run before they existed.

    python scripts/degradation_check_cells.py --data-root ../shared/datasets/livec \\
        results/benchmark/livec-multistage/livec/deiqt results/benchmark/livec-multistage/livec/noise

For each ``split_<seed>/`` whose ``result.json`` has no ``degradation_check``, or one without some of
today's kinds, the split's saved model is checked on the same test photos the protocol would choose
(``check_photos`` with the split seed and the cell's ``degradation_photos``) for the kinds missing, and
they are added to ``result.json`` (the kinds already there are kept as they are, an earlier name of a
kind read and written as today's). Labels are not read.
Run the benchmark command again afterwards to refresh its report.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qfm_iqm.data.degradations import KINDS, LEGACY_KIND_NAMES
from qfm_iqm.data.registry import load_dataset
from qfm_iqm.data.splits import load_splits
from qfm_iqm.evaluation.degradation_check import check_photos, degradation_check
from qfm_iqm.inference.checkpoint import load_checkpoint_model
from qfm_iqm.training.config import TrainConfig
from qfm_iqm.training.feature_cache import frozen_backbone_features
from qfm_iqm.training.trainer import resolve_device
from qfm_iqm.utils.checkpoint import atomic_write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cells", nargs="+", type=Path)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--dataset", default=None,
                        help="registry name of the cells' dataset (default: the folder above each cell, as a "
                        "benchmark lays cells out in <output>/<dataset>/<method>)")
    args = parser.parse_args(argv)
    for cell in args.cells:
        method = json.loads((cell / "method.json").read_text())
        config = TrainConfig.from_record(method["config"])
        dataset = load_dataset(args.dataset or cell.resolve().parent.name, args.data_root)
        if dataset.name != method["dataset"]:
            raise SystemExit(f"{cell}: its method.json names dataset {method['dataset']}, not {dataset.name}; pass --dataset")
        device = resolve_device(config.device)
        for split in load_splits(cell / "splits.json", dataset):
            run_dir = cell / f"split_{split.seed}"
            result = json.loads((run_dir / "result.json").read_text())
            earlier = result.get("degradation_check") or {}
            done = {LEGACY_KIND_NAMES.get(kind, kind): check for kind, check in earlier.items()}
            missing = [kind for kind in KINDS if kind not in done]
            if not missing:
                continue
            model, _ = load_checkpoint_model(run_dir, device)
            photos = [dataset.records[i] for i in check_photos(split.test, config.degradation_photos, split.seed)]
            features = frozen_backbone_features(config, model, device)
            added = degradation_check(model, photos, config.eval_grid, device, kinds=missing, features=features,
                                      trained_kinds=config.ranked_kinds)
            merged = {**done, **added}
            order = [kind for kind in KINDS if kind in merged] + [kind for kind in merged if kind not in KINDS]
            result["degradation_check"] = {kind: merged[kind] for kind in order}  # a kind no longer known last
            atomic_write_json(run_dir / "result.json", result)
            print(f"{run_dir}: {added}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
