"""The ``qfm-iqm`` entry point: global options, start-up imports, pointers for wrong inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dataset_fixtures import make_livec

from qfm_iqm.cli.main import build_parser, main


def test_global_options_before_or_after_the_command() -> None:
    parser = build_parser()
    after = parser.parse_args(["score", "a.jpg", "--quiet", "--threads", "1"])
    assert after.quiet and after.threads == 1
    before = parser.parse_args(["--quiet", "--threads", "2", "score", "a.jpg"])
    assert before.quiet and before.threads == 2  # not reset by the command's parser
    plain = parser.parse_args(["score", "a.jpg"])
    assert not plain.quiet and plain.threads is None


def test_threads_sets_torch_threads(capsys: pytest.CaptureFixture[str]) -> None:
    previous = torch.get_num_threads()
    try:
        assert main(["datasets", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
        assert main(["datasets", "--threads", "0"]) == 2
        assert "--threads must be >= 1" in capsys.readouterr().err
    finally:
        torch.set_num_threads(previous)


def test_help_does_not_import_torch() -> None:
    code = "import sys; from qfm_iqm.cli.main import build_parser; build_parser().format_help(); print(sorted({'torch', 'timm'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_protocol_folder_as_model_points_to_its_split_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for seed in (0, 1):
        (tmp_path / "runs" / f"split_{seed}").mkdir(parents=True)
        (tmp_path / "runs" / f"split_{seed}" / "model.safetensors").write_bytes(b"")
    image = tmp_path / "a.png"
    image.write_bytes(b"")
    assert main(["score", str(image), "--model", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "protocol results folder" in err and "split_0, split_1" in err


def test_evaluate_refuses_the_release_on_the_data_it_was_trained_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The released model (named with underscores here) trained on every LIVEC image it knew."""
    root = make_livec(tmp_path / "livec")
    assert main(["evaluate", "--checkpoint", "qfm_iqm_lite0_livec", "--dataset", "livec", "--data-root", str(root)]) == 2
    assert "was trained on 6 of the 6 images to test (every image of LIVEC)" in capsys.readouterr().err


def test_score_usage_errors_come_before_torch_is_imported(tmp_path: Path) -> None:
    """Every option, input and output check of ``score`` runs before the model loads, without torch."""
    image = tmp_path / "a.png"
    image.write_bytes(b"")
    (tmp_path / "done.csv").write_text("path,score,low,high,uncertainty,error\n")
    cases = {
        "the extension must be one of": ["-o", str(tmp_path / "out.txt")],
        "done.csv exists: add --overwrite": ["-o", str(tmp_path / "done.csv")],
        "--resume and --overwrite need -o FILE": ["--resume"],
        "--grid must be >= 1": ["--grid", "0"],
        "--batch-size must be >= 1": ["--batch-size", "0"],
        "--threads must be >= 1": ["--threads", "0"],
        "neither a released model": ["--model", str(tmp_path / "nope")],
        f"no such file or folder: {tmp_path / 'typo'}": [str(tmp_path / "typo")],
    }
    code = ("import json, sys; from qfm_iqm.cli.main import main; status = main(json.loads(sys.argv[1])); "
            "print(json.dumps([status, sorted({'torch', 'timm', 'onnxruntime'} & set(sys.modules))]))")
    for message, options in cases.items():
        argv = ["score", str(image), *options]
        done = subprocess.run([sys.executable, "-c", code, json.dumps(argv)], capture_output=True, text=True, check=True)
        assert json.loads(done.stdout) == [2, []], (argv, done.stderr)
        assert done.stderr.startswith("error: ") and message in done.stderr, (argv, done.stderr)
