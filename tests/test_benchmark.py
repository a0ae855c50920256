"""`qfm-iqm benchmark`: config validation, cells on the same splits, resume, cross-dataset, report."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from qfm_iqm.experiments.benchmark import BenchmarkConfig, run_benchmark
from qfm_iqm.experiments.benchmark.config import SpeedSpec
from qfm_iqm.experiments.benchmark.report import markdown_tables
from qfm_iqm.experiments.benchmark.outcome import BenchmarkOutcome
from qfm_iqm.experiments.benchmark.speed import run_speed
from qfm_iqm.cli.main import main
from qfm_iqm.evaluation.metrics import METRIC_KEYS
from qfm_iqm.inference.score_map import bounded

TINY_TRAIN = {
    "epochs": 1, "batch_size": 4, "kd_views": 2, "warmup_epochs": 0, "eval_grid": 2, "device": "cpu", "lr": 1e-3,
    "model": {"dim": 64, "num_heads": 4, "preprocessing": {"input_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3}},
}


@pytest.fixture()
def label_files(blur_records):
    """The 16 blur images labelled as MOS (labels.csv) and, reversed, as DMOS (dmos.csv)."""
    root = blur_records[0].path.parent
    (root / "labels.csv").write_text("image,mos\n" + "".join(f"{r.path.name},{r.raw_label}\n" for r in blur_records))
    (root / "dmos.csv").write_text("image,dmos\n" + "".join(f"{r.path.name},{100 - r.raw_label}\n" for r in blur_records))
    return root


def tiny_benchmark(root, methods=None, cross=False) -> dict:
    datasets = [{"name": "csv", "id": "blur", "root": str(root), "options": {"file": "labels.csv", "low": 0, "high": 100}}]
    if cross:
        datasets.append({"name": "csv", "id": "blur-dmos", "root": str(root),
                         "options": {"file": "dmos.csv", "low": 0, "high": 100, "higher_is_better": False}})
    return {
        "name": "tiny",
        "seeds": [0, 1],
        "train": TINY_TRAIN,
        "datasets": datasets,
        "methods": methods or [
            {"name": "deiqt", "label": "DEIQT mode", "train": {"mode": "deiqt"}},
            {"name": "qfm", "train": {"mode": "qfm"}},
            {"name": "brisque", "baseline": "brisque"},
        ],
        "cross": [{"train": "blur", "test": "blur-dmos"}] if cross else [],
    }


def test_benchmark_runs_every_method_on_the_same_splits_and_writes_the_report(tmp_path, label_files):
    config = BenchmarkConfig.from_dict(tiny_benchmark(label_files))
    outcome = run_benchmark(config, tmp_path / "out", progress=False)
    assert outcome.failures == []
    out = tmp_path / "out"
    splits = {m: json.loads((out / "blur" / m / "splits.json").read_text())["splits"] for m in ("deiqt", "qfm", "brisque")}
    assert splits["deiqt"] == splits["qfm"] == splits["brisque"]
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((r["method"], r["seed"]) for r in rows) == sorted((m, s) for m in ("deiqt", "qfm", "brisque") for s in "01")
    assert all(-1 <= float(r["srcc"]) <= 1 for r in rows)
    with open(out / "summary.csv", newline="") as handle:
        summary = {r["method"]: r for r in csv.DictReader(handle)}
    assert summary["deiqt"]["label"] == "DEIQT mode" and summary["qfm"]["splits"] == "2"
    table = (out / "table.md").read_text()
    assert "| DEIQT mode | 2 |" in table and "| brisque | 2 |" in table
    report = json.loads((out / "benchmark.json").read_text())
    assert report["config"]["seeds"] == [0, 1] and report["environment"]["torch"]
    for kind in ("scatter", "splits", "ablation", "training"):
        with Image.open(out / "plots" / f"blur_{kind}.png") as image:
            assert image.size[0] > 200


def test_benchmark_resumes_without_redoing_cells_and_refuses_to_mix_configurations(tmp_path, label_files):
    methods = [{"name": "deiqt", "train": {"mode": "deiqt"}}]
    config = BenchmarkConfig.from_dict(tiny_benchmark(label_files, methods))
    out = tmp_path / "out"
    assert run_benchmark(config, out, progress=False).failures == []
    finished = (out / "blur" / "deiqt" / "split_0" / "result.json").stat().st_mtime_ns
    assert run_benchmark(config, out, progress=False).failures == []
    assert (out / "blur" / "deiqt" / "split_0" / "result.json").stat().st_mtime_ns == finished

    changed = BenchmarkConfig.from_dict(tiny_benchmark(label_files, [{"name": "deiqt", "train": {"mode": "deiqt", "lr": 1e-4}}]))
    outcome = run_benchmark(changed, out, progress=False)
    assert len(outcome.failures) == 1 and "different configuration (differs in: config)" in outcome.failures[0]
    assert "failed or not run" in (out / "table.md").read_text()


def test_cross_dataset_pairs_handle_the_label_direction(tmp_path, label_files):
    """Testing on the same images labelled as DMOS gives the same correlations as on the MOS labels."""
    methods = [{"name": "deiqt", "train": {"mode": "deiqt"}}, {"name": "brisque", "baseline": "brisque"}]
    config = BenchmarkConfig.from_dict(tiny_benchmark(label_files, methods, cross=True))
    outcome = run_benchmark(config, tmp_path / "out", progress=False)
    assert outcome.failures == []
    for method in ("deiqt", "brisque"):
        result = outcome.cross[method, "blur", "blur-dmos"]
        assert result["test_size"] == 16
        predictions = tmp_path / "out" / "cross" / method / "blur__to__blur-dmos.csv"
        with open(predictions, newline="") as handle:
            rows = list(csv.DictReader(handle))
        scores = [float(r["score_normalised"]) for r in rows]  # higher is better, like label
        # DMOS, of the raw output through the score map
        assert [float(r["score"]) for r in rows] == pytest.approx([100 - 100 * bounded(x) for x in scores], abs=1e-4)
        mos = [1 - float(r["label"]) for r in rows]  # DMOS labels normalised: 1 - MOS/100
        from qfm_iqm.evaluation.metrics import srcc

        assert result["metrics"]["srcc"] == pytest.approx(srcc(scores, [1 - m for m in mos]))
    assert "blur → blur-dmos" in (tmp_path / "out" / "table.md").read_text()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"seeds": [0, 0]}, "duplicates"),
        ({"methods": [{"name": "x", "baseline": "niqe"}]}, "unknown baseline 'niqe'"),
        ({"methods": [{"name": "x", "train": {"mode": "qfm"}, "baseline": "ridge"}]}, "exactly one of"),
        ({"methods": [{"name": "x", "train": {"lr": "fast"}}]}, "must be a number"),
        ({"cross": [{"train": "blur", "test": "koniq10k"}]}, "not listed under 'datasets': koniq10k"),
        ({"speed": {"modles": ["qfm_iqm_lite0"]}}, "unknown key(s) modles"),
        ({"speed": {"score_runtimes": ["torch", "tensorrt"]}}, "unknown score_runtimes tensorrt"),
        ({"extra": 1}, "unknown key(s) extra in the top level"),
    ],
)
def test_bad_benchmark_configs_are_refused_with_the_offending_entry(tmp_path, change, message):
    data = {**tiny_benchmark(tmp_path), **change}
    with pytest.raises(ValueError) as error:
        BenchmarkConfig.from_dict(data)
    assert message in str(error.value)


def test_cli_benchmark_exit_status_and_config_errors(tmp_path, label_files, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmethods: [\n")
    assert main(["benchmark", "--config", str(bad)]) == 2
    assert "bad.yaml: not valid YAML" in capsys.readouterr().err
    config = tmp_path / "ok.json"
    data = tiny_benchmark(label_files, [{"name": "brisque", "baseline": "brisque"}])
    data["datasets"].append({"name": "livec", "root": str(tmp_path / "missing")})
    config.write_text(json.dumps(data))
    assert main(["--quiet", "benchmark", "--config", str(config), "--output", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "| brisque | 2 |" in captured.out  # the cells that could run did
    assert "failed: dataset livec" in captured.err


def test_speed_cells_measure_throughput_and_memory_in_their_own_process():
    spec = SpeedSpec(models=("qfm_iqm_lite0", "no_such_model"), score_batch_sizes=(2,), train_batch_sizes=(2,),
                     score_images=2, image_size=64, train_steps=1)
    cells = {(c["kind"], c["model"]): c for c in run_speed(spec)}
    scoring, training = cells["scoring", "qfm_iqm_lite0"], cells["training", "qfm_iqm_lite0"]
    assert scoring["images_per_second"] > 0 and scoring["images"] == 2 and scoring["peak_rss_mib"] > 50
    assert training["crops_per_second"] > 0 and training["crops"] == 1 * 2  # batch only: no teacher by default
    assert "no_such_model" in cells["scoring", "no_such_model"]["error"]


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[1].glob("benchmarks/*.yaml")), ids=lambda p: p.name)
def test_shipped_benchmark_configs_are_valid(path):
    config = BenchmarkConfig.from_file(path)
    assert config.methods and config.datasets
    for method in config.methods:
        if method.trained:
            method.train_config(config.train)  # every option exists and has a valid value


def test_set_is_checked_before_anything_runs(tmp_path, label_files, capsys):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_benchmark(label_files)))
    out = tmp_path / "out"
    assert main(["--quiet", "benchmark", "--config", str(config), "--output", str(out), "--set", "epoch=1"]) == 2
    assert "unknown option 'epoch'" in capsys.readouterr().err
    baselines = tmp_path / "baselines.json"
    baselines.write_text(json.dumps(tiny_benchmark(label_files, [{"name": "brisque", "baseline": "brisque"}])))
    assert main(["--quiet", "benchmark", "--config", str(baselines), "--output", str(out), "--set", "epochs=1"]) == 2
    assert "trains no method" in capsys.readouterr().err
    assert not (out / "blur").exists()  # no cell ran


def test_peak_memory_of_a_child_process_is_its_own():
    """A child started by fork + exec reports its own peak, not the (larger) peak of its parent."""
    from qfm_iqm.utils.memory import peak_rss_mib

    held = bytearray(1536 * 2**20)
    held[::4096] = b"\1" * len(range(0, len(held), 4096))  # make the pages resident
    code = "from qfm_iqm.utils.memory import peak_rss_mib; print(peak_rss_mib())"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 0 < child < peak_rss_mib() - 1000


def test_report_pools_the_degradation_check_and_shows_teachers_beside_students():
    from qfm_iqm.experiments.benchmark.config import MethodSpec
    from qfm_iqm.experiments.benchmark.report import degradation_table, teacher_table
    from qfm_iqm.experiments.benchmark.outcome import BenchmarkOutcome

    config = BenchmarkConfig(name="b", seeds=(0, 1), datasets=(), methods=(MethodSpec("m", "Method M", train={}),))
    runs = [{"seed": 0, "metrics": {"srcc": 0.8, "plcc": 0.8}, "teacher_metrics": {"srcc": 0.7, "plcc": 0.75},
             "degradation_check": {"noise": {"ordered": 1.0, "pairs": 10}}},
            {"seed": 1, "metrics": {"srcc": 0.9, "plcc": 0.9}, "teacher_metrics": {"srcc": 0.8, "plcc": 0.85},
             "degradation_check": {"noise": {"ordered": 0.5, "pairs": 30}}}]
    outcome = BenchmarkOutcome(cells={("d", "m"): {"runs": runs}})
    assert "| d | Method M | 0.625 |" in degradation_table(config, outcome)  # (10 + 15) / 40 pairs
    assert "| d | Method M | 2 | 0.8500 / 0.8500 | 0.7500 / 0.8000 |" in teacher_table(config, outcome)
    assert degradation_table(config, BenchmarkOutcome(cells={("d", "m"): {"runs": [{"seed": 0}]}})) == []
    # checks that record strength steps and training: the weakest step pooled over splits, held-out kinds marked
    for run, steps in zip(runs, ([1.0, 0.5], [0.5, 1.0])):
        run["degradation_check"] = {"blur": {"ordered": 0.75, "pairs": 12, "steps": steps, "trained": True},
                                    "jitter": {"ordered": 0.5, "pairs": 12, "steps": steps, "trained": False}}
    table = degradation_table(config, outcome)
    assert "| d | Method M | 0.750 / 0.75 | 0.500 / 0.75 *held out* |" in table


def test_table_shows_the_interval_coverage_and_width_of_cells_that_have_one(label_files):
    methods = [{"name": "deiqt", "label": "DEIQT mode", "train": {"mode": "deiqt"}}, {"name": "brisque", "baseline": "brisque"}]
    config = BenchmarkConfig.from_dict(tiny_benchmark(label_files, methods))
    stats = {key: {"median": 0.5, "mean": 0.5, "std": 0.0} for key in METRIC_KEYS}
    runs = [{"seed": 0, "metrics": {key: 0.5 for key in METRIC_KEYS}}]
    interval = {"coverage_target": 0.9, "splits": 1, "test_coverage": {"median": 0.875}, "test_mean_width_raw": {"median": 31.3}}
    outcome = BenchmarkOutcome(cells={("blur", "deiqt"): {"summary": stats, "runs": runs, "interval": interval},
                                      ("blur", "brisque"): {"summary": stats, "runs": runs}})
    rows = {line.split(" | ")[0]: line for line in markdown_tables(config, outcome).splitlines()}
    assert rows["| method"].endswith("| interval coverage / width |")
    assert rows["| DEIQT mode"].endswith("| 0.875 (90%) / 31.3 |") and rows["| brisque"].endswith("| - |")


def test_table_lists_where_each_option_was_chosen(label_files):
    data = tiny_benchmark(label_files, [{"name": "deiqt", "train": {"mode": "deiqt"}}])
    data["chosen_on"] = {"epochs, lr": "results/validation/some-sweep (validation parts)"}
    table = markdown_tables(BenchmarkConfig.from_dict(data), BenchmarkOutcome())
    assert "- epochs, lr: results/validation/some-sweep (validation parts)" in table.splitlines()
    assert "chosen_on" not in markdown_tables(BenchmarkConfig.from_dict(tiny_benchmark(label_files, data["methods"])),
                                              BenchmarkOutcome())
