"""The benchmark's report: per-split and summary CSVs, a JSON of everything, a Markdown table, plots."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from qfm_iqm.experiments.benchmark.config import BenchmarkConfig
from qfm_iqm.experiments.benchmark.outcome import BenchmarkOutcome
from qfm_iqm.evaluation.metrics import METRIC_KEYS
from qfm_iqm.experiments.protocol import environment
from qfm_iqm.utils.checkpoint import atomic_write_csv, atomic_write_json, atomic_write_text


def split_rows(outcome: BenchmarkOutcome) -> list[list]:
    """One row per (dataset, method, seed): the split's metrics."""
    rows = []
    for (dataset, method), cell in outcome.cells.items():
        for run in (cell or {}).get("runs", []):
            rows.append([dataset, method, run["seed"], *(f"{run['metrics'][k]:.6f}" for k in METRIC_KEYS)])
    return rows


def summary_rows(config: BenchmarkConfig, outcome: BenchmarkOutcome) -> list[list]:
    """One row per (dataset, method): number of splits, then median, mean and std of each metric."""
    labels = {m.name: m.label for m in config.methods}
    rows = []
    for (dataset, method), cell in outcome.cells.items():
        if cell is None:
            continue
        stats = cell["summary"]
        values = [f"{stats[k][s]:.6f}" for k in METRIC_KEYS for s in ("median", "mean", "std")]
        rows.append([dataset, method, labels[method], len(cell["runs"]), *values])
    return rows


def pooled_degradation_check(cell: dict) -> dict[str, dict]:
    """Per degradation kind, over every split of a cell that ran the check: ``ordered`` (the share of
    pairs ordered right), ``weakest_step`` (the lowest share of neighbour pairs ordered right of any
    strength step, for checks that record steps) and ``trained`` (whether the ranking loss trained on it;
    ``None`` for checks made before it was recorded)."""
    pooled: dict[str, dict] = {}
    for run in cell.get("runs", []):
        for kind, check in (run.get("degradation_check") or {}).items():
            entry = pooled.setdefault(kind, {"right": 0.0, "pairs": 0, "steps": [], "trained": []})
            entry["right"] += check["ordered"] * check["pairs"]
            entry["pairs"] += check["pairs"]
            entry["steps"].append(check.get("steps"))
            entry["trained"].append(check.get("trained"))
    return {
        kind: {"ordered": entry["right"] / entry["pairs"],
               "trained": None if None in entry["trained"] else any(entry["trained"]),
               "weakest_step": (min(float(np.mean(column)) for column in zip(*entry["steps"]))
                                if all(entry["steps"]) else None)}
        for kind, entry in pooled.items()
    }


def degradation_table(config: BenchmarkConfig, outcome: BenchmarkOutcome) -> list[str]:
    """Markdown lines: the degradation check of every trained cell (test photos of every split pooled),
    kinds the cell's ranking loss never trained on marked "held out"."""
    rows = {}
    for (dataset, method), cell in outcome.cells.items():
        pooled = pooled_degradation_check(cell or {})
        if pooled:
            rows[dataset, method] = pooled
    if not rows:
        return []
    kinds = list(dict.fromkeys(kind for pooled in rows.values() for kind in pooled))
    labels = {m.name: m.label for m in config.methods}
    lines = ["## Degradation check: share of (milder, stronger) pairs of test photos scored in the right order",
             "", "Each cell: all pairs / the weakest strength step (neighbour levels); *held out*: a kind the "
             "cell's ranking loss did not train on.", "",
             "| dataset | method | " + " | ".join(kinds) + " |", "|---|---|" + "---|" * len(kinds)]
    for (dataset, method), pooled in rows.items():
        cells = []
        for kind in kinds:
            if kind not in pooled:
                cells.append("-")
                continue
            entry = pooled[kind]
            step = "" if entry["weakest_step"] is None else f" / {entry['weakest_step']:.2f}"
            cells.append(f"{entry['ordered']:.3f}{step}{' *held out*' if entry['trained'] is False else ''}")
        lines.append(f"| {dataset} | {labels[method]} | " + " | ".join(cells) + " |")
    return lines + [""]


