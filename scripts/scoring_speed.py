"""The README's scoring-speed table, measured in one run on one machine. For each runtime:

- the network alone: its images/s on the crops of the same photos, ``--batch-size`` images per call as
  ``qfm-iqm score`` makes them, timing only the network calls (decoding and cropping not counted);
- the whole command: ``qfm-iqm score FOLDER -o FILE`` from process start to exit (start-up, model
  loading, decoding and writing included), and the same without ``-o`` (a table on stdout);
- their ratio, and the peak resident memory of each command's process;

and the FLOP-bound ceiling: the network's GFLOP per image (torch's FLOP counter, eager model) over the
GFLOP/s of a dense float32 matrix product on the same machine. Every cell runs in a process of its own,
one after the other (``qfm_iqm.experiments.benchmark.command_speed``); each runtime is first warmed up on one photo,
untimed (this exports the onnx graph on its first use).

    python scripts/scoring_speed.py FOLDER results/benchmark/scoring-speed.json [--limit N] [--model NAME]
        [--runtimes onnx torch] [--batch-size N] [--matmul-size N]

Run it on an otherwise idle machine; the load average before and after is recorded with the results.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from pathlib import Path

from qfm_iqm.experiments.benchmark.command_speed import command_speed, machine, photos, run_cell
from qfm_iqm.inference.pretrained import DEFAULT_MODEL
from qfm_iqm.scoring import BATCH_SIZE
from qfm_iqm.utils.files import atomic_write_json


def measure(folder: Path, limit: int | None, model: str, runtimes: list[str], batch_size: int, matmul_size: int) -> dict:
    """Every cell (see the module docstring), one after the other."""
    files, inputs = photos(folder, limit)
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="qfm_iqm_speed_") as tmp:
        for runtime in runtimes:
            command_speed(model, runtime, files[:1], 1, None)  # warm-up
            network = run_cell("network", model=model, runtime=runtime, files=files, batch_size=batch_size)
            commands = [command_speed(model, runtime, inputs, len(files), Path(tmp) / f"{runtime}.csv"),
                        command_speed(model, runtime, inputs, len(files), None)]
            rows.append({"runtime": runtime, "network": network, "commands": commands,
                         "ratio": round(commands[0]["images_per_second"] / network["images_per_second"], 3)})
    flops = run_cell("flops", model=model, matmul_size=matmul_size)
    return {"model": model, "images": len(files), "folder": str(folder), "batch_size": batch_size, "runtimes": rows,
            "flop_ceiling": flops, "machine": machine(load_before)}


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
    lines += ["", f"FLOP-bound ceiling: {flops['gflop_per_image']:.2f} GFLOP per image, a {flops['matmul_size']}x"
              f"{flops['matmul_size']} float32 matrix product at {flops['matmul_gflop_per_second']:.0f} GFLOP/s: "
              f"{flops['ceiling_images_per_second']:.1f} images/s."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="the photos to score")
    parser.add_argument("output", type=Path, help="results JSON")
    parser.add_argument("--limit", type=int, help="the first N photos of the folder only")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--runtimes", nargs="+", choices=["onnx", "torch"], default=["onnx", "torch"])
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=BATCH_SIZE,
                        help="images per network call in the network-alone cells (default: the command's)")
    parser.add_argument("--matmul-size", dest="matmul_size", type=int, default=2048)
    args = parser.parse_args(argv)
    result = measure(args.folder, args.limit, args.model, args.runtimes, args.batch_size, args.matmul_size)
    result["command"] = "python scripts/scoring_speed.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    atomic_write_json(args.output, result)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
