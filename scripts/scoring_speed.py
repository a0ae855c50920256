"""The README's scoring-speed table, measured in one run on one machine. For each runtime:

- the network alone: its images/s on the crops of the same photos, ``--batch-size`` images per call as
  ``qfm-iqm score`` makes them, timing only the network calls (decoding and cropping not counted);
- the whole command: ``qfm-iqm score FOLDER -o FILE`` from process start to exit (start-up, model
  loading, decoding and writing included), and the same without ``-o`` (a table on stdout);
- their ratio, and the peak resident memory of each command's process;

and the FLOP-bound ceiling: the network's GFLOP per image (torch's FLOP counter, eager model) over the
GFLOP/s of a dense float32 matrix product on the same machine. Every cell runs in a process of its own,
one after the other; each runtime is warmed up first on one photo (which exports the onnx graph on its
first use), untimed.

    python scripts/scoring_speed.py FOLDER results/benchmark/scoring-speed.json [--limit N] [--model NAME]
        [--runtimes onnx torch] [--batch-size N] [--matmul-size N]

Run it on an otherwise idle machine; the load average before and after is recorded with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qfm_iqm.models.pretrained import DEFAULT_MODEL
from qfm_iqm.scoring import BATCH_SIZE, find_images
from qfm_iqm.utils.files import atomic_write_json

CLI = [sys.executable, "-m", "qfm_iqm.cli.main", "--quiet", "score"]


def _cell(kind: str, **options) -> dict:
    """Run one measurement (:func:`network_cell` or :func:`flop_cell`) in a fresh process."""
    done = subprocess.run([sys.executable, __file__, "--cell", json.dumps({"kind": kind, **options})],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} cell failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def network_cell(model: str, runtime: str, files: list[str], batch_size: int) -> dict:
    """Images/s of the network alone, as ``qfm-iqm score`` loads it: the cached graph for ``onnx``, the
    eager model for ``torch``; ``batch_size`` images' crops per call."""
    from qfm_iqm.data.images import load_image
    from qfm_iqm.utils.allocator import reuse_freed_memory

    reuse_freed_memory()  # as the command does
    if runtime == "onnx":
        import numpy as np

        from qfm_iqm.graph import load_graph_scorer

        scorer = load_graph_scorer(model)
        if scorer is None:
            raise RuntimeError(f"no cached graph of {model}: warm the onnx runtime up first")
        run, join = scorer.network.member_scores, np.concatenate
    else:
        import torch

        from qfm_iqm.api import load_model

        scorer = load_model(model, runtime="torch")

        def run(crops: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return scorer.network(crops).member_scores

        join = torch.cat
    batches = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]
    seconds = 0.0
    for number, batch in enumerate(batches):
        crops = join([scorer.crops(load_image(path)) for path in batch])  # not timed
        if number == 0:
            run(crops)  # the first call sets up buffers: not timed
        start = time.perf_counter()
        run(crops)
        seconds += time.perf_counter() - start
    return {"images": len(files), "seconds": round(seconds, 3), "images_per_second": round(len(files) / seconds, 3),
            "crops_per_image": scorer.grid ** 2, "batch_size": batch_size}


