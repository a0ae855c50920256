"""Choose training options on validation data only: train each variant on the fit part of a split's
training part and record its learning curve on the validation part (the test part is never scored).

    python scripts/validation_sweep.py --config configs/validation/livec_lite0.yaml --output results/validation/NAME

The config names a dataset, split seeds (the protocol's splits), shared training options and variants::

    dataset: livec
    seeds: [0, 1]
    train: {freeze_backbone: true, model: {multi_stage: true}}
    variants:
      - {name: base}
      - {name: rho-0.6, train: {mode: qfm, noise_strength: 0.6}}
      - {name: rho-0.9, seeds: [0], train: {mode: qfm, noise_strength: 0.9}}  # its own split seeds

Writes ``curves.csv`` (one row per variant, seed and epoch: train/validation SRCC, PLCC, RMSE and
the losses; the last epoch's row also the degradation check on ``degradation_photos`` validation
photos, and the validation SRCC with each test grid of the config's ``grids``, ``whole`` for a
whole-image pass) and ``summary.csv`` (per variant: median over seeds of the last epoch's validation SRCC
and PLCC, of the best epoch's, and of the degradation check). ``unlabeled_dir`` pools are passed on. Variants already in ``curves.csv`` are not run again. Backbone
outputs of a frozen backbone are computed once and shared by every variant (one process).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from qfm_iqm.experiments.benchmark.command_speed import WHOLE
from qfm_iqm.experiments.benchmark.config import _merge
from qfm_iqm.data.registry import load_dataset
from qfm_iqm.data.splits import make_split
from qfm_iqm.evaluation.degradation_check import check_photos, degradation_check
from qfm_iqm.evaluation.metrics import compute_metrics
from qfm_iqm.inference.predict import predict_records, predict_whole_images, score_tokens
from qfm_iqm.experiments.protocol import config_for_dataset, fit_model, unlabelled_records, validation_part
from qfm_iqm.training.trainer import resolve_device
from qfm_iqm.training.config import TrainConfig
from qfm_iqm.training.feature_cache import frozen_backbone_features
from qfm_iqm.utils.allocator import reuse_freed_memory
from qfm_iqm.utils.checkpoint import atomic_write_csv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args(argv)
    reuse_freed_memory()
    spec = yaml.safe_load(Path(args.config).read_text())
    dataset = load_dataset(spec["dataset"], args.data_root)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    curves_file = output / "curves.csv"
    rows = list(csv.DictReader(curves_file.open())) if curves_file.exists() else []
    done = {(r["variant"], int(r["seed"])) for r in rows}
    for variant in spec["variants"]:
        config = config_for_dataset(TrainConfig.from_dict(_merge(spec.get("train", {}), variant.get("train", {}))), dataset)
        for seed in variant.get("seeds", spec["seeds"]):
            if (variant["name"], seed) in done:
                continue
            split = make_split(dataset, seed)
            fit, val = validation_part(config, dataset, split)
            val_records = [dataset.records[i] for i in val]
            extra = unlabelled_records(config, val_records + [dataset.records[i] for i in split.test])
            start = time.perf_counter()
            with tempfile.TemporaryDirectory() as run_dir:
                model, history, _ = fit_model(
                    config, [dataset.records[i] for i in fit], Path(run_dir), extra, progress=False, resume=False,
                    val_records=val_records,
                )
            seconds = time.perf_counter() - start
            photos = [dataset.records[i] for i in check_photos(val, config.degradation_photos, seed)]
            device = resolve_device(config.device)
            features = frozen_backbone_features(config, model, device)  # None unless the backbone is frozen
            check = degradation_check(model, photos, config.eval_grid, device, features=features,
                                       trained_kinds=config.ranked_kinds) if photos else {}
            for epoch in history:
                rows.append({"variant": variant["name"], "seed": seed, "run_seconds": round(seconds, 1),
                             **{k: (round(v, 5) if isinstance(v, float) else v) for k, v in epoch.items()}})
            rows[-1].update({f"ordered_{kind}": result["ordered"] for kind, result in check.items()})
            rows[-1].update({f"steps_{kind}": "/".join(f"{step:.2f}" for step in result["steps"]) for kind, result in check.items()})
            labels = np.array([record.label for record in val_records])
            for grid in spec.get("grids", []):  # the test grid is a choice too: validation SRCC per grid
                if grid == WHOLE:
                    scores = predict_whole_images(model, val_records, device)
                elif features is None:
                    scores = predict_records(model, val_records, grid, device).scores
                else:
                    scores = np.array([score_tokens(model, features.grid(r, grid).float()) for r in val_records])
                rows[-1][f"val_srcc_grid{grid}"] = round(compute_metrics(scores, labels)["srcc"], 5)
            last = history[-1]
            print(f"{variant['name']} seed {seed}: val SRCC {last['val_srcc']:.4f} PLCC {last['val_plcc']:.4f} "
                  f"(train SRCC {last['train_srcc']:.4f}) {seconds:.0f} s; degradation check on validation photos: "
                  + ", ".join(f"{kind} {result['ordered']:.2f}" for kind, result in check.items()), flush=True)
            write(output, rows)
    write(output, rows)
    return 0


def write(output: Path, rows: list[dict]) -> None:
    """``curves.csv`` and the per-variant ``summary.csv``."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    atomic_write_csv(output / "curves.csv", [columns] + [[r.get(c, "") for c in columns] for r in rows])
    kinds = [c.removeprefix("ordered_") for c in columns if c.startswith("ordered_")]
    grids = [c for c in columns if c.startswith("val_srcc_grid")]
    summary = [["variant", "seeds", "val_srcc_last", "val_plcc_last", "train_srcc_last", "val_srcc_best", "best_epoch",
                *(f"ordered_{kind}" for kind in kinds), *grids]]
    for name in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == name]
        seeds = sorted({int(r["seed"]) for r in mine})
        by_seed = [[r for r in mine if int(r["seed"]) == s] for s in seeds]
        last = [rs[-1] for rs in by_seed]
        epochs = sorted({int(r["epoch"]) for r in mine})
        per_epoch = {e: np.median([float(r["val_srcc"]) for r in mine if int(r["epoch"]) == e]) for e in epochs}
        best = max(per_epoch, key=per_epoch.get)
        summary.append([name, " ".join(map(str, seeds)),
                        f"{np.median([float(r['val_srcc']) for r in last]):.4f}",
                        f"{np.median([float(r['val_plcc']) for r in last]):.4f}",
                        f"{np.median([float(r['train_srcc']) for r in last]):.4f}",
                        f"{per_epoch[best]:.4f}", best,
                        *(_median_of(last, f"ordered_{kind}") for kind in kinds), *(_median_of(last, g) for g in grids)])
    atomic_write_csv(output / "summary.csv", summary)
    plot_curves(output / "curves.png", rows)


def _median_of(rows: list[dict], key: str) -> str:
    """Median of a column over the rows that have it (``""`` when none has)."""
    values = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
    return f"{np.median(values):.3f}" if values else ""


def plot_curves(path: Path, rows: list[dict]) -> None:
    """Train vs validation SRCC per epoch, one panel per variant (first seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["variant"] for r in rows))
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], names):
        mine = [r for r in rows if r["variant"] == name]
        seed = mine[0]["seed"]
        mine = [r for r in mine if r["seed"] == seed]
        epochs = [int(r["epoch"]) for r in mine]
        for key, label in (("train_srcc", "fit part"), ("val_srcc", "validation part")):
            ax.plot(epochs, [float(r[key]) for r in mine], marker=".", label=label)
        ax.set_title(f"{name} (split {seed})", fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("SRCC")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
