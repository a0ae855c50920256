"""Training, evaluation and scoring on 2 CPU processes (gloo) against 1 process, and resuming after SIGTERM.

The 2-process run is started once per module with ``torch.multiprocessing.spawn``; each process joins
the group through the same environment variables ``torchrun`` sets.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from conftest import tiny_config, tiny_vit_model
from qfm_iqm.cli.main import main
from qfm_iqm.data.records import ImageRecord
from qfm_iqm.inference.predict import predict_records
from qfm_iqm.inference.checkpoint import load_trained_model
from qfm_iqm.training.config import TrainConfig
from qfm_iqm.utils.distributed import GlobalBatchSampler, distributed_session, shard
from qfm_iqm.training.interrupt import StopRequest, TrainingInterrupted
from qfm_iqm.training.trainer import STATE_DIR, StepLosses, Trainer
from qfm_iqm.utils.checkpoint import load_checkpoint

WORLD = 2
TEST_IMAGES = 7  # does not divide by 2
# 1 and 2 processes differ only in the order of floating-point sums (gradient all-reduce, batch sizes
# of the matrix products). Measured over 8 steps: losses within 2e-7; weights within 5e-5, as AdamW
# turns rounding differences of near-zero gradients into steps of up to the learning rate (1e-3).
LOSS_TOLERANCE = 1e-5
WEIGHT_TOLERANCE = 2e-4

def vit_config() -> TrainConfig:
    """QFM-IQM with semantic noise and EMA distillation: global batch 4 + 2 teacher-labelled views."""
    return tiny_config(model=tiny_vit_model())


class LossCurveTrainer(Trainer):
    """Records the (all-process mean) losses of every step."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.curve: list[dict] = []

    def training_step(self, *args, **kwargs) -> StepLosses:
        losses = super().training_step(*args, **kwargs)
        self.curve.append(vars(losses))
        return losses


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def protocol_arguments(records: list[ImageRecord], output: Path) -> list[str]:
    """``qfm-iqm evaluate`` arguments: the protocol on split seed 3 of the records as a CSV dataset."""
    root = records[0].path.parent
    (root / "labels.csv").write_text("image,mos\n" + "".join(f"{r.path.name},{r.raw_label}\n" for r in records))
    config = output.parent / "tiny_vit.json"
    config.write_text(json.dumps({**asdict(vit_config()), "epochs": 1}))
    return ["--dataset", "csv", "--data-root", str(root), "--dataset-option", "file=labels.csv",
            "--dataset-option", "low=0", "--dataset-option", "high=100", "--config", str(config),
            "--seeds", "3", "--output", str(output)]


def write_benchmark_config(records: list[ImageRecord], out: Path) -> Path:
    """A benchmark of the tiny ViT in DEIQT mode on the records as a CSV dataset (split seed 3), and the
    cross-dataset pair of that dataset to itself listed twice."""
    root = records[0].path.parent
    (root / "labels.csv").write_text("image,mos\n" + "".join(f"{r.path.name},{r.raw_label}\n" for r in records))
    dataset = {"name": "csv", "root": str(root), "options": {"file": "labels.csv", "low": 0, "high": 100}}
    config = {"name": "ddp", "seeds": [3], "train": {**asdict(vit_config()), "epochs": 1},
              "datasets": [{**dataset, "id": "blur"}, {**dataset, "id": "again"}], "methods": [{"name": "deiqt", "train": {"mode": "deiqt", "teacher": "none"}}],
              "cross": [{"train": "blur", "test": "again"}]}
    path = out / "benchmark.json"
    path.write_text(json.dumps(config))
    return path


def _worker(rank: int, port: int, records: list[ImageRecord], out: Path) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    with distributed_session("cpu"):
        trainer = LossCurveTrainer(vit_config(), records, out / "train", progress=False)
        trainer.fit()
        predictions = predict_records(trainer.model, records[:TEST_IMAGES], grid=2)
        inputs = [str(r.path) for r in records[:5]] + [str(out / "broken.jpg")]
        status = main(["--quiet", "score", *inputs, "--model", str(out / "train"), "-o", str(out / "scores.csv")])
        evaluate_status = main(["--quiet", "evaluate", *protocol_arguments(records, out / "protocol")])
        benchmark_status = main(["--quiet", "benchmark", "--config", str(out / "benchmark.json"), "--output", str(out / "bench")])
        weights_sum = sum(p.double().sum().item() for p in trainer.model.parameters())
        report = {"curve": trainer.curve, "scores": predictions.scores.tolist(), "score_status": status,
                  "spreads": predictions.spreads.tolist(), "weights_sum": weights_sum, "evaluate_status": evaluate_status,
                  "benchmark_status": benchmark_status}
    (out / f"rank{rank}.json").write_text(json.dumps(report))


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, blur_records) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("ddp")
    write_benchmark_config(blur_records, out)
    (out / "broken.jpg").write_bytes(b"not an image")
    mp.spawn(_worker, args=(_free_port(), blur_records, out), nprocs=WORLD, join=True)
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, blur_records) -> LossCurveTrainer:
    trainer = LossCurveTrainer(vit_config(), blur_records, tmp_path_factory.mktemp("single"), progress=False)
    trainer.fit()
    return trainer


