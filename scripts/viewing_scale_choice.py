"""Which viewing scale makes a score independent of pixel count? Two conventions for photos whose shorter
side is below the scale the training data was rated at (500 px for LIVEC), measured on the validation
(calibration) part of a released LIVEC model, the photos it did not fit; no label is read.

    python scripts/viewing_scale_choice.py qfm-iqm-lite0-livec-v2-1 --data-root ../shared/datasets/livec \
        --output results/release/qfm_iqm_lite0_livec_v2_1/viewing_scale_choice.json

- ``downscale_only``: larger photos are reduced to the scale, smaller ones scored as they are (``max_short_side``).
- ``both_ways``: smaller photos are also enlarged to it (``min_short_side``), so every photo is seen at the
  one scale.

Photos larger than the scale are scored alike by both. For each photo (500 px) the script makes smaller
copies (``--small-sides``, Lanczos, as a photo's web copy would be) and enlargements of some of them
(``--enlarged-from`` -> ``--enlarged-side``, as an upscaled copy of a small photo would be), and reports per
convention: how the small copies' scores follow the originals' (SRCC, mean absolute and signed change in
MOS), and how the enlargements' scores follow the small photos they came from.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from qfm_iqm.api import load_model
from qfm_iqm.data.images import load_image
from qfm_iqm.data.registry import load_dataset
from qfm_iqm.data.splits import Split
from qfm_iqm.experiments.protocol import config_for_dataset, validation_part
from qfm_iqm.training.config import TrainConfig
from qfm_iqm.utils.checkpoint import atomic_write_json
from size_check import changes, copy_at  # this folder's: run as python scripts/viewing_scale_choice.py


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="released LIVEC model name or checkpoint trained with train --all")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--small-sides", type=int, nargs="+", default=[256, 320, 400, 450])
    parser.add_argument("--enlarged-from", type=int, nargs="+", default=[256, 400])
    parser.add_argument("--enlarged-side", type=int, default=1500)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    scorer = load_model(args.model)
    scale = scorer.preprocessing.max_short_side
    conventions = {"downscale_only": replace(scorer.preprocessing, min_short_side=None),
                   "both_ways": replace(scorer.preprocessing, min_short_side=scale)}
    config = TrainConfig.from_checkpoint(scorer.info)
    dataset = load_dataset("livec", args.data_root)
    _, calibration = validation_part(config_for_dataset(config, dataset), dataset, Split(0, tuple(range(len(dataset))), ()))
    photos = [load_image(dataset.records[i].path) for i in calibration]

    def scores(images: list[Image.Image], convention: str) -> np.ndarray:
        scorer.preprocessing = conventions[convention]
        return np.array([result.score for result in scorer.score(images)])

    original = scores(photos, "downscale_only")  # 500 px: both conventions score them alike
    result: dict = {"small_copies": {}, "enlarged_small_copies": {}}
    small = {side: [copy_at(photo, side) for photo in photos] for side in sorted(set(args.small_sides) | set(args.enlarged_from))}
    for convention in ("downscale_only", "both_ways"):
        small_scores = {side: scores(images, convention) for side, images in small.items()}
        result["small_copies"][convention] = {str(side): changes(original, small_scores[side]) for side in args.small_sides}
        result["enlarged_small_copies"][convention] = {}
        for side in args.enlarged_from:
            enlarged = scores([copy_at(image, args.enlarged_side) for image in small[side]], convention)
            result["enlarged_small_copies"][convention][f"{side}->{args.enlarged_side}"] = changes(small_scores[side], enlarged)
        print(convention, json.dumps(result["small_copies"][convention]), json.dumps(result["enlarged_small_copies"][convention]),
              flush=True)
    atomic_write_json(args.output, {
        "command": "python scripts/viewing_scale_choice.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": args.model, "viewing_scale": scale, "photos": len(photos), **result,
        "seconds": round(time.perf_counter() - start, 1)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
