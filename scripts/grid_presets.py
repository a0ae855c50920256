"""Speed/accuracy presets of the test grid, for someone who scores many photos and may trade accuracy
for speed (``qfm-iqm score --grid N``). For each grid of a validation sweep (1x1 ... 4x4 crops, and a
whole-image pass), side by side:

- the validation SRCC of the released model's recipe: models trained on the fit part of each split and
  scored on its validation part (never the test part), read from the sweep's ``curves.csv``
  (``scripts/validation_sweep.py --config configs/validation/livec_grids.yaml``);
- the images/s of scoring photos with the released model on this machine: the whole command
  ``qfm-iqm score PHOTOS -o FILE --grid N`` (the default onnx runtime, start-up included), and its
  network alone in onnxruntime and in eager PyTorch (``qfm_iqm.experiments.benchmark.command_speed``). The
  whole-image pass is no ``--grid`` option: its network is measured in eager PyTorch only (the graph
  takes fixed-size crops).

    python scripts/grid_presets.py results/validation/livec-grids PHOTOS results/validation/livec-grids/presets.json
        [--limit N] [--model NAME]

Writes the JSON (with this command) and prints the table for docs/scoring.md. Run it on an otherwise
idle machine.
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import sys
import tempfile
from pathlib import Path
from statistics import median

from qfm_iqm.experiments.benchmark.command_speed import WHOLE, command_speed, machine, photos, run_cell
from qfm_iqm.inference.pretrained import DEFAULT_MODEL
from qfm_iqm.scoring import BATCH_SIZE
from qfm_iqm.utils.files import atomic_write_json

PREFIX = "val_srcc_grid"


def validation_srcc(sweep: Path) -> dict[str, dict[int, float]]:
    """Per grid of the sweep (``"1"`` ... ``"whole"``, in the sweep's order): the validation SRCC of each
    split (seed), from the rows of ``curves.csv`` that carry them (each run's last epoch)."""
    with open(sweep / "curves.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    grids = [column.removeprefix(PREFIX) for column in (rows[0] if rows else {}) if column.startswith(PREFIX)]
    if not grids:
        raise SystemExit(f"{sweep / 'curves.csv'} has no validation SRCC per grid ({PREFIX}N columns)")
    return {grid: {int(row["seed"]): float(row[PREFIX + grid]) for row in rows if row.get(PREFIX + grid)}
            for grid in grids}


def measure(sweep: Path, folder: Path, limit: int | None, model: str) -> dict:
    """Every preset's validation SRCC and speeds (see the module docstring), one cell after the other."""
    srcc = validation_srcc(sweep)
    files, inputs = photos(folder, limit)
    load_before = os.getloadavg()
    presets = []
    with tempfile.TemporaryDirectory(prefix="qfm_iqm_presets_") as tmp:
        command_speed(model, "onnx", files[:1], 1, None)  # warm-up (exports the graph on its first use)
        for name, by_seed in srcc.items():
            grid = name if name == WHOLE else int(name)
            network = {runtime: run_cell("network", model=model, runtime=runtime, files=files,
                                         batch_size=BATCH_SIZE, grid=grid)
                       for runtime in (["torch"] if grid == WHOLE else ["onnx", "torch"])}
            command = None if grid == WHOLE else command_speed(model, "onnx", inputs, len(files),
                                                               Path(tmp) / "scores.csv", ("--grid", name, "--overwrite"))
            presets.append({"grid": grid, "crops_per_image": network["torch"]["crops_per_image"],
                            "validation_srcc": {"median": round(median(by_seed.values()), 4),
                                                "splits": dict(sorted(by_seed.items()))},
                            "command": command, "network": network})
    return {"model": model, "sweep": str(sweep), "photos": str(folder), "images": len(files), "presets": presets,
            "machine": machine(load_before)}


def markdown(result: dict) -> str:
    """The presets table of ``result``."""
    lines = ["| `--grid` | crops per image | validation SRCC (median; each split) | `qfm-iqm score -o` | "
             "network alone: onnxruntime / eager PyTorch |", "|---|---|---|---|---|"]
    for preset in result["presets"]:
        srcc = preset["validation_srcc"]
        splits = ", ".join(f"{value:.3f}" for value in srcc["splits"].values())
        network = preset["network"]
        speeds = " / ".join(f"{network[runtime]['images_per_second']:.1f}" if runtime in network else "-"
                            for runtime in ("onnx", "torch"))
        command = f"{preset['command']['images_per_second']:.1f} images/s" if preset["command"] else "-"
        name = "whole image (no option)" if preset["grid"] == WHOLE else str(preset["grid"])
        lines.append(f"| {name} | {preset['crops_per_image']} | {srcc['median']:.3f} ({splits}) | {command} | "
                     f"{speeds} images/s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="a validation sweep's output folder (its curves.csv)")
    parser.add_argument("photos", type=Path, help="the photos to time scoring on")
    parser.add_argument("output", type=Path, help="results JSON")
    parser.add_argument("--limit", type=int, help="the first N photos of the folder only")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="the model timed (default: the released one)")
    args = parser.parse_args(argv)
    result = measure(args.sweep, args.photos, args.limit, args.model)
    result["command"] = "python scripts/grid_presets.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    atomic_write_json(args.output, result)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