def flop_cell(model: str, matmul_size: int) -> dict:
    """GFLOP of one image's crops through the eager network, and the best GFLOP/s of a dense
    ``matmul_size`` square float32 matrix product (5 tries) with torch's default threads."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from qfm_iqm.api import load_model

    scorer = load_model(model, runtime="torch")
    size = scorer.preprocessing.input_size
    crops = torch.zeros(scorer.grid ** 2, 3, size, size)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        scorer.network(crops)
    a, b = torch.randn(matmul_size, matmul_size), torch.randn(matmul_size, matmul_size)
    torch.mm(a, b)
    best = min(_timed(torch.mm, a, b) for _ in range(5))
    gflop = counter.get_total_flops() / 1e9
    matmul = 2 * matmul_size ** 3 / best / 1e9
    return {"gflop_per_image": round(gflop, 3), "matmul_size": matmul_size, "matmul_gflop_per_second": round(matmul, 3),
            "ceiling_images_per_second": round(matmul / gflop, 3), "torch_threads": torch.get_num_threads()}


def _timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def command_cell(model: str, runtime: str, inputs: list[str], images: int, output: Path | None) -> dict:
    """Images/s and peak RSS of one ``qfm-iqm score`` process, from its start to its exit. (Linux counts
    the peak of the process it was started from too; this one imports no torch, so it stays below.)"""
    argv = [*CLI, *inputs, "--model", model, "--runtime", runtime, *(["-o", str(output)] if output else [])]
    with tempfile.TemporaryFile("w+") as errors:
        start = time.perf_counter()
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(process.pid, 0)  # its own resource usage, peak RSS included
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            errors.seek(0)
            raise RuntimeError(f"{shlex.join(argv[:8])} ... exited with {process.returncode}: {errors.read()[-2000:]}")
    return {"output": "-o FILE" if output else "table", "images": images, "seconds": round(seconds, 3),
            "images_per_second": round(images / seconds, 3), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def measure(folder: Path, limit: int | None, model: str, runtimes: list[str], batch_size: int, matmul_size: int) -> dict:
    """Every cell (see the module docstring), one after the other."""
    files, _ = find_images([folder])
    files = [file.path for file in files][:limit]
    if not files:
        raise SystemExit(f"no images in {folder}")
    inputs = [str(folder)] if limit is None else files
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="qfm_iqm_speed_") as tmp:
        for runtime in runtimes:
            command_cell(model, runtime, files[:1], 1, None)  # warm-up: the onnx graph is exported on first use
            network = _cell("network", model=model, runtime=runtime, files=files, batch_size=batch_size)
            commands = [command_cell(model, runtime, inputs, len(files), Path(tmp) / f"{runtime}.csv"),
                        command_cell(model, runtime, inputs, len(files), None)]
            rows.append({"runtime": runtime, "network": network, "commands": commands,
                         "ratio": round(commands[0]["images_per_second"] / network["images_per_second"], 3)})
    flops = _cell("flops", model=model, matmul_size=matmul_size)
    return {"model": model, "images": len(files), "folder": str(folder), "batch_size": batch_size, "runtimes": rows,
            "flop_ceiling": flops, "machine": _machine(load_before)}


def _machine(load_before: tuple[float, float, float]) -> dict:
    from importlib.metadata import version

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": version("torch"), "onnxruntime": version("onnxruntime"),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def markdown(result: dict) -> str:
    """The README's table of ``result``."""
    lines = ["| runtime | network alone | `qfm-iqm score -o` (start-up included) | ratio | peak RSS with `-o` / table |",
             "|---|---|---|---|---|"]
    for row in result["runtimes"]:
        with_file, table = row["commands"]
        lines.append(f"| {row['runtime']} | {row['network']['images_per_second']:.1f} images/s | "
                     f"{with_file['images_per_second']:.1f} images/s | {row['ratio']:.2f} | "
                     f"{with_file['peak_rss_mib']:.0f} / {table['peak_rss_mib']:.0f} MiB |")
    flops = result["flop_ceiling"]
    lines.append("")
    lines.append(f"FLOP-bound ceiling: {flops['gflop_per_image']:.2f} GFLOP per image, a {flops['matmul_size']}x"
                 f"{flops['matmul_size']} float32 matrix product at {flops['matmul_gflop_per_second']:.0f} GFLOP/s: "
                 f"{flops['ceiling_images_per_second']:.1f} images/s.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, nargs="?", help="the photos to score")
    parser.add_argument("output", type=Path, nargs="?", help="results JSON")
    parser.add_argument("--limit", type=int, help="the first N photos of the folder only")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--runtimes", nargs="+", choices=["onnx", "torch"], default=["onnx", "torch"])
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=BATCH_SIZE,
                        help="images per network call in the network-alone cells (default: the command's)")
    parser.add_argument("--matmul-size", dest="matmul_size", type=int, default=2048)
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # one measurement, in its own process
    args = parser.parse_args(argv)
    if args.cell:
        options = json.loads(args.cell)
        kind = options.pop("kind")
        print(json.dumps((network_cell if kind == "network" else flop_cell)(**options)))
        return 0
    if args.folder is None or args.output is None:
        parser.error("FOLDER and OUTPUT are required")
    result = measure(args.folder, args.limit, args.model, args.runtimes, args.batch_size, args.matmul_size)
    result["command"] = "python scripts/scoring_speed.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    atomic_write_json(args.output, result)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
