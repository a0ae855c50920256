"""Do the eager path's speed steps still pay for themselves? Times the released model's forward pass
over 9 crops (one image's 3x3 grid, as scoring runs it) with all of them, without each one, and in
onnxruntime, each variant in a fresh process (the allocator setting is process-wide).

    python scripts/eager_speed_steps.py results/benchmark/eager-steps.json [--model NAME] [--repeats 30]

Steps (``qfm_iqm.inference.speed``, all applied by ``load_model``): ``fold`` (BatchNorms folded into the
convolutions), ``swap`` (``StrideTwoSameConv2d`` for timm's padded stride-2 convolutions, eval mode),
``channels-last`` (CNN weights in channels-last memory format); and ``allocator`` (``reuse_freed_memory``,
done by the ``qfm-iqm`` command). Writes the median milliseconds per pass.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("all steps", "without fold", "without swap", "without channels-last", "without allocator", "onnx runtime")


def measure(model_name: str, variant: str, repeats: int) -> float:
    """Median milliseconds of one forward pass over 9 crops in this process."""
    import torch

    from qfm_iqm import reuse_freed_memory
    from qfm_iqm.inference.checkpoint import load_checkpoint_model
    from qfm_iqm.inference.pretrained import resolve_model
    from qfm_iqm.inference.runtime import onnx_network
    from qfm_iqm.inference.speed import copy_free_same_padding, fold_batch_norms, use_channels_last

    if variant != "without allocator":
        reuse_freed_memory()
    model, _ = load_checkpoint_model(resolve_model(model_name), "cpu")  # the reference network, in eval mode
    if variant != "without fold":
        fold_batch_norms(model.backbone)
    if variant != "without swap":
        copy_free_same_padding(model.backbone)
    if variant != "without channels-last":
        use_channels_last(model.backbone)
    network = onnx_network(model) if variant == "onnx runtime" else model
    size = int(model.config.preprocessing["input_size"])
    crops = torch.rand(9, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    times = []
    with torch.inference_mode():
        for _ in range(3):  # warm-up
            network(crops)
        for _ in range(repeats):
            start = time.perf_counter()
            network(crops)
            times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path)
    parser.add_argument("--model", default=None, help="released model name (default: the default model)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: measure one variant in this process
    args = parser.parse_args()
    from qfm_iqm.inference.pretrained import DEFAULT_MODEL

    model = args.model or DEFAULT_MODEL
    if args.variant:
        print(json.dumps(measure(model, args.variant, args.repeats)))
        return 0
    rows = []
    for variant in VARIANTS:
        command = [sys.executable, __file__, str(args.output), "--model", model, "--repeats", str(args.repeats),
                   "--variant", variant]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        milliseconds = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({"variant": variant, "ms_per_9_crops": round(milliseconds, 1)})
        print(f"{variant:>18}: {milliseconds:.1f} ms per 9 crops", flush=True)
    import torch

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"model": model, "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
                                       "command": " ".join(["python", *sys.argv]), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
