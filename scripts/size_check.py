"""Does a photo score the same at any pixel count? LIVEC photos enlarged to web sizes, and an example
photo enlarged to 24 MP, scored with the model's viewing scale and natively (``--native``).

    python scripts/size_check.py --data-root ../shared/datasets/livec --photos 100 --output results/size/v2.json

Each of ``--photos`` seeded LIVEC photos (500x500) is enlarged with Lanczos resampling so that its
shorter side is each of ``--sides`` px (as a web-sized copy of it would be). Reported per size: the rank
correlation of the enlarged copies' scores with the originals' scores, the mean absolute and mean signed
change in MOS, and the same natively. ``examples/sharp.jpg`` is also enlarged to 6000x4000.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.stats import spearmanr

from qfm_iqm.api import Scorer, load_model
from qfm_iqm.data.images import load_image
from qfm_iqm.data.registry import load_dataset
from qfm_iqm.utils.checkpoint import atomic_write_json

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sharp.jpg"


def copy_at(image: Image.Image, side: int) -> Image.Image:
    """A copy of ``image`` resized with Lanczos (aspect kept) so that its shorter side is ``side`` px."""
    scale = side / min(image.size)
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)


def changes(original: np.ndarray, other: np.ndarray) -> dict[str, float]:
    return {"srcc_with_original": round(float(spearmanr(original, other)[0]), 4),
            "mean_abs_change": round(float(np.abs(other - original).mean()), 3),
            "mean_change": round(float((other - original).mean()), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model name or checkpoint (default: the released default)")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--photos", type=int, default=100)
    parser.add_argument("--sides", type=int, nargs="+", default=[1000, 1500, 2000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    name = {} if args.model is None else {"name_or_path": args.model}
    viewing, native = load_model(**name, runtime="torch"), load_model(**name, runtime="torch", native=True)
    dataset = load_dataset("livec", args.data_root)
    rng = np.random.default_rng(args.seed)
    chosen = sorted(rng.choice(len(dataset), size=min(args.photos, len(dataset)), replace=False).tolist())
    photos = [load_image(dataset.records[i].path) for i in chosen]

    def scores(scorer: Scorer, images: list[Image.Image]) -> np.ndarray:
        return np.array([scorer.score(image).score for image in images])

    original = scores(viewing, photos)
    sizes = {}
    for side in args.sides:
        copies = [copy_at(photo, side) for photo in photos]
        sizes[str(side)] = {"viewing_scale": changes(original, scores(viewing, copies)),
                            "native": changes(original, scores(native, copies))}
        print(side, sizes[str(side)], flush=True)
    example = load_image(EXAMPLE)
    huge = example.resize((6000, 4000), Image.Resampling.LANCZOS)
    result = {
        "command": "python scripts/size_check.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "model": viewing.info.get("release", {}).get("name", str(args.model)),
        "max_short_side": viewing.preprocessing.max_short_side,
        "photos": len(photos),
        "photo_indices": chosen,
        "enlarged_to_shorter_side": sizes,
        "example_6000x4000": {"original_size": list(example.size), "original": round(viewing.score(example).score, 3),
                              "enlarged": round(viewing.score(huge).score, 3),
                              "enlarged_native": round(native.score(huge).score, 3)},
        "seconds": round(time.perf_counter() - start, 1),
    }
    atomic_write_json(args.output, result)
    print(json.dumps(result["example_6000x4000"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
