"""The standard protocol: seeded 80/20 splits, train on one part, test on the other, medians.

A split with a validation part also gets a calibrated score interval: calibrated on the validation
predictions, recorded in the split's checkpoint (so that its scores carry ``low``/``high``) and
measured on the test part.
"""

from __future__ import annotations

import csv
import json
import math
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from qfm_iqm.version import __version__
from qfm_iqm.data.records import IQADataset, ImageRecord
from qfm_iqm.data.registry import load_dataset
from qfm_iqm.data.splits import Split, carve_validation, make_splits, save_splits
from qfm_iqm.experiments.baselines import FeatureBaseline, get_baseline, regress_on_split
from qfm_iqm.evaluation.degradation_check import check_photos, degradation_check
from qfm_iqm.evaluation.conformal import calibrate_bounded, interval_report, min_calibration_size
from qfm_iqm.inference.score_map import ConformalInterval, bounded, reported_score
from qfm_iqm.evaluation.metrics import compute_metrics, summarize
from qfm_iqm.inference.predict import Predictions, predict_records
from qfm_iqm.inference.pretrained import record_interval
from qfm_iqm.models.qfm import QFMIQM
from qfm_iqm.training.config import TrainConfig
from qfm_iqm.utils.distributed import is_main
from qfm_iqm.training.feature_cache import frozen_backbone_features
from qfm_iqm.training.teachers import KernelRidgeTeacher
from qfm_iqm.training.trainer import Trainer, resolve_device
from qfm_iqm.utils.memory import peak_rss_mib
from qfm_iqm.utils.checkpoint import atomic_write_csv, atomic_write_json, atomic_write_text

INTERVAL_COVERAGE = 0.9  # of the interval calibrated on a split's validation part
PREDICTION_COLUMNS = (
    "path", "raw_label", "score", "uncertainty", "label", "score_normalised", "uncertainty_normalised"
)


def fit_model(
    config: TrainConfig,
    records: list[ImageRecord],
    output_dir: Path,
    extra_records: list[ImageRecord] | None = None,
    metadata: dict | None = None,
    progress: bool = True,
    resume: bool = True,
    val_records: list[ImageRecord] | None = None,
) -> tuple[QFMIQM, list[dict], QFMIQM | KernelRidgeTeacher | None]:
    """Train a model (and first its ``pretrained`` teacher, in ``deiqt`` mode, when configured).

    ``val_records`` (never test images) are scored after every epoch for the learning curve. Returns
    the model, its per-epoch history and the distillation teacher (its network, or the kernel ridge
    teacher; ``None`` without one)."""
    teacher = None
    if config.distill and config.teacher == "pretrained":
        teacher_config = replace(config, mode="deiqt", teacher="none")
        teacher, _, _ = fit_model(
            teacher_config, records, output_dir / "teacher", None, metadata, progress, resume, val_records
        )
    trainer = Trainer(config, records, output_dir, extra_records, metadata, progress, teacher, val_records)
    history = trainer.fit(resume=resume)
    if trainer.regression_teacher is not None:
        return trainer.model, history.epochs, trainer.regression_teacher
    return trainer.model, history.epochs, trainer.teacher.network if trainer.teacher is not None else None


def config_for_dataset(config: TrainConfig, dataset: IQADataset) -> TrainConfig:
    """The configuration with the dataset's resize rule and viewing scale recorded in the model's preprocessing."""
    # the viewing scale both ways: chosen on v2.1's validation part (scripts/viewing_scale_choice.py)
    rules = {"resize_short_side": dataset.resize_short_side, "max_short_side": dataset.rated_short_side,
             "min_short_side": dataset.rated_short_side}
    preprocessing = {**config.model.preprocessing, **{key: value for key, value in rules.items() if value is not None}}
    return replace(config, model=replace(config.model, preprocessing=preprocessing))


def training_metadata(dataset: IQADataset, split_seed: int | None, train_size: int, command: str | None = None) -> dict:
    """What a checkpoint records about its training data (the score scale lets ``load_model`` report raw units)."""
    return {
        "dataset": dataset.name,
        "split_seed": split_seed,
        "train_size": train_size,
        "score_scale": asdict(dataset.scale),
        "command": command,
    }


def metrics_on(dataset: IQADataset, indices: tuple[int, ...], predictions: Predictions) -> dict[str, float]:
    """Correlations of the reported scores (the raw ones through the score map) against the normalised
    labels; RMSE in raw-label units."""
    labels = dataset.labels()[list(indices)]
    metrics = compute_metrics(bounded(predictions.scores), labels)
    metrics["rmse"] *= dataset.scale.high - dataset.scale.low
    return metrics


