"""Why does a released model score a mildly chroma-blurred photo higher? A test of one explanation.

    python scripts/colour_diffusion_noise.py qfm-iqm-lite0-livec-v2-2 --data-root ../shared/datasets/livec \
        --check results/release/qfm_iqm_lite0_livec_v2_2/degradation_check.json \
        --output results/release/qfm_iqm_lite0_livec_v2_2/colour_diffusion_noise.json

The explanation: LIVEC's phone photos carry colour noise, which a chroma blur removes, so the model
rewards the blur as it would a denoiser. On the photos of a committed degradation check (``--check``;
their labels are not read), at the model's viewing scale and on the scores users get:

- each photo's chroma noise is estimated (Immerkaer's estimator on Cb and Cr, in 8-bit levels), and the
  mild chroma blur's score change is correlated with it;
- the mild step is read separately on the photos with less and with more chroma noise than the median;
- chroma-only Gaussian noise (``--added-noise`` levels) is added to each photo: a model that penalises
  colour noise scores the noisier copy lower. Every level uses the photo's seed, so the levels scale one
  noise pattern (a dose-response).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.signal import convolve2d
from scipy.stats import spearmanr

from qfm_iqm.data.degradations import damaged_view
from qfm_iqm.data.images import load_image
from qfm_iqm.data.registry import load_dataset
from qfm_iqm.data.transforms import grid_crops
from qfm_iqm.evaluation.degradation_check import records_named
from qfm_iqm.inference.checkpoint import load_checkpoint_model
from qfm_iqm.inference.predict import model_preprocessing, score_crops
from qfm_iqm.inference.pretrained import resolve_model
from qfm_iqm.inference.score_map import bounded
from qfm_iqm.training.config import TrainConfig
from qfm_iqm.utils.checkpoint import atomic_write_json
from qfm_iqm.utils.seeds import path_seed

_LAPLACE_DIFFERENCE = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)


def noise_sigma(channel: np.ndarray) -> float:
    """Immerkaer's fast estimate of the standard deviation of white noise in one channel."""
    height, width = channel.shape
    response = np.abs(convolve2d(channel.astype(np.float64), _LAPLACE_DIFFERENCE, mode="valid")).sum()
    return float(np.sqrt(np.pi / 2.0) * response / (6.0 * (width - 2) * (height - 2)))


def chroma_sigma(image: Image.Image) -> float:
    """Mean of the Cb and Cr noise estimates of an RGB image."""
    _, blue, red = image.convert("YCbCr").split()
    return (noise_sigma(np.asarray(blue)) + noise_sigma(np.asarray(red))) / 2.0


def with_chroma_noise(image: Image.Image, sigma: float, seed: int) -> Image.Image:
    """``image`` with Gaussian noise of ``sigma`` levels added to its Cb and Cr channels only."""
    luma, blue, red = image.convert("YCbCr").split()
    rng = np.random.default_rng(seed)
    noisy = [Image.fromarray(np.clip(np.rint(np.asarray(c, np.float32) + rng.normal(0.0, sigma, (c.height, c.width))),
                                     0, 255).astype(np.uint8)) for c in (blue, red)]
    return Image.merge("YCbCr", (luma, *noisy)).convert("RGB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="released model name or checkpoint")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--check", type=Path, required=True, help="a degradation check JSON naming its photos")
    parser.add_argument("--added-noise", type=float, nargs="+", default=[2.0, 4.0])
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    model, info = load_checkpoint_model(resolve_model(args.model), "cpu")
    grid = TrainConfig.from_checkpoint(info).eval_grid
    pre = model_preprocessing(model)
    try:
        photos = records_named(load_dataset("livec", args.data_root).records, json.loads(args.check.read_text())["photos"])
    except ValueError as error:
        raise SystemExit(f"{args.check}: {error} ({args.data_root})") from None

    def user_score(view: Image.Image) -> float:
        return float(bounded(score_crops(model, grid_crops(view, pre, grid))[0]))

    rows = []
    for record in photos:
        path = record.path
        image, seed = load_image(path), path_seed(path)
        original = damaged_view(image, pre, None, 0, seed)
        rows.append({
            "photo": path.name, "chroma_sigma": chroma_sigma(original),
            "original": user_score(original),
            "colour_diffusion": [user_score(damaged_view(image, pre, "colour_diffusion", level, seed))
                                 for level in (1, 2, 3)],
            "added_chroma_noise": [user_score(with_chroma_noise(original, sigma, seed)) for sigma in args.added_noise],
        })
    sigma = np.array([row["chroma_sigma"] for row in rows])
    original = np.array([row["original"] for row in rows])
    mild = np.array([row["colour_diffusion"][0] for row in rows])
    less = sigma <= np.median(sigma)
    noisy = np.array([row["added_chroma_noise"] for row in rows])
    summary = {
        "photos": len(rows),
        "mild_step_ordered": round(float(np.mean(original > mild)), 4),
        "mild_step_ordered_less_chroma_noise": round(float(np.mean((original > mild)[less])), 4),
        "mild_step_ordered_more_chroma_noise": round(float(np.mean((original > mild)[~less])), 4),
        "chroma_sigma_median": round(float(np.median(sigma)), 3),
        "srcc_chroma_sigma_vs_mild_gain": round(float(spearmanr(sigma, mild - original)[0]), 4),
        "added_chroma_noise_ordered": {str(level): round(float(np.mean(original > noisy[:, i])), 4)
                                       for i, level in enumerate(args.added_noise)},
    }
    atomic_write_json(args.output, {
        "command": "python scripts/colour_diffusion_noise.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "model": args.model, "summary": summary, "photos": rows, "seconds": round(time.perf_counter() - start, 1)})
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
