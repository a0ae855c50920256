"""`qfm-iqm train` and `qfm-iqm evaluate` end to end on a tiny CSV dataset."""

import json

import pytest

from qfm_iqm.cli.main import main


@pytest.fixture()
def csv_dataset(tmp_path, blur_records):
    lines = ["image,mos"] + [f"{r.path.name},{r.raw_label}" for r in blur_records]
    (blur_records[0].path.parent / "labels.csv").write_text("\n".join(lines) + "\n")
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "epochs: 1\nbatch_size: 4\nkd_views: 2\nwarmup_epochs: 0\neval_grid: 2\ndevice: cpu\n"
        "model:\n  dim: 64\n  num_heads: 4\n  preprocessing: {input_size: 64, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}\n"
    )
    root = blur_records[0].path.parent
    options = ["--dataset", "csv", "--data-root", str(root), "--dataset-option", "file=labels.csv",
               "--dataset-option", "low=0", "--dataset-option", "high=100", "--config", str(config)]
    return options


def test_train_then_evaluate_checkpoint(tmp_path, csv_dataset, capsys):
    out = tmp_path / "model"
    assert main(["--quiet", "train", *csv_dataset, "--set", "lr=5e-4", "--output", str(out)]) == 0
    saved = json.loads((out / "model.json").read_text())
    assert saved["training"]["lr"] == 5e-4 and saved["train_size"] == 13  # 80% of 16, rounded
    assert saved["score_scale"]["high"] == 100 and "qfm-iqm" in saved["command"]
    capsys.readouterr()
    assert main(["--quiet", "evaluate", *csv_dataset, "--checkpoint", str(out), "--grid", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 16 and -1 <= result["metrics"]["srcc"] <= 1


def test_protocol_writes_results_and_does_not_redo_finished_splits(tmp_path, csv_dataset, capsys):
    out = tmp_path / "protocol"
    args = ["--quiet", "evaluate", *csv_dataset, "--mode", "deiqt", "--seeds", "3", "4", "--output", str(out)]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert [run["seed"] for run in results["runs"]] == [3, 4]
    assert set(results["summary"]["srcc"]) >= {"median", "mean", "std"}
    splits = json.loads((out / "splits.json").read_text())
    assert splits  # the split membership is recorded with the result
    finished = (out / "split_3" / "result.json").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "split_3" / "result.json").stat().st_mtime_ns == finished


def test_bad_input_gives_a_clear_error(tmp_path, csv_dataset, capsys):
    assert main(["train", "--dataset", "livec", "--data-root", str(tmp_path / "nowhere"), "--output", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", *csv_dataset, "--set", "lr=fast", "--output", str(tmp_path / "x")]) == 2
    assert "must be a number" in capsys.readouterr().err


def test_cross_dataset_evaluation_handles_label_direction(tmp_path, csv_dataset, blur_records, capsys):
    """Train on a MOS dataset, test on the same images labelled as DMOS (lower is better)."""
    out = tmp_path / "model"
    assert main(["--quiet", "train", *csv_dataset, "--all", "--output", str(out)]) == 0
    root = blur_records[0].path.parent
    lines = ["image,dmos"] + [f"{r.path.name},{100 - r.raw_label}" for r in blur_records]
    (root / "dmos.csv").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    common = ["--quiet", "evaluate", "--dataset", "csv", "--data-root", str(root), "--checkpoint", str(out), "--grid", "2"]
    assert main([*common, "--dataset-option", "file=labels.csv"]) == 0
    mos = json.loads(capsys.readouterr().out)["metrics"]
    assert main([*common, "--dataset-option", "file=dmos.csv", "--dataset-option", "higher_is_better=false"]) == 0
    dmos = json.loads(capsys.readouterr().out)["metrics"]
    assert dmos["srcc"] == pytest.approx(mos["srcc"]) and dmos["plcc"] == pytest.approx(mos["plcc"])
