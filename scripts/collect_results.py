"""Copy protocol results (results.json, splits.json, per-split result.json) from run folders into
``results/<dataset>/<name>/`` and write a Markdown table of medians.

    python scripts/collect_results.py results/livec runs/livec-deiqt runs/livec-qfm runs/livec-ridge
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def main(out_dir: str, *run_dirs: str) -> None:
    out = Path(out_dir)
    rows = []
    for run in map(Path, run_dirs):
        results = json.loads((run / "results.json").read_text())
        target = out / run.name
        target.mkdir(parents=True, exist_ok=True)
        for name in ("results.json", "splits.json", "command.txt"):
            if (run / name).exists():
                shutil.copy2(run / name, target / name)
        for split_result in sorted(run.glob("split_*/result.json")):
            shutil.copy2(split_result, target / f"{split_result.parent.name}.json")
        summary = results["summary"]
        per_split = [
            json.loads(p.read_text()) for p in sorted(run.glob("split_*/result.json"))
        ]
        seconds = [r.get("train_seconds") for r in per_split if r.get("train_seconds") is not None]
        rows.append(
            "| {name} | {n} | {srcc:.4f} | {plcc:.4f} | {plccl:.4f} | {mean:.4f} ± {std:.4f} | {secs} |".format(
                name=run.name,
                n=len(results["runs"]),
                srcc=summary["srcc"]["median"],
                plcc=summary["plcc"]["median"],
                plccl=summary["plcc_logistic"]["median"],
                mean=summary["srcc"]["mean"],
                std=summary["srcc"]["std"],
                secs=f"{sum(seconds) / len(seconds):.0f}" if seconds else "-",
            )
        )
    table = "\n".join(
        [
            "| run | splits | median SRCC | median PLCC | median PLCC (logistic) | SRCC mean ± std | train s/split |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main(*sys.argv[1:])
