"""Does the report of a large folder stay light? Writes a score file of a folder's photos with made-up
scores (seeded; no model runs), builds the page from it with ``qfm-iqm report --from`` (thumbnails
made here), and measures the page, its thumbnails, and how long headless Chromium takes to load it
(``--dump-dom`` wall time, browser start included; the page's own ``data-render-ms`` and
``data-load-ms``).

    nice -n 19 python scripts/report_livec_load.py /work/shared/datasets/livec/Images results/report/livec_load.json

The folder's top level only (LIVE Challenge's 930 test photos, not its 7 training images).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from qfm_iqm.api import ScoreResult
from qfm_iqm.scoring import find_images, write_results
from qfm_iqm.utils.files import atomic_write_json

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def fake_scores(folder: Path, seed: int) -> list[ScoreResult]:
    """Plausible rows for the folder's photos: scores ~ N(55, 16) within 2-98, a 90% range of +-18 kept
    on 0-100, spreads of 0.01-0.05."""
    files, _ = find_images([folder], recursive=False)
    rng = np.random.default_rng(seed)
    scores = np.clip(rng.normal(55.0, 16.0, len(files)), 2.0, 98.0)
    spreads = rng.uniform(0.01, 0.05, len(files))
    return [ScoreResult(float(s), float(u), file.path, low=max(0.0, s - 18.0), high=min(100.0, s + 18.0))
            for file, s, u in zip(files, scores, spreads, strict=True)]


def dump_dom(chromium: str, page: Path, profile: Path) -> tuple[str, float]:
    """The DOM of one cold load of ``page`` in headless Chromium (a fresh profile), and its wall seconds."""
    shutil.rmtree(profile, ignore_errors=True)
    start = time.perf_counter()
    dom = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return dom, time.perf_counter() - start


def load_page(chromium: str, page: Path, profile: Path) -> dict:
    """One cold load of the report: wall seconds and the page's own timings."""
    dom, wall = dump_dom(chromium, page, profile)
    found = dict(re.findall(r'data-(render-ms|load-ms|thumbnails-loaded)="(\d+)"', dom))
    return {"wall_s": round(wall, 2), "render_ms": int(found["render-ms"]), "load_ms": int(found["load-ms"]),
            "cards": dom.count('<article class="card'), "thumbnails_loaded_at_load": int(found["thumbnails-loaded"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--runs", type=int, default=3, help="cold loads in Chromium (default: 3)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is not installed")
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        rows = fake_scores(args.folder, args.seed)
        write_results(rows, work / "scores.csv")
        page = work / "livec.html"
        report = [sys.executable, "-m", "qfm_iqm.cli.main", "report", "--from", str(work / "scores.csv"),
                  "-o", str(page), "--flag-below", "30", "--quiet"]
        start = time.perf_counter()
        subprocess.run(report, check=True)
        build = time.perf_counter() - start
        page_bytes = page.stat().st_size
        thumb_bytes = [path.stat().st_size for path in (work / "livec_files" / "thumbs").iterdir()]
        loads = [load_page(chromium, page, work / "profile") for _ in range(args.runs)]
        empty = work / "empty.html"
        empty.write_text("<!DOCTYPE html><title>empty</title>")
        empty_walls = [dump_dom(chromium, empty, work / "profile")[1] for _ in range(args.runs)]
    version = subprocess.run([chromium, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    options = (f" --runs {args.runs}" if args.runs != 3 else "") + (f" --seed {args.seed}" if args.seed else "")
    result = {
        "command": f"nice -n 19 python scripts/report_livec_load.py {args.folder} {args.output}{options}",
        "report_command": "qfm-iqm report --from scores.csv -o livec.html --flag-below 30 --quiet",
        "machine": "2 CPU cores shared with a training job; every step run at nice 19",
        "chromium": version,
        "photos": len(rows),
        "page_bytes": page_bytes,
        "page_mib": round(page_bytes / 2**20, 3),
        "thumbnails": {"count": len(thumb_bytes), "mib": round(sum(thumb_bytes) / 2**20, 1),
                       "median_kib": round(statistics.median(thumb_bytes) / 1024, 1)},
        "report_build_s": round(build, 1),
        "chromium_loads": loads,
        "median_load_wall_s": statistics.median(load["wall_s"] for load in loads),
        "median_empty_page_wall_s": round(statistics.median(empty_walls), 2),
        "notes": "wall_s: chromium --dump-dom of the page, browser start included (median_empty_page_wall_s: the same "
                 "for an empty page); render_ms: the page's script has drawn every card; load_ms: the load event. "
                 "Headless Chromium fetched every thumbnail before the load event (thumbnails_loaded_at_load) although "
                 "they are loading=lazy, so load_ms is the cost of all of them.",
    }
    atomic_write_json(args.output, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
