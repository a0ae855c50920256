"""Generate the bundled example images: one synthetic scene, sharp and with four degradations.

Run ``python examples/make_examples.py``; the JPEG files are written beside this script. The output
is deterministic (fixed seeds), so the files can be regenerated at any time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = (384, 256)
SUPERSAMPLE = 3
QUALITY = 90


def render_scene(seed: int = 0) -> Image.Image:
    """A small landscape: sky gradient, sun, hills with grass texture, a house, a tree, a fence."""
    rng = np.random.default_rng(seed)
    w, h = SIZE[0] * SUPERSAMPLE, SIZE[1] * SUPERSAMPLE
    t = np.linspace(0.0, 1.0, h)[:, None, None]
    sky = (1 - t) * np.array([70, 130, 210]) + t * np.array([200, 225, 245])
    image = Image.fromarray(np.broadcast_to(sky, (h, w, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    s = SUPERSAMPLE
    draw.ellipse((300 * s, 20 * s, 345 * s, 65 * s), fill=(255, 220, 90))
    for base, amp, colour in ((150, 18, (90, 140, 70)), (185, 12, (60, 120, 45))):
        xs = np.arange(0, w + s, s)
        ys = (base + amp * np.sin(xs / (60.0 * s) + base)) * s
        draw.polygon([(0, h), *zip(xs.tolist(), ys.tolist()), (w, h)], fill=colour)
    for _ in range(1800):  # grass blades
        x, y = rng.uniform(0, w), rng.uniform(175 * s, h)
        shade = int(rng.integers(30, 110))
        tip = (x + rng.uniform(-2, 2) * s, y - rng.uniform(3, 9) * s)
        draw.line((x, y, *tip), fill=(shade // 2, shade + 60, shade // 3), width=s)
    draw.rectangle((60 * s, 120 * s, 150 * s, 200 * s), fill=(200, 80, 60), outline=(60, 30, 20), width=2 * s)
    draw.polygon([(52 * s, 122 * s), (105 * s, 80 * s), (158 * s, 122 * s)], fill=(110, 50, 40))
    for wx in (72, 118):
        draw.rectangle((wx * s, 140 * s, (wx + 20) * s, 160 * s), fill=(250, 240, 200), outline=(40, 30, 20), width=s)
        draw.line(((wx + 10) * s, 140 * s, (wx + 10) * s, 160 * s), fill=(40, 30, 20), width=s)
    draw.rectangle((96 * s, 170 * s, 114 * s, 200 * s), fill=(90, 60, 40))
    draw.rectangle((238 * s, 130 * s, 248 * s, 205 * s), fill=(100, 70, 40))
    for _ in range(60):  # foliage
        cx, cy, r = 243 + rng.normal(0, 18), 115 + rng.normal(0, 14), rng.uniform(8, 16)
        green = (int(rng.integers(30, 70)), int(rng.integers(100, 160)), int(rng.integers(30, 60)))
        draw.ellipse(((cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s), fill=green)
    for x in range(170, 384, 12):  # fence with fine vertical detail
        draw.rectangle((x * s, 200 * s, (x + 4) * s, 235 * s), fill=(235, 230, 220), outline=(90, 80, 70))
    draw.line((165 * s, 210 * s, w, 210 * s), fill=(235, 230, 220), width=2 * s)
    return image.resize(SIZE, Image.Resampling.LANCZOS)


def degrade(scene: Image.Image, seed: int = 1) -> dict[str, tuple[Image.Image, int]]:
    """The example set: name -> (image, JPEG quality)."""
    pixels = np.asarray(scene, dtype=np.float64)
    noise = np.random.default_rng(seed).normal(0.0, 20.0, pixels.shape)
    return {
        "sharp": (scene, QUALITY),
        "blurred": (scene.filter(ImageFilter.GaussianBlur(3)), QUALITY),
        "jpeg_q5": (scene, 5),
        "noisy": (Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8)), QUALITY),
        "underexposed": (Image.fromarray((255 * (pixels / 255) ** 2.2 * 0.35).astype(np.uint8)), QUALITY),
    }


def main() -> None:
    out = Path(__file__).resolve().parent
    for name, (image, quality) in degrade(render_scene()).items():
        path = out / f"{name}.jpg"
        image.save(path, quality=quality, optimize=True)
        print(f"{path.name}: {image.size[0]}x{image.size[1]}, {path.stat().st_size / 1024:.1f} KB")


if __name__ == "__main__":
    main()
