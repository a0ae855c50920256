"""Speed of ``qfm-iqm score`` as a user runs it, against the speed of its network alone, and the
network's FLOP-bound ceiling (``scripts/scoring_speed.py``, ``scripts/grid_presets.py``).

Every measurement runs in a process of its own (``python -m qfm_iqm.experiments.benchmark.command_speed CELL``),
one after the other, so that none shares the cores, caches or memory of another.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from qfm_iqm.scoring import find_images

__all__ = ["WHOLE", "command_speed", "flop_ceiling", "machine", "network_speed", "photos", "run_cell"]

WHOLE = "whole"  # the grid of a whole-image pass: the prepared image through the network in one piece
TIMED_TOGETHER = 32  # network calls decoded ahead, untimed, then timed together (about 350 MB of 3x3 crops)
# The command as its console script runs it, which also writes its peak resident memory (MiB) to a file
# when it exits (``peak_rss_mib``: the process's own, not that of the process it was started from).
CLI = [sys.executable, "-c", "import atexit, sys; from qfm_iqm.utils.memory import peak_rss_mib; "
       "atexit.register(lambda: open(sys.argv[1], 'w').write(str(peak_rss_mib()))); "
       "from qfm_iqm.cli.main import main; sys.exit(main(sys.argv[2:]))"]


def run_cell(kind: str, **options) -> dict:
    """:func:`network_speed` (``kind`` "network") or :func:`flop_ceiling` ("flops") in a fresh process."""
    cell = json.dumps({"kind": kind, **options})
    done = subprocess.run([sys.executable, "-m", "qfm_iqm.experiments.benchmark.command_speed", cell], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} cell failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def network_speed(model: str, runtime: str, files: list[str], batch_size: int, grid: int | str | None = None) -> dict:
    """Images/s of the network alone as ``qfm-iqm score`` runs it (the cached graph for ``onnx``, as many
    single-threaded calls at once as the command makes; the eager model for ``torch``), ``batch_size``
    images' crops per call, timing only the calls: the photos are decoded and cropped
    :data:`TIMED_TOGETHER` calls at a time, untimed, and those calls then timed together. The first call
    is not timed (it sets up buffers). ``grid``: crops per side (default: the model's), or :data:`WHOLE`
    (eager only, one image per call)."""
    from concurrent.futures import ThreadPoolExecutor

    from qfm_iqm.data.images import load_image
    from qfm_iqm.utils.allocator import reuse_freed_memory

    reuse_freed_memory()  # as the command does
    crops_of, run, join, crops_per_image, calls = _network(model, runtime, grid)
    if grid == WHOLE:
        batch_size = 1  # sizes differ from image to image
    starts = list(range(0, len(files), batch_size))
    run(join([crops_of(load_image(path)) for path in files[:batch_size]]))  # the untimed first call
    seconds = 0.0
    pool = ThreadPoolExecutor(calls) if calls > 1 else None  # one call at a time: in this thread, as the command
    for group in range(0, len(starts), TIMED_TOGETHER):
        batches = [join([crops_of(load_image(path)) for path in files[start : start + batch_size]])
                   for start in starts[group : group + TIMED_TOGETHER]]
        began = time.perf_counter()
        list(pool.map(run, batches) if pool is not None else map(run, batches))
        seconds += time.perf_counter() - began
    if pool is not None:
        pool.shutdown()
    return {"runtime": runtime, "grid": grid, "crops_per_image": crops_per_image, "batch_size": batch_size,
            "calls_at_once": calls, "images": len(files), "seconds": round(seconds, 3),
            "images_per_second": round(len(files) / seconds, 3)}


def _network(model: str, runtime: str, grid: int | str | None):
    """(image -> crops, crops -> member scores, join crops, crops per image, calls at once) of ``model`` in
    ``runtime``, as ``qfm-iqm score`` makes them."""
    if runtime == "onnx":
        import numpy as np

        from qfm_iqm.inference.graph import load_graph_scorer, usable_cpus

        if grid == WHOLE:
            raise ValueError("a whole-image pass runs in the torch runtime only (the graph takes fixed-size crops)")
        scorer = load_graph_scorer(model, grid, threads=1, calls=usable_cpus())
        if scorer is None:
            raise RuntimeError(f"no cached graph of {model}: score one image with it first")
        return scorer.crops, scorer.network.member_scores, np.concatenate, scorer.grid ** 2, scorer.calls
    import torch

    from qfm_iqm.api import load_model
    from qfm_iqm.inference.predict import whole_image

    scorer = load_model(model, runtime="torch", grid=None if grid == WHOLE else grid)

    def run(crops: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return scorer.network(crops).member_scores

    if grid == WHOLE:
        return lambda image: whole_image(image, scorer.preprocessing), run, torch.cat, 1, 1
    return scorer.crops, run, torch.cat, scorer.grid ** 2, 1


def flop_ceiling(model: str, matmul_size: int) -> dict:
    """The network's GFLOP per image (torch's FLOP counter on the eager model, one image's crops) and the
    best GFLOP/s of a dense ``matmul_size`` square float32 matrix product (5 tries, torch's default
    threads): their quotient is the most images/s the network could score on this machine."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from qfm_iqm.api import load_model

    scorer = load_model(model, runtime="torch")
    size = scorer.preprocessing.input_size
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        scorer.network(torch.zeros(scorer.grid ** 2, 3, size, size))
    a, b = torch.randn(matmul_size, matmul_size), torch.randn(matmul_size, matmul_size)
    torch.mm(a, b)
    seconds = []
    for _ in range(5):
        began = time.perf_counter()
        torch.mm(a, b)
        seconds.append(time.perf_counter() - began)
    gflop = counter.get_total_flops() / 1e9
    matmul = 2 * matmul_size ** 3 / min(seconds) / 1e9
    return {"gflop_per_image": round(gflop, 3), "crops_per_image": scorer.grid ** 2, "matmul_size": matmul_size,
            "matmul_gflop_per_second": round(matmul, 3), "ceiling_images_per_second": round(matmul / gflop, 3),
            "torch_threads": torch.get_num_threads()}


def command_speed(model: str, runtime: str, inputs: list[str], images: int, output: Path | None,
                  options: tuple[str, ...] = ()) -> dict:
    """Images/s and peak resident memory of one ``qfm-iqm score INPUTS`` process (``images`` photos, with
    ``-o output`` or printing its table, and ``options``), from its start to its exit."""
    arguments = ["--quiet", "score", *inputs, "--model", model, "--runtime", runtime, *options,
                 *(["-o", str(output)] if output else [])]
    with tempfile.TemporaryDirectory(prefix="qfm_iqm_command_") as tmp:
        peak, errors = Path(tmp) / "peak", Path(tmp) / "stderr"
        with open(errors, "w") as stderr:
            began = time.perf_counter()
            status = subprocess.run([*CLI, str(peak), *arguments], stdout=subprocess.DEVNULL, stderr=stderr).returncode
            seconds = time.perf_counter() - began
        if status != 0:
            raise RuntimeError(f"qfm-iqm {shlex.join(arguments[:8])} ... exited with {status}: "
                               f"{errors.read_text()[-2000:]}")
        peak_mib = float(peak.read_text())
    return {"runtime": runtime, "options": list(options), "output": "-o FILE" if output else "table", "images": images,
            "seconds": round(seconds, 3), "images_per_second": round(images / seconds, 3),
            "peak_rss_mib": round(peak_mib, 1)}


def photos(folder: Path, limit: int | None) -> tuple[list[str], list[str]]:
    """(the photos of ``folder``, sorted, the first ``limit`` of them; what to name on the command line)."""
    found, _ = find_images([folder])
    files = [file.path for file in found][:limit]
    if not files:
        raise ValueError(f"no images in {folder}")
    return files, [str(folder)] if limit is None else files


def machine(load_before: tuple[float, float, float]) -> dict:
    """The machine and how busy it was (load averages over 1, 5 and 15 minutes, before and after)."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": version("torch"), "onnxruntime": version("onnxruntime"),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def _main(argv: list[str]) -> int:
    options = json.loads(argv[0])
    kind = options.pop("kind")
    print(json.dumps((network_speed if kind == "network" else flop_ceiling)(**options)))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
