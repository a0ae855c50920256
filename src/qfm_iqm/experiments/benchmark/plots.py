"""Benchmark figures (PNG, matplotlib's non-interactive backend), one set per dataset:

- ``<dataset>_scatter.png``: predicted score vs. label on each method's median split, with the
  4-parameter logistic fit used for PLCC (logistic);
- ``<dataset>_splits.png``: SRCC of every split per method (the spread behind the medians);
- ``<dataset>_training.png``: training loss per epoch of the trained methods (one line per split);
- ``<dataset>_ablation.png``: median SRCC per method, bars from the lowest to the highest split.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402

from qfm_iqm.experiments.benchmark.config import BenchmarkConfig  # noqa: E402
from qfm_iqm.experiments.benchmark.outcome import BenchmarkOutcome  # noqa: E402
from qfm_iqm.evaluation.metrics import fit_logistic4, logistic4  # noqa: E402


def _save(figure: plt.Figure, path: Path, title: str) -> None:
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _method_axis(axis: plt.Axes, cells: list[tuple[str, str, dict]], ylabel: str) -> None:
    axis.set_xticks(range(len(cells)), [label for _, label, _ in cells], rotation=30, ha="right", fontsize=8)
    axis.set_ylabel(ylabel)


def _median_run(cell: dict) -> dict:
    """The split whose SRCC is the median one (the lower middle for an even count)."""
    runs = sorted(cell["runs"], key=lambda run: run["metrics"]["srcc"])
    return runs[(len(runs) - 1) // 2]


def _read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return np.array([float(r["score"]) for r in rows]), np.array([float(r["raw_label"]) for r in rows])


def _finished(config: BenchmarkConfig, outcome: BenchmarkOutcome, dataset: str) -> list[tuple[str, str, dict]]:
    return [(m.name, m.label, outcome.cells[dataset, m.name]) for m in config.methods if outcome.cells.get((dataset, m.name))]


def scatter_plot(cells: list[tuple[str, str, dict]], cell_root: Path, path: Path, title: str) -> None:
    columns = min(3, len(cells))
    rows = math.ceil(len(cells) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.8 * rows), squeeze=False)
    for axis, (name, label, cell) in zip(axes.flat, cells):
        run = _median_run(cell)
        scores, raw = _read_predictions(cell_root / name / f"split_{run['seed']}" / "predictions.csv")
        axis.scatter(scores, raw, s=6, alpha=0.5)
        grid = np.linspace(scores.min(), scores.max(), 200)
        axis.plot(grid, logistic4(grid, *fit_logistic4(scores, raw)), color="C3", linewidth=1.5)
        axis.set_title(f"{label}\nseed {run['seed']}: SRCC {run['metrics']['srcc']:.3f}", fontsize=9)
        axis.set_xlabel("predicted score")
        axis.set_ylabel("label (raw)")
    for axis in list(axes.flat)[len(cells):]:
        axis.axis("off")
    _save(figure, path, title)


def splits_plot(cells: list[tuple[str, str, dict]], path: Path, title: str) -> None:
    figure, axis = plt.subplots(figsize=(1.2 * len(cells) + 2.5, 3.8))
    for x, (_, _, cell) in enumerate(cells):
        values = [run["metrics"]["srcc"] for run in cell["runs"]]
        axis.scatter(np.full(len(values), x) + np.linspace(-0.12, 0.12, len(values)), values, s=18, alpha=0.8)
        axis.hlines(np.median(values), x - 0.25, x + 0.25, color="black")
    _method_axis(axis, cells, "SRCC per split (line: median)")
    _save(figure, path, title)


def training_plot(cells: list[tuple[str, str, dict]], cell_root: Path, path: Path, title: str) -> bool:
    """Loss curves of the trained methods; ``False`` when no method has a training history."""
    curves = []
    for colour, (name, label, cell) in enumerate(cells):
        for k, run in enumerate(cell["runs"]):
            result = cell_root / name / f"split_{run['seed']}" / "result.json"
            history = json.loads(result.read_text()).get("history") if result.exists() else None
            if history:
                curves.append((colour, label if k == 0 else None, [e["epoch"] for e in history], [e["total"] for e in history]))
    if not curves:
        return False
    figure, axis = plt.subplots(figsize=(6, 4))
    for colour, label, epochs, losses in curves:
        axis.plot(epochs, losses, color=f"C{colour}", alpha=0.7, label=label)
    axis.set_xlabel("epoch")
    axis.set_ylabel("training loss (mean over the epoch)")
    axis.set_yscale("log")
    axis.legend(fontsize=8)
    _save(figure, path, title)
    return True


def ablation_plot(cells: list[tuple[str, str, dict]], path: Path, title: str) -> None:
    figure, axis = plt.subplots(figsize=(1.2 * len(cells) + 2.5, 3.8))
    stats = [cell["summary"]["srcc"] for _, _, cell in cells]
    medians = np.array([s["median"] for s in stats])
    low = medians - np.array([s["min"] for s in stats])
    high = np.array([s["max"] for s in stats]) - medians
    axis.bar(range(len(cells)), medians, yerr=[low, high], capsize=4, color=[f"C{i}" for i in range(len(cells))])
    for x, value in enumerate(medians):
        axis.text(x, value, f"{value:.3f}", ha="center", va="bottom", fontsize=8)
    bottom = max(0.0, float((medians - low).min()) - 0.05)
    axis.set_ylim(bottom, min(1.0, float((medians + high).max()) + 0.03))
    _method_axis(axis, cells, "median SRCC (bars: min to max split)")
    _save(figure, path, title)


def write_plots(config: BenchmarkConfig, outcome: BenchmarkOutcome, output_dir: Path) -> list[Path]:
    """Draw every figure for which results exist into ``output_dir / "plots"``; returns the files."""
    plot_dir = output_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for spec in config.datasets:
        key = spec.id
        cells = _finished(config, outcome, key)
        if not cells:
            continue
        cell_root = output_dir / key
        scatter_plot(cells, cell_root, plot_dir / f"{key}_scatter.png", f"{key}: prediction vs. label")
        splits_plot(cells, plot_dir / f"{key}_splits.png", f"{key}: SRCC per split")
        ablation_plot(cells, plot_dir / f"{key}_ablation.png", f"{key}: median SRCC per method")
        written += [plot_dir / f"{key}_{kind}.png" for kind in ("scatter", "splits", "ablation")]
        if training_plot(cells, cell_root, plot_dir / f"{key}_training.png", f"{key}: training loss"):
            written.append(plot_dir / f"{key}_training.png")
    return written
