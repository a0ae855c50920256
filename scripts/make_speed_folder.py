"""A folder of N photos for scoring-speed runs: every photo of a LIVEC copy's Images/ folder (its
trainingImages/ too), then JPEG (quality 90) copies of the first of them, in name order, until there are N.

    python scripts/make_speed_folder.py ../shared/datasets/livec /tmp/photos1000 --count 1000
    python scripts/scoring_speed.py /tmp/photos1000 results/benchmark/scoring-speed-1000.json

The copies are decoded like any JPEG; they only bring the count to N (the LIVEC copy has 937 photos).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from PIL import Image

from qfm_iqm.scoring import find_images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("livec", type=Path, help="a LIVEC copy (the folder that holds Images/)")
    parser.add_argument("output", type=Path, help="the folder to fill (created; must not exist)")
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args(argv)
    sources = sorted(Path(file.path) for file in find_images([str(args.livec / "Images")])[0])
    args.output.mkdir(parents=True)
    for source in sources[: args.count]:
        shutil.copy(source, args.output / source.name)
    for index, source in enumerate(sources[: max(0, args.count - len(sources))]):
        Image.open(source).convert("RGB").save(args.output / f"copy_{index:02d}.jpg", quality=90)
    print(f"{min(args.count, len(sources)) + max(0, args.count - len(sources))} photos in {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
