"""Run a benchmark: every (dataset, method) cell on the same seeded splits, cross-dataset pairs,
speed cells; then the tables and plots. Finished cells and splits are reused on a re-run.

Layout of the output folder::

    <dataset>/<method>/       one protocol run (splits.json, split_<seed>/result.json + predictions.csv,
                              results.json, method.json: what the folder holds results of)
    cross/<method>/<A>/       a model trained on all of A (trained methods), and <A>__to__<B>.json
    speed.json                throughput cells
    benchmark.json, results.csv, summary.csv, table.md, plots/   the report (see ``report``)
"""

from __future__ import annotations

import json
import shlex
import traceback
from pathlib import Path

import numpy as np

from qfm_iqm.experiments.benchmark.config import BenchmarkConfig, CrossSpec, MethodSpec
from qfm_iqm.experiments.benchmark.outcome import BenchmarkOutcome
from qfm_iqm.data.records import IQADataset
from qfm_iqm.data.registry import load_dataset
from qfm_iqm.experiments.baselines import get_baseline
from qfm_iqm.models.regressors import select_by_cv
from qfm_iqm.inference.predict import Predictions, predict_records
from qfm_iqm.experiments.protocol import (
    check_method,
    config_for_dataset,
    fit_model,
    metrics_on,
    run_baseline_protocol,
    run_protocol,
    training_metadata,
    write_predictions,
)
from qfm_iqm.utils.distributed import is_main
from qfm_iqm.training.interrupt import TrainingInterrupted
from qfm_iqm.training.trainer import resolve_device
from qfm_iqm.utils.checkpoint import atomic_write_json


def _attempt(outcome: BenchmarkOutcome, what: str, action):
    """Run one cell; a failure is recorded (with its reason) and the benchmark goes on."""
    try:
        return action()
    except (KeyboardInterrupt, TrainingInterrupted):  # stop the whole benchmark; a re-run continues it
        raise
    except Exception as error:  # noqa: BLE001 - one broken cell must not lose the others
        outcome.failures.append(f"{what}: {type(error).__name__}: {error}")
        if not isinstance(error, (ValueError, OSError)):  # an unexpected error: show where it came from
            traceback.print_exc()
        return None


def run_cell(
    config: BenchmarkConfig, method: MethodSpec, dataset: IQADataset, cell_dir: Path, overrides: list[str], progress: bool
) -> dict:
    """One (dataset, method) protocol run over the benchmark's seeds."""
    seeds = list(config.seeds)
    command = f"qfm-iqm benchmark (method {method.name}, dataset {dataset.name})"
    if method.trained:
        return run_protocol(method.train_config(config.train, overrides), dataset, seeds, cell_dir, command, progress)
    return run_baseline_protocol(method.baseline, dataset, seeds, cell_dir, command, progress, cell_dir.parent)


def cross_predictions(
    config: BenchmarkConfig,
    method: MethodSpec,
    pair: CrossSpec,
    datasets: dict[str, IQADataset],
    output_dir: Path,
    overrides: list[str],
    progress: bool,
) -> Predictions:
    """Scores of every image of ``pair.test`` by ``method`` trained on all of ``pair.train``."""
    train_set, test_set = datasets[pair.train], datasets[pair.test]
    if method.trained:
        model_dir = output_dir / "cross" / method.name / pair.train
        train_config = config_for_dataset(method.train_config(config.train, overrides), train_set)
        check_method(model_dir, {"config": train_config.to_dict(), "dataset": pair.train, "dataset_size": len(train_set)})
        metadata = training_metadata(train_set, None, len(train_set))
        model, _, _ = fit_model(train_config, list(train_set.records), model_dir, None, metadata, progress)
        device = resolve_device(train_config.device)
        return predict_records(model, list(test_set.records), train_config.eval_grid, device, progress=progress)
    baseline = get_baseline(method.baseline)
    train_features, test_features = (
        baseline.cached_features(datasets[key], output_dir / key, progress)
        for key in (pair.train, pair.test)
    )
    labels = train_set.labels()
    regressor = select_by_cv(baseline.candidates, train_features, labels).fit(train_features, labels)
    scores = regressor.predict(test_features)
    return Predictions(scores, np.zeros_like(scores))