def write_predictions(path: Path, dataset: IQADataset, indices: tuple[int, ...], predictions: Predictions) -> None:
    """CSV of the predictions: ``score`` (as the scorer reports it) and ``uncertainty`` on the scale of
    ``raw_label`` (the dataset's); ``label``, ``uncertainty_normalised`` and the network's raw output
    ``score_normalised`` (before the score map, what ``qfm-iqm calibrate`` reads) on the [0, 1] scale."""
    width = dataset.scale.high - dataset.scale.low
    rows = [list(PREDICTION_COLUMNS)]
    for i, score, spread in zip(indices, predictions.scores, predictions.spreads):
        record = dataset.records[i]
        rows.append([str(record.path), record.raw_label, f"{reported_score(score, dataset.scale):.6f}",
                     f"{spread * width:.6f}", record.label, f"{score:.6f}", f"{spread:.6f}"])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(path, rows)


def read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(score_normalised, label)`` of a predictions CSV written by :func:`write_predictions`
    (``ValueError`` naming the file for one that is not)."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in ("score_normalised", "label") if column not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: not a predictions CSV: no column {', '.join(missing)}")
        try:
            rows = [(float(row["score_normalised"]), float(row["label"])) for row in reader]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}, line {reader.line_num}: not a number: {exc}") from exc
    scores, labels = np.array(rows, dtype=np.float64).reshape(-1, 2).T
    return scores, labels


def calibrate_normalised(
    scores: np.ndarray, labels: np.ndarray, coverage: float = INTERVAL_COVERAGE
) -> ConformalInterval:
    """The interval of ``coverage`` for raw normalised scores of held-out images and their normalised
    labels, whose range mapped as the scorer maps it holds the labels (:func:`calibrate_bounded`)."""
    return calibrate_bounded(scores, labels, coverage)


def calibrate_on_validation(
    model: QFMIQM,
    records: list[ImageRecord],
    grid: int,
    device: torch.device | str,
    checkpoint_dir: Path,
    progress: bool = False,
) -> ConformalInterval | None:
    """The :data:`INTERVAL_COVERAGE` interval of ``model`` calibrated on validation ``records`` and
    recorded in the checkpoint in ``checkpoint_dir`` (rank 0); ``None`` when the records are too few."""
    if len(records) < min_calibration_size(INTERVAL_COVERAGE):
        return None
    predictions = predict_records(model, records, grid, device, progress=progress)
    interval = calibrate_normalised(predictions.scores, np.array([record.label for record in records]))
    if is_main():
        record_interval(checkpoint_dir, interval)
    return interval


def interval_details(
    interval: ConformalInterval | None, dataset: IQADataset, indices: tuple[int, ...], predictions: Predictions
) -> dict:
    """``{"interval": ...}``: how ``interval`` does on the images ``indices`` (their share inside it,
    ``test_coverage``, and its mean width in raw-label units, of the range the scorer reports); empty
    without an interval."""
    if interval is None:
        return {}
    labels = dataset.labels()[list(indices)]
    report = interval_report(interval, predictions.scores, labels, score_map=bounded)
    return {"interval": {
        "coverage_target": interval.coverage,
        "quantile": interval.quantile,
        "calibration_size": interval.calibration_size,
        "test_coverage": report["coverage"],
        "test_mean_width_raw": report["mean_width"] * (dataset.scale.high - dataset.scale.low),
    }}


def unlabelled_records(config: TrainConfig, held_out: list[ImageRecord]) -> list[ImageRecord]:
    """The images of ``config.unlabeled_dir`` for the teacher, less every image that is one of
    ``held_out`` (a split's validation and test images), compared by resolved path.

    ``unlabeled_dir`` is a folder of images (the ``folder`` kind) or a CSV file of the ``csv`` kind
    (its image paths relative to the file's folder); labels are NaN either way: a CSV's scores are
    never read into training."""
    if not config.unlabeled_dir:
        return []
    excluded = {Path(record.path).resolve() for record in held_out}
    source = Path(config.unlabeled_dir)
    if source.is_file():
        pool = [replace(r, label=math.nan, raw_label=math.nan)
                for r in load_dataset("csv", source.parent, file=source.name).records]
    else:
        pool = load_dataset("folder", source).records
    return [record for record in pool if Path(record.path).resolve() not in excluded]