def test_two_processes_train_like_one_at_the_same_global_batch(two_processes, one_process) -> None:
    out, reports = two_processes
    single = one_process.curve
    assert len(single) == 8 and all(report["curve"] == reports[0]["curve"] for report in reports)
    assert sum(step["matched"] > 0 for step in single) >= 6  # semantic noise was active
    for step, (one, two) in enumerate(zip(single, reports[0]["curve"])):
        for key in one:
            assert two[key] == pytest.approx(one[key], abs=LOSS_TOLERANCE), (step, key)
    tensors, _ = load_checkpoint(out / "train")
    for name, value in one_process.model.state_dict().items():
        assert torch.allclose(tensors[name].float(), value.float(), atol=WEIGHT_TOLERANCE), name
    assert reports[1]["weights_sum"] == reports[0]["weights_sum"]  # the processes stay in step
    memory = one_process.memory
    assert memory.size == memory.capacity  # the memory of 1 process filled with whole global batches


def test_distributed_evaluation_returns_every_test_image_once_in_order(two_processes, blur_records) -> None:
    out, reports = two_processes
    model = load_trained_model(out / "train")
    expected = predict_records(model, blur_records[:TEST_IMAGES], grid=2)
    for report in reports:
        np.testing.assert_allclose(report["scores"], expected.scores, rtol=0, atol=1e-6)
        np.testing.assert_allclose(report["spreads"], expected.spreads, rtol=0, atol=1e-6)


def test_sharded_scoring_writes_one_merged_file_in_input_order(two_processes, blur_records) -> None:
    out, reports = two_processes
    assert [report["score_status"] for report in reports] == [1, 1]  # one input is not an image
    lines = (out / "scores.csv").read_text().splitlines()
    expected = [str(r.path) for r in blur_records[:5]] + [str(out / "broken.jpg")]
    assert lines[0] == "path,score,low,high,uncertainty,error"
    assert [line.split(",")[0] for line in lines[1:]] == expected
    assert "not a recognised image file" in lines[-1]


def test_global_batches_are_split_across_ranks(monkeypatch) -> None:
    whole = GlobalBatchSampler(10, 4, seed=3)
    whole.set_epoch(1)
    batches = list(whole)
    assert [index for batch in batches for index in batch] == whole.permutation()[:8]
    whole.set_epoch(1, start=1)
    assert list(whole) == batches[1:]
    whole.set_epoch(2)
    assert list(whole) != batches
    parts = []
    for rank in range(2):
        monkeypatch.setattr("qfm_iqm.utils.distributed.rank", lambda rank=rank: rank)
        monkeypatch.setattr("qfm_iqm.utils.distributed.world_size", lambda: 2)
        sampler = GlobalBatchSampler(10, 4, seed=3)
        sampler.set_epoch(1)
        parts.append(list(sampler))
        assert shard(list(range(7))) == list(range(rank, 7, 2))
        with pytest.raises(ValueError, match="does not split evenly"):
            GlobalBatchSampler(10, 3, seed=3)
    assert [a + b for a, b in zip(*parts)] == batches