def teacher_table(config: BenchmarkConfig, outcome: BenchmarkOutcome) -> list[str]:
    """Markdown lines: median test SRCC/PLCC of each distillation teacher beside its student's."""
    labels = {m.name: m.label for m in config.methods}
    lines = []
    for (dataset, method), cell in outcome.cells.items():
        runs = [run for run in (cell or {}).get("runs", []) if "teacher_metrics" in run]
        if runs:
            median = {who: {k: float(np.median([run[key][k] for run in runs])) for k in ("srcc", "plcc")}
                      for who, key in (("student", "metrics"), ("teacher", "teacher_metrics"))}
            lines.append(f"| {dataset} | {labels[method]} | {len(runs)} | "
                         + " | ".join(f"{median[w]['srcc']:.4f} / {median[w]['plcc']:.4f}" for w in ("student", "teacher")) + " |")
    if not lines:
        return []
    return ["## Distillation: the teacher's own score (median SRCC / PLCC on the same test parts)", "",
            "| dataset | method | splits | student | teacher |", "|---|---|---|---|---|", *lines, ""]


def published_table(config: BenchmarkConfig, outcome: BenchmarkOutcome) -> list[str]:
    """Markdown lines: each method's published median SRCC / PLCC beside this run's medians, for the
    methods that list published numbers ("–": none published; empty without any)."""
    methods = [m for m in config.methods if m.published]
    if not methods:
        return []
    source = f" Published: {config.published_source}." if config.published_source else ""
    lines = ["## Published medians beside ours", "",
             f"SRCC and PLCC medians over splits: the method's published number, then this run's.{source}", "",
             "| dataset | method | SRCC published | SRCC ours | PLCC published | PLCC ours |", "|---|---|---|---|---|---|"]
    for spec in config.datasets:
        for method in methods:
            published = method.published.get(spec.id, {})
            cell = outcome.cells.get((spec.id, method.name))
            shown = []
            for key in ("srcc", "plcc"):
                ours = f"{cell['summary'][key]['median']:.4f}" if cell is not None else "failed or not run"
                shown += [f"{published[key]:.3f}" if key in published else "–", ours]
            lines.append(f"| {spec.id} | {method.label} | " + " | ".join(shown) + " |")
    return lines + [""]


def _interval_cell(cell: dict) -> str:
    """Median test coverage of a cell's calibrated intervals and their median mean width (raw label
    units), e.g. ``0.905 (90%) / 31.2``; ``-`` without intervals."""
    interval = cell.get("interval")
    if interval is None:
        return "-"
    return (f"{interval['test_coverage']['median']:.3f} ({interval['coverage_target']:.0%}) / "
            f"{interval['test_mean_width_raw']['median']:.1f}")


