"""End-to-end scoring throughput: images/s from JPEG files to scores (decoding included), peak memory.

Generates N 500x500 JPEGs, scores them once to warm up, then times ``qfm_iqm.scoring.score_files``
(the code behind ``qfm-iqm score``) and writes a JSON result. Run it on an otherwise idle machine:

    python benchmarks/scoring_speed.py --images 256 --workers 2 --output results/scoring_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from qfm_iqm import __version__
from qfm_iqm.api import load_model
from qfm_iqm.models.pretrained import DEFAULT_MODEL
from qfm_iqm.scoring import score_files


def make_jpegs(folder: Path, count: int, size: int, seed: int = 0) -> list[Path]:
    """``count`` photo-like JPEGs (smooth colour fields plus fine noise), quality 90."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (size // 25, size // 25, 3), dtype=np.uint8))
        base = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
        pixels = np.clip(base + rng.normal(0.0, 8.0, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"bench_{i:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def peak_rss_mb() -> dict[str, float]:
    """Peak resident memory of this process and of its largest finished child (DataLoader workers)."""
    unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    to_mb = unit / 2**20
    return {
        "main": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * to_mb,
        "largest_child": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * to_mb,
    }


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "qfm_iqm": __version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="released model name or checkpoint path")
    parser.add_argument("--images", type=int, default=128, help="number of generated JPEGs")
    parser.add_argument("--size", type=int, default=500, help="side of the generated images")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--output", type=Path, default=Path("results/scoring_speed.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()

    with tempfile.TemporaryDirectory(prefix="qfm_iqm_bench_") as tmp:
        paths = make_jpegs(Path(tmp), args.images, args.size)
        start = time.perf_counter()
        scorer = load_model(args.model, args.device)
        load_seconds = time.perf_counter() - start
        score_files(scorer, paths[:1])  # warm-up, not timed
        start = time.perf_counter()
        results = score_files(scorer, paths, args.batch_size, args.workers)
        seconds = time.perf_counter() - start
    failed = [r for r in results if r.error is not None]
    if failed:
        raise SystemExit(f"{len(failed)} generated images failed to score, e.g. {failed[0].error}")

    result = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": str(args.model),
        "images": args.images,
        "image_size": [args.size, args.size],
        "crops_per_image": scorer.grid**2,
        "crop_size": scorer.preprocessing.input_size,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "model_load_seconds": round(load_seconds, 3),
        "seconds": round(seconds, 3),
        "images_per_second": round(args.images / seconds, 3),
        "peak_rss_mb": {k: round(v, 1) for k, v in peak_rss_mb().items()},
        "machine": info,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