def validation_part(config: TrainConfig, dataset: IQADataset, split: Split) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(fit, val)``: the split's training part less a seeded validation part of ``config.val_fraction``
    (by reference content for synthetic datasets; seeded by the split seed). The test part is not touched."""
    if config.val_fraction == 0:
        return split.train, ()
    return carve_validation(split.train, config.val_fraction, split.seed, dataset)


def last_validation_metrics(history: list[dict]) -> dict[str, float]:
    """The validation metrics of the last epoch of a training history (empty without any)."""
    last = history[-1] if history else {}
    return {key.removeprefix("val_"): value for key, value in last.items() if key.startswith("val_")}


def run_split(
    config: TrainConfig, dataset: IQADataset, split: Split, run_dir: Path, progress: bool = True
) -> dict:
    """Train on the split's training part less its validation part, scoring the validation part after
    every epoch; calibrate the score interval on the validation part (:func:`calibrate_on_validation`);
    then test the last-epoch model and its interval on ``split.test``, once, and run the degradation
    check on ``config.degradation_photos`` of the test photos. Resumable.

    Nothing reads a test label before that final scoring: every choice (options, epochs) is made on
    the validation scores recorded in the history.
    """
    result_file = run_dir / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    start = time.perf_counter()
    fit, val = validation_part(config, dataset, split)
    metadata = {**training_metadata(dataset, split.seed, len(fit)), "val_size": len(val)}
    train_records = [dataset.records[i] for i in fit]
    val_records = [dataset.records[i] for i in val]
    split_config = config_for_dataset(config, dataset)
    test_records = [dataset.records[i] for i in split.test]
    extra = unlabelled_records(config, val_records + test_records)
    model, history, teacher = fit_model(split_config, train_records, run_dir, extra, metadata, progress, True, val_records)
    train_seconds = time.perf_counter() - start
    device = resolve_device(config.device)
    interval = calibrate_on_validation(model, val_records, config.eval_grid, device, run_dir, progress)
    predictions = predict_records(model, test_records, config.eval_grid, device, progress=progress)
    teacher_predictions = None
    if isinstance(teacher, KernelRidgeTeacher):  # the teacher's own score on the same test part, beside the student's
        teacher_predictions = Predictions(teacher.predict(test_records), np.zeros(len(test_records)))
    elif teacher is not None:
        teacher_predictions = predict_records(teacher, test_records, config.eval_grid, device, progress=progress)
    photos = [dataset.records[i] for i in check_photos(split.test, config.degradation_photos, split.seed)]
    features = frozen_backbone_features(config, model, device)
    check = degradation_check(model, photos, config.eval_grid, device, features=features,
                                   trained_kinds=config.ranked_kinds) if photos else {}
    return finish_split(
        run_dir,
        dataset,
        split,
        predictions,
        teacher_predictions,
        epochs=config.epochs,
        fit_size=len(fit),
        val_size=len(val),
        val_metrics=last_validation_metrics(history),
        train_seconds=round(train_seconds, 1),
        total_seconds=round(time.perf_counter() - start, 1),
        train_crops_per_second=round(sum(e["crops_per_second"] for e in history) / len(history), 2),
        peak_rss_mib=round(peak_rss_mib(), 1),
        degradation_check=check,
        **interval_details(interval, dataset, split.test, predictions),
        history=history,
    )


def finish_split(
    run_dir: Path,
    dataset: IQADataset,
    split: Split,
    predictions: Predictions,
    teacher_predictions: Predictions | None = None,
    **details,
) -> dict:
    """A split's result (metrics on the test part, the distillation teacher's too when given, and
    ``details``); rank 0 writes ``predictions.csv`` and ``result.json``."""
    result = {
        "seed": split.seed,
        "metrics": metrics_on(dataset, split.test, predictions),
        "train_size": len(split.train),
        "test_size": len(split.test),
        **details,
    }
    if teacher_predictions is not None:
        result["teacher_metrics"] = metrics_on(dataset, split.test, teacher_predictions)
    if is_main():
        write_predictions(run_dir / "predictions.csv", dataset, split.test, predictions)
        atomic_write_json(run_dir / "result.json", result)
    return result


def environment() -> dict:
    """Code version and machine, recorded with every result."""
    return {
        "code_version": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def check_method(output_dir: Path, method: dict) -> None:
    """Record what ``output_dir`` holds results of, or refuse to mix results of another method.

    ``method`` describes the run completely (options, dataset, ...); finished splits are reused only
    when it is unchanged, so a results folder never silently mixes two configurations. Options added
    to ``TrainConfig`` after a folder was written count as run at their defaults there.
    """
    path = output_dir / "method.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if isinstance(saved.get("config"), dict):  # options added since then ran at their defaults
            try:
                saved["config"] = TrainConfig.from_record(saved["config"]).to_dict()
            except (TypeError, ValueError):
                pass  # an option that no longer exists: reported as a difference below
        if saved != json.loads(json.dumps(method)):
            changed = sorted(k for k in set(saved) | set(method) if saved.get(k) != method.get(k))
            raise ValueError(
                f"{output_dir} holds results of a different configuration (differs in: {', '.join(changed)}); "
                "use another output folder or delete that one"
            )
    elif is_main():
        atomic_write_json(path, method)


def write_protocol_results(
    output_dir: Path, dataset: IQADataset, method: str, seeds: list[int], runs: list[dict], details: dict, command: str | None
) -> dict:
    """Write ``results.json`` (medians, per-split metrics, the intervals' test coverage and width when
    splits have one, what was run, machine) and ``command.txt``.

    Under ``torchrun`` every rank returns the summary and rank 0 alone writes the files.
    """
    summary = {
        "dataset": dataset.name,
        "mode": method,
        "seeds": seeds,
        "summary": summarize([run["metrics"] for run in runs]),
        **interval_summary(runs),
        "runs": [{k: v for k, v in run.items() if k != "history"} for run in runs],
        **details,
        "command": command,
        "environment": environment(),
    }
    if is_main():
        atomic_write_json(output_dir / "results.json", summary)
        atomic_write_text(output_dir / "command.txt", (command or "") + "\n")
    return summary


def interval_summary(runs: list[dict]) -> dict:
    """``{"interval": ...}``: statistics over the splits that have an interval (:func:`interval_details`)
    of its ``test_coverage`` and ``test_mean_width_raw``; empty when none has one."""
    intervals = [run["interval"] for run in runs if "interval" in run]
    if not intervals:
        return {}
    measured = [{key: interval[key] for key in ("test_coverage", "test_mean_width_raw")} for interval in intervals]
    return {"interval": {"coverage_target": intervals[0]["coverage_target"], "splits": len(intervals),
                         **summarize(measured)}}


def _prepare_protocol(output_dir: str | Path, dataset: IQADataset, seeds: list[int], method: dict) -> tuple[Path, list[Split]]:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    check_method(output_dir, {**method, "dataset": dataset.name, "dataset_size": len(dataset)})
    splits = make_splits(dataset, seeds)
    if is_main():
        save_splits(output_dir / "splits.json", splits, dataset.name, len(dataset))
    return output_dir, splits


def run_protocol(
    config: TrainConfig,
    dataset: IQADataset,
    seeds: list[int],
    output_dir: str | Path,
    command: str | None = None,
    progress: bool = True,
) -> dict:
    """Run the protocol over ``seeds`` and write ``splits.json`` and ``results.json`` to ``output_dir``.

    Splits already finished (their ``result.json`` exists) are not trained again.
    """
    config = config_for_dataset(config, dataset)
    output_dir, splits = _prepare_protocol(output_dir, dataset, seeds, {"config": config.to_dict()})
    runs = [run_split(config, dataset, split, output_dir / f"split_{split.seed}", progress) for split in splits]
    return write_protocol_results(output_dir, dataset, config.mode, seeds, runs, {"config": config.to_dict()}, command)


def baseline_split(baseline: FeatureBaseline, features: np.ndarray, dataset: IQADataset, split: Split, run_dir: Path) -> dict:
    """Fit the baseline's regressor on ``split.train`` and test it on ``split.test``; resumable."""
    result_file = run_dir / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    scores, regressor = regress_on_split(features, dataset.labels(), split, baseline.candidates)
    predictions = Predictions(scores, np.zeros_like(scores))
    return finish_split(run_dir, dataset, split, predictions, regressor={"type": type(regressor).__name__, **asdict(regressor)})


def run_baseline_protocol(
    name: str,
    dataset: IQADataset,
    seeds: list[int],
    output_dir: str | Path,
    command: str | None = None,
    progress: bool = True,
    features_dir: Path | None = None,
) -> dict:
    """A feature baseline (see ``qfm_iqm.experiments.baselines``) on the protocol's splits.

    Writes the same files as ``run_protocol``; the features are cached in ``features_dir`` (default
    ``output_dir``), where baselines of the same feature set share them.
    """
    baseline = get_baseline(name)
    output_dir, splits = _prepare_protocol(output_dir, dataset, seeds, {"baseline": name})
    features = baseline.cached_features(dataset, features_dir or output_dir, progress)
    runs = [baseline_split(baseline, features, dataset, split, output_dir / f"split_{split.seed}") for split in splits]
    details = {"baseline": name, "description": baseline.description}
    return write_protocol_results(output_dir, dataset, f"baseline-{name}", seeds, runs, details, command)