def markdown_tables(config: BenchmarkConfig, outcome: BenchmarkOutcome) -> str:
    """The paper-style tables: per dataset (medians over splits), the cross-dataset matrix, speed."""
    lines = [f"# Benchmark `{config.name}`", "", f"Split seeds: {', '.join(map(str, config.seeds))} "
             "(the same splits for every method). Medians over splits; SRCC mean ± sample std. Interval: "
             "median test coverage of the range calibrated on each split's validation part (target) / its "
             "median width in label units.", ""]
    if config.chosen_on:
        lines += ["Where the trained options were chosen (the config's `chosen_on`):", "",
                  *(f"- {options}: {source}" for options, source in config.chosen_on.items()), ""]
    for spec in config.datasets:
        lines += [f"## {spec.id}", "",
                  "| method | splits | SRCC | PLCC | PLCC (logistic) | KRCC | RMSE | SRCC mean ± std | SRCC per split | "
                  "train s/split | interval coverage / width |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for method in config.methods:
            cell = outcome.cells.get((spec.id, method.name))
            if cell is None:
                lines.append(f"| {method.label} | failed or not run | | | | | | | | | |")
                continue
            stats = cell["summary"]
            medians = " | ".join(f"{stats[k]['median']:.4f}" for k in METRIC_KEYS)
            per_split = " ".join(f"{run['metrics']['srcc']:.3f}" for run in cell["runs"])
            seconds = [run["train_seconds"] for run in cell["runs"] if "train_seconds" in run]
            train = f"{sum(seconds) / len(seconds):.0f}" if seconds else "-"
            lines.append(f"| {method.label} | {len(cell['runs'])} | {medians} | "
                         f"{stats['srcc']['mean']:.4f} ± {stats['srcc']['std']:.4f} | {per_split} | {train} | "
                         f"{_interval_cell(cell)} |")
        lines.append("")
    lines += published_table(config, outcome) + degradation_table(config, outcome) + teacher_table(config, outcome)
    if outcome.cross:
        pairs = list(dict.fromkeys((train, test) for _, train, test in outcome.cross))
        lines += ["## Cross-dataset (train on all of A, test on all of B): SRCC / PLCC", "",
                  "| method | " + " | ".join(f"{a} → {b}" for a, b in pairs) + " |", "|---|" + "---|" * len(pairs)]
        for method in config.methods:
            cells = [outcome.cross.get((method.name, a, b)) for a, b in pairs]
            shown = [f"{c['metrics']['srcc']:.4f} / {c['metrics']['plcc']:.4f}" if c else "failed" for c in cells]
            lines.append(f"| {method.label} | " + " | ".join(shown) + " |")
        lines.append("")
    if outcome.speed:
        lines += ["## Speed", "", "| what | model | runtime | batch | throughput | peak RSS MiB | threads | device |",
                  "|---|---|---|---|---|---|---|---|"]
        for cell in outcome.speed:
            if "error" in cell:
                rate = f"failed: {cell['error']}"
            elif cell["kind"] == "scoring":
                rate = f"{cell['images_per_second']:.2f} images/s"
            elif cell["kind"] == "onnx-export":
                rate = f"{cell['seconds']:.1f} s to {'export' if cell['exported'] else 'load'} the graph"
            else:
                rate = f"{cell['crops_per_second']:.2f} crops/s ({cell['mode']})"
            lines.append(f"| {cell['kind']} | {cell['model']} | {cell.get('runtime', 'torch')} | {cell['batch_size'] or '-'} | "
                         f"{rate} | {cell.get('peak_rss_mib', '-')} | {cell.get('torch_threads', '-')} | {cell['device']} |")
        lines.append("")
    if outcome.failures:
        lines += ["## Failed cells", "", *(f"- {failure}" for failure in outcome.failures), ""]
    return "\n".join(lines)


def write_report(config: BenchmarkConfig, outcome: BenchmarkOutcome, output_dir: Path, command: str) -> None:
    """Write ``results.csv``, ``summary.csv``, ``benchmark.json``, ``table.md`` and ``plots/``."""
    metric_header = list(METRIC_KEYS)
    atomic_write_csv(output_dir / "results.csv", [["dataset", "method", "seed", *metric_header], *split_rows(outcome)])
    stats_header = [f"{k}_{s}" for k in METRIC_KEYS for s in ("median", "mean", "std")]
    atomic_write_csv(output_dir / "summary.csv",
                     [["dataset", "method", "label", "splits", *stats_header], *summary_rows(config, outcome)])
    atomic_write_json(output_dir / "benchmark.json", {
        "config": config.to_dict(),
        "command": command,
        "environment": environment(),
        "cells": [{"dataset": d, "method": m, **(c or {"failed": True})} for (d, m), c in outcome.cells.items()],
        "cross": [{"method": m, "train": a, "test": b, **(c or {"failed": True})} for (m, a, b), c in outcome.cross.items()],
        "speed": outcome.speed,
        "failures": outcome.failures,
    })
    atomic_write_text(output_dir / "table.md", markdown_tables(config, outcome) + "\n")
    try:
        from qfm_iqm.experiments.benchmark.plots import write_plots
    except ImportError:
        print("note: matplotlib is not installed, so no plots were drawn (pip install 'qfm-iqm[bench]')", file=sys.stderr)
        return
    write_plots(config, outcome, output_dir)
