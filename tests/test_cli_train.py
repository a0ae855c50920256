"""`qfm-iqm train` and `qfm-iqm evaluate` end to end on a tiny CSV dataset."""

import csv
import json

import pytest

from qfm_iqm.cli.main import main
from qfm_iqm.scoring import read_results


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
    assert main(["train", *csv_dataset, "--set", "lr=5e-4", "--output", str(out), "--quiet"]) == 0
    saved = json.loads((out / "model.json").read_text())
    # 80% of 16 images (13) train; 20% of those (3) are the validation part, scored every epoch
    assert saved["training"]["lr"] == 5e-4 and saved["train_size"] == 10 and saved["val_size"] == 3
    assert saved["score_scale"]["high"] == 100 and "qfm-iqm" in saved["command"]
    split = json.loads((out / "splits.json").read_text())["splits"]
    assert len(split) == 1 and split[0]["seed"] == 0 and len(split[0]["train"]) == 13 and len(split[0]["test"]) == 3
    trained = json.loads(capsys.readouterr().out)["test"]  # train reports its held-out metrics
    assert trained["test_size"] == 3 and -1 <= trained["metrics"]["srcc"] <= 1
    assert set(trained["val_metrics"]) == {"srcc", "plcc", "rmse"}
    assert json.loads((out / "result.json").read_text())["metrics"] == trained["metrics"]
    report = tmp_path / "report"
    assert main(["--quiet", "evaluate", *csv_dataset, "--checkpoint", str(out), "--output", str(report)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 3 and result["training_images"] == 0 and "seed 0" in result["tested"]
    assert result["grid"] == 2  # the checkpoint's eval_grid
    assert result["metrics"] == pytest.approx(trained["metrics"])
    assert json.loads((report / "result.json").read_text())["metrics"] == result["metrics"]
    with open(report / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3  # score and uncertainty on raw_label's 0-100 scale, the normalised ones beside them
    for row in rows:
        assert float(row["score"]) == pytest.approx(100 * float(row["score_normalised"]), abs=1e-4)
        assert float(row["uncertainty"]) == pytest.approx(100 * float(row["uncertainty_normalised"]), abs=1e-4)
        assert float(row["label"]) == pytest.approx(float(row["raw_label"]) / 100)


def test_evaluate_refuses_images_the_checkpoint_trained_on(tmp_path, csv_dataset, capsys):
    out = tmp_path / "model"
    assert main(["--quiet", "train", *csv_dataset, "--split-seed", "1", "--output", str(out)]) == 0
    other = tmp_path / "other"
    assert main(["--quiet", "train", *csv_dataset, "--split-seed", "2", "--epochs", "0", "--output", str(other)]) == 0
    capsys.readouterr()
    evaluate = ["--quiet", "evaluate", *csv_dataset, "--checkpoint", str(out), "--split-file", str(other / "splits.json")]
    assert main(evaluate) == 2
    assert "was trained on" in capsys.readouterr().err
    assert main([*evaluate, "--include-training-images"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["training_images"] > 0 and "WARNING" in captured.err and "not a held-out test" in captured.err


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
    assert main(["--quiet", "train", *csv_dataset, "--all", "--set", "val_fraction=0", "--output", str(out)]) == 0
    root = blur_records[0].path.parent
    lines = ["image,dmos"] + [f"{r.path.name},{100 - r.raw_label}" for r in blur_records]
    (root / "dmos.csv").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    common = ["--quiet", "evaluate", "--dataset", "csv", "--data-root", str(root), "--checkpoint", str(out), "--grid", "2"]
    assert main([*common, "--dataset-option", "file=labels.csv"]) == 2  # --all: it trained on every image
    assert "was trained on 16 of the 16 images" in capsys.readouterr().err
    assert main([*common, "--dataset-option", "file=labels.csv", "--include-training-images"]) == 0
    mos = json.loads(capsys.readouterr().out)["metrics"]
    assert main([*common, "--dataset-option", "file=dmos.csv", "--dataset-option", "higher_is_better=false"]) == 0
    dmos = json.loads(capsys.readouterr().out)["metrics"]
    assert dmos["srcc"] == pytest.approx(mos["srcc"]) and dmos["plcc"] == pytest.approx(mos["plcc"])


def test_a_validation_part_calibrates_the_interval_that_results_and_scores_carry(tmp_path, csv_dataset, blur_records, capsys):
    """val_fraction 0.7: 9 of split 0's 13 training images calibrate a 90% interval (the fewest it takes)."""
    out = tmp_path / "protocol"
    assert main(["--quiet", "evaluate", *csv_dataset, "--mode", "deiqt", "--seeds", "0", "--set", "val_fraction=0.7",
                 "--output", str(out)]) == 0
    run = json.loads((out / "split_0" / "result.json").read_text())
    interval = run["interval"]
    assert interval["coverage_target"] == 0.9 and interval["calibration_size"] == run["val_size"] == 9
    assert 0 <= interval["test_coverage"] <= 1 and 0 < interval["test_mean_width_raw"] <= 100
    recorded = json.loads((out / "split_0" / "model.json").read_text())["interval"]
    assert recorded == {"coverage": 0.9, "quantile": interval["quantile"], "scaled": False, "calibration_size": 9}
    summary = json.loads((out / "results.json").read_text())["interval"]
    assert summary["splits"] == 1 and summary["test_coverage"]["median"] == interval["test_coverage"]
    # the split's checkpoint gives every score its range; evaluate measures it on the same test part
    scores = tmp_path / "scores.csv"
    assert main(["--quiet", "score", str(blur_records[0].path), "--model", str(out / "split_0"), "-o", str(scores)]) == 0
    (row,) = read_results(scores)
    assert 0 < row.low <= row.score <= row.high < 100 and row.high - row.low <= 200 * interval["quantile"] + 1e-6
    capsys.readouterr()
    assert main(["--quiet", "evaluate", *csv_dataset, "--checkpoint", str(out / "split_0")]) == 0
    assert json.loads(capsys.readouterr().out)["interval"] == pytest.approx(interval)


def test_a_release_fits_all_but_the_images_that_calibrate_its_range(tmp_path, csv_dataset, capsys):
    """``--all`` with val_fraction 0.6: 10 of the 16 images are held out and calibrate the 90% range."""
    out = tmp_path / "release"
    assert main(["--quiet", "train", *csv_dataset, "--all", "--set", "val_fraction=0.6", "--output", str(out)]) == 0
    assert "trained on 6 of the 16 images (--all); its score range is calibrated on the 10" in capsys.readouterr().err
    saved = json.loads((out / "model.json").read_text())
    assert saved["train_size"] == 6 and saved["interval"]["calibration_size"] == 10


def test_a_finished_train_says_so_and_options_that_differ_are_named(tmp_path, csv_dataset, capsys):
    out = tmp_path / "model"
    train = ["--quiet", "train", *csv_dataset, "--output", str(out)]
    assert main(train) == 0
    result = json.loads(capsys.readouterr().out)
    files = {name: (out / name).stat().st_mtime_ns for name in ("model.safetensors", "result.json", "predictions.csv")}
    assert main(train) == 0  # nothing is trained or scored again
    captured = capsys.readouterr()
    assert "finished" in captured.err and "--restart" in captured.err and json.loads(captured.out) == result
    assert {name: (out / name).stat().st_mtime_ns for name in files} == files
    assert main([*train, "--set", "lr=2e-4"]) == 2
    assert "(differs in: training.lr); add --restart" in capsys.readouterr().err
    (out / "model.json").unlink()  # as if stopped before the end: the saved training state is left
    assert main([*train, "--set", "lr=2e-4", "--epochs", "2"]) == 2
    assert "(differs in: epochs, lr); continue it with the same options, or start over with --restart" in capsys.readouterr().err
