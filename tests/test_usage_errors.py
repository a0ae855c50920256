"""An absent or misspelt device and unobtainable backbone weights are usage errors: one line on stderr,
exit status 2, and no output file written."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest
import torch

from qfm_iqm.api import load_model
from qfm_iqm.cli.main import main
from qfm_iqm.utils.device import usable_device

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")


@pytest.fixture()
def csv_options(tmp_path: Path, blur_records) -> list[str]:
    root = blur_records[0].path.parent
    (root / "labels.csv").write_text("image,mos\n" + "".join(f"{r.path.name},{r.raw_label}\n" for r in blur_records))
    config = tmp_path / "tiny.yaml"
    config.write_text("epochs: 1\nbatch_size: 4\neval_grid: 2\n"
                      "model:\n  dim: 64\n  num_heads: 4\n  preprocessing: {input_size: 64, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}\n")
    return ["--dataset", "csv", "--data-root", str(root), "--dataset-option", "file=labels.csv", "--dataset-option", "low=0",
            "--dataset-option", "high=100", "--config", str(config), "--quiet"]


@pytest.fixture()
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty Hugging Face cache (and offline, as every test is)."""
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))


def _one_error_line(capsys: pytest.CaptureFixture[str], *expected: str) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert all(text in lines[0] for text in expected), lines[0]
    return lines[0]


def test_usable_device_names_the_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    assert usable_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'cdua': use auto, cpu, cuda, cuda:N or mps"):
        usable_device("cdua")
    with pytest.raises(ValueError, match="not supported"):
        usable_device("meta")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert usable_device("cuda:1") == torch.device("cuda", 1) and usable_device("auto") == torch.device("cuda")
    with pytest.raises(ValueError, match=r"this machine has 2 CUDA GPU\(s\), cuda:0 to cuda:1"):
        usable_device("cuda:2")


@NO_GPU
def test_cuda_without_a_gpu(capsys) -> None:
    with pytest.raises(ValueError, match="'cuda': no CUDA GPU is available on this machine"):
        usable_device("cuda")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        load_model(device="cuda")


@NO_GPU
@pytest.mark.parametrize(("device", "expected"), [("cuda", "no CUDA GPU is available"), ("cdua", "unknown device 'cdua'")])
def test_score_on_an_absent_or_misspelt_device(tmp_path: Path, blur_records, capsys, device: str, expected: str) -> None:
    output = tmp_path / "scores.csv"
    assert main(["--quiet", "score", str(blur_records[0].path), "--device", device, "-o", str(output)]) == 2
    _one_error_line(capsys, expected)
    assert list(tmp_path.iterdir()) == []


@NO_GPU
def test_train_evaluate_and_benchmark_on_an_absent_device(tmp_path: Path, csv_options: list[str], capsys) -> None:
    assert main(["train", *csv_options, "--device", "cuda", "--output", str(tmp_path / "run")]) == 2
    _one_error_line(capsys, "no CUDA GPU")
    assert main(["evaluate", *csv_options, "--device", "cuda:1", "--seeds", "0", "--output", str(tmp_path / "protocol")]) == 2
    _one_error_line(capsys, "'cuda:1'")
    benchmark = tmp_path / "bench.yaml"
    benchmark.write_text("name: b\nseeds: [0]\ndatasets: [livec]\nmethods: [{name: qfm, train: {mode: qfm}}]\n")
    assert main(["benchmark", "--config", str(benchmark), "--set", "device=cuda", "--output", str(tmp_path / "bench")]) == 2
    _one_error_line(capsys, "no CUDA GPU")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.yaml", "tiny.yaml"]


def test_train_with_a_vit_and_no_weights(tmp_path: Path, csv_options: list[str], empty_hub_cache, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", *csv_options, "--set", "model.backbone=deit3_small_patch16_224", "--output", str(out)]) == 2
    _one_error_line(capsys, "deit3_small_patch16_224.fb_in1k weights are not in the Hugging Face cache", "--backbone-weights FILE")
    assert not out.exists()


@pytest.mark.parametrize("problem", ["missing", "corrupt"])
def test_train_with_a_missing_or_corrupt_weights_file(tmp_path: Path, csv_options: list[str], capsys, problem: str) -> None:
    weights = tmp_path / "weights.safetensors"
    if problem == "corrupt":
        weights.write_bytes(b"\x00not a safetensors file")
    out = tmp_path / "run"
    arguments = ["train", *csv_options, "--set", "model.backbone=deit3_small_patch16_224", "--backbone-weights", str(weights)]
    assert main([*arguments, "--output", str(out)]) == 2
    _one_error_line(capsys, str(weights), "not found" if problem == "missing" else "cannot read weights file")
    assert not out.exists()