class SigtermAt(Trainer):
    """Sends itself SIGTERM during step ``step`` (0-based) of epoch ``epoch``."""

    def __init__(self, *args, at: tuple[int, int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.at = at

    def training_step(self, *args, **kwargs) -> StepLosses:
        if (self.epoch, self.step) == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().training_step(*args, **kwargs)


def test_sigterm_saves_a_step_state_and_resume_reproduces_the_run(tmp_path, blur_records) -> None:
    config = tiny_config(epochs=2)  # EfficientNet-Lite0, semantic noise, EMA teacher
    straight = Trainer(config, blur_records, tmp_path / "straight", progress=False)
    straight.fit()
    handler = signal.getsignal(signal.SIGTERM)
    cut = SigtermAt(config, blur_records, tmp_path / "cut", progress=False, at=(1, 1))
    with pytest.raises(TrainingInterrupted, match=r"SIGTERM at epoch 2, step 2 of 4.*--resume") as stopped:
        cut.fit()
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == handler  # the handler is put back
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    resumed = Trainer(config, blur_records, tmp_path / "cut", progress=False)
    resumed.fit(resume=True)
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    for one, two in zip(straight.history.epochs, resumed.history.epochs):
        for key in ("total", "clean", "noise", "kd", "matched", "lr"):
            assert one[key] == two[key], key
    assert torch.equal(straight.memory.tokens, resumed.memory.tokens)
    assert straight.teacher.updates == resumed.teacher.updates


def test_stop_request_records_the_first_signal_and_a_second_ctrl_c_aborts() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}  # SIG_IGN under nohup
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)  # what torchrun sends its processes after a Ctrl-C
        assert stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert {sig: signal.getsignal(sig) for sig in before} == before  # the handlers found on entry are back


def test_cli_train_stops_on_sigterm_and_continues_with_resume(tmp_path, blur_records, monkeypatch, capsys) -> None:
    root = blur_records[0].path.parent
    (root / "mos.csv").write_text("image,mos\n" + "".join(f"{r.path.name},{r.raw_label}\n" for r in blur_records))
    (tmp_path / "tiny.json").write_text(json.dumps({**tiny_config(mode="deiqt", epochs=2).to_dict(), "model": {
        "dim": 64, "num_heads": 4, "preprocessing": {"input_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3}}}))
    command = ["--quiet", "train", "--dataset", "csv", "--data-root", str(root), "--dataset-option", "file=mos.csv",
               "--dataset-option", "low=0", "--dataset-option", "high=100", "--config", str(tmp_path / "tiny.json"),
               "--all", "--output", str(tmp_path / "run")]
    original = Trainer.training_step

    def sigterm_in_epoch_2(self, *args, **kwargs):
        if (self.epoch, self.step) == (1, 0):
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", sigterm_in_epoch_2)
    assert main(command) == 128 + signal.SIGTERM
    assert "run the same command with --resume" in capsys.readouterr().err
    assert (tmp_path / "run" / STATE_DIR).exists() and not (tmp_path / "run" / "model.safetensors").exists()
    monkeypatch.setattr(Trainer, "training_step", original)
    assert main([*command, "--resume"]) == 0
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [epoch["epoch"] for epoch in history["epochs"]] == [1, 2]
    with pytest.raises(SystemExit):
        main([*command, "--resume", "--restart"])


def test_distributed_protocol_writes_one_result_with_every_test_image_once(two_processes, blur_records, tmp_path) -> None:
    out, reports = two_processes
    assert [report["evaluate_status"] for report in reports] == [0, 0]
    split = out / "protocol" / "split_3"
    result = json.loads((split / "result.json").read_text())
    rows = [line.split(",") for line in (split / "predictions.csv").read_text().splitlines()[1:]]
    assert len(rows) == result["test_size"] == len({row[0] for row in rows}) == 3
    assert json.loads((out / "protocol" / "results.json").read_text())["runs"][0]["seed"] == 3
    assert main(["--quiet", "evaluate", *protocol_arguments(blur_records, tmp_path / "protocol")]) == 0
    single = [line.split(",") for line in (tmp_path / "protocol" / "split_3" / "predictions.csv").read_text().splitlines()[1:]]
    assert [row[0] for row in single] == [row[0] for row in rows]
    np.testing.assert_allclose([float(r[3]) for r in rows], [float(r[3]) for r in single], rtol=0, atol=1e-4)


def test_distributed_benchmark_writes_each_result_once(two_processes, blur_records) -> None:
    out, reports = two_processes
    assert [report["benchmark_status"] for report in reports] == [0, 0]
    cell = json.loads((out / "bench" / "blur" / "deiqt" / "results.json").read_text())
    assert [run["seed"] for run in cell["runs"]] == [3]
    cross = json.loads((out / "bench" / "cross" / "deiqt" / "blur__to__again.json").read_text())
    rows = (out / "bench" / "cross" / "deiqt" / "blur__to__again.csv").read_text().splitlines()[1:]
    assert cross["test_size"] == len(rows) == len({row.split(",")[0] for row in rows}) == len(blur_records)
    assert "blur → again" in (out / "bench" / "table.md").read_text()
