"""How many crops should one onnxruntime call take? Scores 128 generated 500x500 JPEGs with the default
model in the onnx runtime (``qfm_iqm.experiments.benchmark.speed.measure_scoring``: the CLI's batch of 16 images,
decoding included) for each chunk size, each in a fresh process, and records images/s and peak RSS.

    python scripts/onnx_chunk_speed.py results/benchmark/onnx-chunks.json [--chunks 9 18 36 144]

144 crops is one call per batch (16 images x 9 crops), as before chunking.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CELL = """
import json, sys
from qfm_iqm.inference import runtime
from qfm_iqm.experiments.benchmark.speed import measure_scoring
from qfm_iqm.utils.memory import peak_rss_mib
from qfm_iqm.inference.pretrained import DEFAULT_MODEL
runtime.CHUNK_CROPS = int(sys.argv[1])
result = measure_scoring(DEFAULT_MODEL, 16, 128, 500, "cpu", "onnx")
print(json.dumps({"model": DEFAULT_MODEL, "chunk_crops": runtime.CHUNK_CROPS, **result, "peak_rss_mib": round(peak_rss_mib(), 1)}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path)
    parser.add_argument("--chunks", type=int, nargs="+", default=[9, 18, 36, 144])
    args = parser.parse_args()
    rows = []
    for chunk in args.chunks:
        process = subprocess.run([sys.executable, "-c", CELL, str(chunk)], capture_output=True, text=True, check=True)
        rows.append(json.loads(process.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    command = "python scripts/onnx_chunk_speed.py " + " ".join([str(args.output), "--chunks", *map(str, args.chunks)])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"command": command, "cells": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
