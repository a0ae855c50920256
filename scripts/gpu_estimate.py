"""What benchmarks/paper.yaml costs, per dataset: the training steps and scored images it runs, counted
FLOPs, measured step time and activation memory of the paper's model (ViT-S, batch 16) on this machine's
CPU, and GPU time and memory estimated from them.

    python scripts/gpu_estimate.py --output results/gpu/paper_estimate.json

Counted (exact for the code as it is): the FLOPs of one training step of each method (``Trainer.training_step``
under ``torch.utils.flop_counter``: forward, backward, the pretrained teacher's labels, the noise pass) and
of scoring one test image (the 4x4 crop grid), and the bytes autograd saves for the backward pass of one
step (float32 on a CPU; about half of it in bf16 on a GPU). Measured: the CPU seconds of those steps.
Steps run at a quarter of the recipe's batch (4 images + 2 teacher-labelled views, on a busy 2-core
CPU a full step takes minutes) and their FLOPs, bytes and seconds are scaled by 4: all three grow in
proportion to the batch (the memory and matching parts that do not are a few MFLOPs).
Estimated: GPU hours as the larger of two bounds, both from assumptions (not measurements): counted
FLOPs over a sustained rate (``--tflops``), and the counted steps and images at a time per training step
and per scored image (``--step-seconds``, ``--image-seconds``; batches of 16-24 small crops are bound by
kernel launches and data loading rather than arithmetic). GPU memory: weights, gradients and AdamW state
plus the saved activations. Dataset
sizes are those of the official releases (the registry describes them); nothing is downloaded and the
backbone has random weights (the cost does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from torch.utils.flop_counter import FlopCounterMode

from qfm_iqm.experiments.benchmark.config import BenchmarkConfig
from qfm_iqm.data.images import load_image
from qfm_iqm.data.records import ImageRecord
from qfm_iqm.data.transforms import grid_crops
from qfm_iqm.inference.predict import model_preprocessing
from qfm_iqm.models.backbones import create_backbone
from qfm_iqm.models.qfm import build_model
from qfm_iqm.training.trainer import Trainer
from qfm_iqm.utils.files import atomic_write_json

PROJECT = Path(__file__).resolve().parents[1]
SCALE = 4  # the recipe's batch over the measured one
# images in each official release (qfm-iqm datasets lists them)
DATASET_IMAGES = {"live": 779, "csiq": 866, "tid2013": 3000, "kadid10k": 10125, "livec": 1162, "koniq10k": 10073,
                  "spaq": 11125, "livefb": 39810}


def _photos(folder: Path, count: int) -> list[ImageRecord]:
    rng = np.random.default_rng(0)
    records = []
    for i in range(count):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(path)
        records.append(ImageRecord(path=path, label=i / count, raw_label=float(i)))
    return records


def _saved_bytes(step) -> int:
    """Bytes of the tensors autograd saves for backward while ``step()`` runs its forward pass."""
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    return total


def measure_steps(config, records: list[ImageRecord], folder: Path) -> dict:
    """FLOPs, CPU seconds and saved activation bytes of one training step of ``config``, times ``SCALE``."""
    teacher = build_model(config.model, pretrained_backbone=False) if config.distill and config.teacher == "pretrained" else None
    trainer = Trainer(config, records, folder, progress=False, teacher_model=teacher)
    trainer.model.train()
    kd = trainer._side_batches(trainer.kd_loader)
    batches = iter(trainer.loader)

    def step() -> None:
        images, labels, ids = next(batches)
        trainer.training_step(images, labels, ids, next(kd) if kd else None)

    step()  # warm-up (allocations, the memory filling up)
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    with FlopCounterMode(display=False) as counter:
        activation_bytes = _saved_bytes(step)
    return {"flops": SCALE * counter.get_total_flops(), "cpu_seconds": round(SCALE * seconds, 2),
            "saved_activation_bytes": SCALE * activation_bytes,
            "crops": SCALE * (config.batch_size + (config.kd_views if config.distill else 0))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--tflops", type=float, default=100.0,
                        help="assumed sustained rate of the GPU in TFLOP/s (default 100: about 10%% of an H100's dense "
                        "bf16 peak, as small ViT-S batches leave most of it idle)")
    parser.add_argument("--step-seconds", type=float, default=0.03,
                        help="assumed seconds per training step of 16 images (+8 views) at the least (default 0.03)")
    parser.add_argument("--image-seconds", type=float, default=0.01,
                        help="assumed seconds to score one test image (16 crops) at the least (default 0.01)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    paper = BenchmarkConfig.from_file(PROJECT / "benchmarks" / "paper.yaml")
    configs = {m.name: m.train_config(paper.train, ["device=cpu", "num_workers=0"]) for m in paper.methods}
    recipe = configs["qfm"]
    measured = [f"batch_size={recipe.batch_size // SCALE}", f"kd_views={recipe.kd_views // SCALE}"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        weights = folder / "vit_s.safetensors"  # random weights, read as a user's --backbone-weights file
        backbone = create_backbone(configs["qfm"].model.backbone, pretrained=False)
        save_file({k: v.contiguous() for k, v in backbone.model.state_dict().items()}, str(weights))
        records = _photos(folder, 3 * recipe.batch_size // SCALE)  # three batches: warm-up, timing, FLOPs and bytes
        steps = {name: measure_steps(config.with_overrides([f"backbone_weights={weights}", *measured]), records, folder / name)
                 for name, config in configs.items()}
        model = build_model(configs["deiqt"].model, pretrained_backbone=False).eval()
        crops = grid_crops(load_image(records[0].path), model_preprocessing(model), configs["deiqt"].eval_grid)
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(crops)
        score_flops = counter.get_total_flops()
    parameters = sum(p.numel() for p in model.parameters())
    state_bytes = parameters * 4 * 4  # float32 weights, gradients and AdamW's two moments
    epochs, batch = configs["deiqt"].epochs, configs["deiqt"].batch_size

    def cost(train_images: int, scored_images: int, splits: int) -> dict:
        """Three trainings (DEIQT mode; QFM-IQM's DEIQT-mode teacher, then QFM-IQM) on ``train_images``, and
        ``scored_images`` test images scored, per split."""
        steps = epochs * (train_images // batch)
        flops = splits * (steps * (2 * step_flops["deiqt"] + step_flops["qfm"]) + scored_images * score_flops)
        flop_bound = flops / (args.tflops * 1e12)
        time_bound = splits * (3 * steps * args.step_seconds + scored_images * args.image_seconds)
        return {"training_steps": splits * 3 * steps, "scored_images": splits * scored_images, "flops": flops,
                "estimated_gpu_hours": round(max(flop_bound, time_bound) / 3600, 2),
                "estimated_cpu_days_training_this_machine": round(splits * steps * (2 * step_seconds["deiqt"] + step_seconds["qfm"]) / 86400, 1)}

    step_flops = {name: step["flops"] for name, step in steps.items()}
    step_seconds = {name: step["cpu_seconds"] for name, step in steps.items()}
    per_dataset = {}
    for dataset, images in DATASET_IMAGES.items():
        test = images - round(0.8 * images)  # scored by the DEIQT-mode model, the teacher and QFM-IQM
        per_dataset[dataset] = {"images": images, **cost(round(0.8 * images), 3 * test, len(paper.seeds))}
    cross = [{"train": pair.train, "test": pair.test,  # trained on all of A; both methods score all of B
              **cost(DATASET_IMAGES[pair.train], 2 * DATASET_IMAGES[pair.test], 1)} for pair in paper.cross]
    worst = max(s["saved_activation_bytes"] for s in steps.values())
    result = {
        "command": "python scripts/gpu_estimate.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"torch": torch.__version__, "cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                    "note": "CPU seconds measured while other jobs shared the cores"},
        "assumed": {"gpu_tflops": args.tflops, "step_seconds": args.step_seconds, "image_seconds": args.image_seconds},
        "model_parameters": parameters,
        "training_step": steps,
        "score_flops_per_image": score_flops,
        "estimated_gpu_memory_gib": {
            "weights_gradients_adamw": round(state_bytes / 2**30, 2),
            "activations_fp32_upper_bound": round(worst / 2**30, 2),
            "total_upper_bound": round((state_bytes + worst) / 2**30, 2),
        },
        "per_dataset": per_dataset,
        "cross": cross,
        "estimated_gpu_hours_total": round(sum(d["estimated_gpu_hours"] for d in [*per_dataset.values(), *cross]), 1),
    }
    atomic_write_json(args.output, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