def run_cross(
    config: BenchmarkConfig, method: MethodSpec, pair: CrossSpec, datasets: dict[str, IQADataset], output_dir: Path,
    overrides: list[str], progress: bool,
) -> dict:
    """Train on A, test on B (resumable); correlations are against B's labels, higher is better."""
    result_file = output_dir / "cross" / method.name / f"{pair.train}__to__{pair.test}.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    test_set = datasets[pair.test]
    predictions = cross_predictions(config, method, pair, datasets, output_dir, overrides, progress)
    every = tuple(range(len(test_set)))
    result = {"method": method.name, "train": pair.train, "test": pair.test,
              "test_size": len(test_set), "metrics": metrics_on(test_set, every, predictions)}
    if is_main():
        write_predictions(result_file.with_suffix(".csv"), test_set, every, predictions)
        atomic_write_json(result_file, result)
    return result


def run_benchmark(
    config: BenchmarkConfig,
    output_dir: str | Path,
    overrides: list[str] | None = None,
    speed: bool = True,
    progress: bool = True,
    command: str | None = None,
) -> BenchmarkOutcome:
    """Run every cell of ``config`` into ``output_dir`` and write the report there (under ``torchrun``
    the processes share each training and test pass; rank 0 alone measures speed and writes).

    ``overrides`` (``key=value``) apply to every trained method (e.g. ``device=cuda``); they are part
    of each cell's recorded configuration, so a folder never mixes runs with different options. They
    are checked before anything runs (``ValueError`` for an unknown option, a bad value, or a
    benchmark of baselines only).
    """
    from qfm_iqm.experiments.benchmark.report import write_report

    output_dir = Path(output_dir)
    overrides = list(overrides or [])
    trained = [method for method in config.methods if method.trained]
    if overrides and not trained:
        raise ValueError(f"--set {' '.join(overrides)}: this benchmark trains no method (baselines only), "
                         "so there are no training options to set")
    # unknown options, bad values, an absent device or unobtainable backbone weights fail before any cell runs
    resources = {(c.device, c.model.backbone, c.backbone_weights): c for c in (m.train_config(config.train, overrides) for m in trained)}
    for train_config in resources.values():
        train_config.check_resources()
    output_dir.mkdir(parents=True, exist_ok=True)
    outcome = BenchmarkOutcome()
    datasets: dict[str, IQADataset] = {}
    for spec in config.datasets:
        loaded = _attempt(outcome, f"dataset {spec.id}", lambda: load_dataset(spec.name, spec.root, **spec.options))
        if loaded is not None:
            datasets[spec.id] = loaded
    for key, dataset in datasets.items():
        for method in config.methods:
            cell = output_dir / key / method.name
            outcome.cells[key, method.name] = _attempt(
                outcome, f"{method.name} on {key}", lambda: run_cell(config, method, dataset, cell, overrides, progress)
            )
    for pair in config.cross:
        if pair.train in datasets and pair.test in datasets:
            for method in config.methods:
                outcome.cross[method.name, pair.train, pair.test] = _attempt(
                    outcome,
                    f"{method.name} trained on {pair.train}, tested on {pair.test}",
                    lambda: run_cross(config, method, pair, datasets, output_dir, overrides, progress),
                )
    if not is_main():  # under torchrun: rank 0 measures speed alone and writes the report
        return outcome
    if speed and config.speed is not None:
        from qfm_iqm.experiments.benchmark.speed import run_speed

        outcome.speed = run_speed(config.speed)
        atomic_write_json(output_dir / "speed.json", outcome.speed)
        outcome.failures += [f"speed {c['kind']} {c['model']} {c['runtime']} batch {c['batch_size']}: {c['error']}"
                             for c in outcome.speed if "error" in c]
    elif (output_dir / "speed.json").exists():
        outcome.speed = json.loads((output_dir / "speed.json").read_text())
    write_report(config, outcome, output_dir, command or "qfm-iqm benchmark " + shlex.join(overrides))
    return outcome
