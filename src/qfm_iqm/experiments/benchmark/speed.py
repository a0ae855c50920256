"""Throughput cells: end-to-end scoring (images/s) in each runtime and training (crops/s), each with
peak memory.

Every cell runs in a fresh Python process (``python -m qfm_iqm.experiments.benchmark.speed``) so that its peak
resident memory is its own and earlier cells cannot warm caches for it. Models are built by
architecture name with fixed random weights (the weights do not change the speed; fixed, so that
their exported graph is cached across runs), or loaded by released-model name / checkpoint path.
Before a model's onnx scoring cells, an ``onnx-export`` cell makes its graph (or finds it cached), so
that the scoring cells neither time the export nor count its memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from qfm_iqm.data.records import ImageRecord
from qfm_iqm.utils.memory import peak_rss_mib
from qfm_iqm.utils.allocator import reuse_freed_memory

if TYPE_CHECKING:  # a cell's process imports no more than its measurement does
    from qfm_iqm.experiments.benchmark.config import SpeedSpec


def make_jpegs(folder: Path, count: int, size: int, seed: int = 0) -> list[Path]:
    """``count`` photo-like ``size`` x ``size`` JPEGs (smooth colour fields plus fine noise), quality 90."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (max(2, size // 25),) * 2 + (3,), dtype=np.uint8))
        base = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
        pixels = np.clip(base + rng.normal(0.0, 8.0, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"bench_{i:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def _scorer(model: str, device: str, runtime: str):
    """A released model or checkpoint through ``load_model`` (which, with a cached graph, imports no
    model code: the cell's memory is what a user's process holds), or an architecture with fixed
    random weights."""
    from qfm_iqm.api import Scorer, load_model
    from qfm_iqm.inference.pretrained import release_name

    if release_name(model) is not None or Path(model).exists():
        return load_model(model, device, runtime=runtime)
    from qfm_iqm.inference.speed import for_inference
    from qfm_iqm.models.qfm import create_model, list_architectures

    if model not in list_architectures():
        return load_model(model, device, runtime=runtime)  # its error names what is available
    torch.manual_seed(0)
    network = for_inference(create_model(model, pretrained_backbone=False))  # as load_model does
    return Scorer(network, device=device, runtime=runtime)


def measure_onnx_export(model: str, device: str) -> dict:
    """Seconds to make the onnx runtime's scorer, and whether its graph was exported (else it was cached)."""
    started = time.time()
    scorer = _scorer(model, device, "onnx")
    seconds = time.time() - started
    return {"seconds": round(seconds, 3), "exported": scorer.network.path.stat().st_mtime >= started}


def measure_scoring(model: str, batch_size: int, images: int, image_size: int, device: str, runtime: str) -> dict:
    """Images/s of ``qfm_iqm.scoring.score_files`` (decoding included) after a one-image warm-up."""
    from qfm_iqm.scoring import auto_workers, score_files

    with tempfile.TemporaryDirectory(prefix="qfm_iqm_speed_") as tmp:
        paths = make_jpegs(Path(tmp), images, image_size)
        scorer = _scorer(model, device, runtime)
        score_files(scorer, paths[:1])
        workers = auto_workers()
        start = time.perf_counter()
        results = score_files(scorer, paths, batch_size, workers)
        seconds = time.perf_counter() - start
    failed = [r.error for r in results if r.error is not None]
    if failed:
        raise RuntimeError(f"{len(failed)} generated images failed to score, e.g. {failed[0]}")
    return {"images": images, "image_size": image_size, "workers": workers, "seconds": round(seconds, 3),
            "images_per_second": round(images / seconds, 3)}


def measure_training(model: str, batch_size: int, steps: int, image_size: int, device: str, mode: str = "qfm") -> dict:
    """Training crops/s of ``Trainer.training_step`` over ``steps`` steps after one warm-up step."""
    from qfm_iqm.models.qfm import architecture_config, build_model
    from qfm_iqm.training.config import TrainConfig
    from qfm_iqm.training.trainer import Trainer

    with tempfile.TemporaryDirectory(prefix="qfm_iqm_speed_") as tmp:
        config = TrainConfig(mode=mode, batch_size=batch_size, device=device, model=architecture_config(model))
        paths = make_jpegs(Path(tmp), 2 * max(batch_size, config.kd_views), image_size)
        records = [ImageRecord(path=p, label=(i % 10) / 10, raw_label=(i % 10) / 10) for i, p in enumerate(paths)]
        # a frozen teacher costs the same per step whether trained or not; its own training is not timed
        frozen = build_model(config.model, pretrained_backbone=False) if config.teacher == "pretrained" else None
        trainer = Trainer(config, records, Path(tmp) / "out", progress=False, teacher_model=frozen)
        kd = trainer._side_batches(trainer.kd_loader)
        batches = iter(trainer.loader)
        trainer.model.train()

        def step() -> None:
            nonlocal batches
            try:
                images, labels, ids = next(batches)
            except StopIteration:
                batches = iter(trainer.loader)
                images, labels, ids = next(batches)
            trainer.training_step(images, labels, ids, next(kd) if kd else None)

        step()  # warm-up (and image decoding into the cache)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        seconds = time.perf_counter() - start
    crops = steps * (batch_size + (config.kd_views if trainer.teacher is not None else 0))
    return {"mode": mode, "steps": steps, "crops": crops, "seconds": round(seconds, 3),
            "crops_per_second": round(crops / seconds, 3)}


def run_cell(kind: str, model: str, batch_size: int, runtime: str, spec: SpeedSpec) -> dict:
    """One cell in a fresh process; returns its result (``error`` set when it failed)."""
    cell = {"kind": kind, "model": model, "batch_size": batch_size, "runtime": runtime, "device": spec.device}
    payload = {**cell, "spec": spec.__dict__}
    process = subprocess.run(
        [sys.executable, "-m", "qfm_iqm.experiments.benchmark.speed", json.dumps(payload)],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if process.returncode != 0:
        lines = [line for line in process.stderr.strip().splitlines() if line.strip()]
        return {**cell, "error": lines[-1] if lines else f"exit status {process.returncode}"}
    return {**cell, **json.loads(process.stdout.strip().splitlines()[-1])}


def run_speed(spec: SpeedSpec) -> list[dict]:
    """Every cell of ``spec``, one after the other (never in parallel): per model, the scoring cells of
    each runtime (the onnx ones after an ``onnx-export`` cell), then the training cells."""
    cells = []
    for model in spec.models:
        for runtime in spec.score_runtimes:
            cells += [("onnx-export", model, 0, runtime)] if runtime == "onnx" else []
            cells += [("scoring", model, batch, runtime) for batch in spec.score_batch_sizes]
        cells += [("training", model, batch, "torch") for batch in spec.train_batch_sizes]
    return [run_cell(*cell, spec) for cell in cells]


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="one speed cell (used by the benchmark runner)")
    parser.add_argument("payload", help="JSON: kind, model, batch_size, spec")
    payload = json.loads(parser.parse_args(argv).payload)
    reuse_freed_memory()  # as the qfm-iqm command does
    spec = payload["spec"]  # SpeedSpec's fields (its class is not imported here)
    if payload["kind"] == "onnx-export":
        result = measure_onnx_export(payload["model"], spec["device"])
    elif payload["kind"] == "scoring":
        result = measure_scoring(payload["model"], payload["batch_size"], spec["score_images"], spec["image_size"],
                                 spec["device"], payload["runtime"])
    else:
        result = measure_training(payload["model"], payload["batch_size"], spec["train_steps"], spec["image_size"],
                                  spec["device"])
    result.update(torch_threads=torch.get_num_threads(), peak_rss_mib=round(peak_rss_mib(), 1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
