"""README.md's quick-start commands, run as written through the CLI entry point.

They run from a fresh folder holding a copy of examples/ and a miniature LIVE Challenge in its official
format at datasets/livec (the default data root). Training commands get ``--config`` with a tiny
model and one epoch so that they take seconds; nothing is downloaded.
"""

from __future__ import annotations

import csv
import json
import shlex
import shutil
from pathlib import Path

import pytest
from dataset_fixtures import make_livec

from qfm_iqm.cli.main import main

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = """epochs: 1
batch_size: 4
warmup_epochs: 0
eval_grid: 2
device: cpu
model:
  dim: 64
  num_heads: 4
  preprocessing: {input_size: 64, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}
"""

pytestmark = pytest.mark.usefixtures("one_thread")


def quick_start_commands() -> list[list[str]]:
    """The ``qfm-iqm`` lines of the code block under README's "Quick start" heading, comments dropped."""
    section = README.read_text(encoding="utf-8").split("\n## Quick start\n", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.startswith("qfm-iqm ")]


def test_quick_start_commands_work_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commands = quick_start_commands()
    assert [argv[1] for argv in commands] == ["score", "datasets", "train", "evaluate", "evaluate", "evaluate"]
    names = [f"t{i}.bmp" for i in range(1, 8)] + [f"{100 + i}.bmp" for i in range(20)]
    make_livec(tmp_path / "datasets" / "livec", names=names)
    shutil.copytree(README.parent / "examples", tmp_path / "examples")
    (tmp_path / "tiny.yaml").write_text(TINY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("QFM_IQM_LIVEC_ROOT", raising=False)
    for argv in commands:
        args = argv[1:]
        if args[0] in ("train", "evaluate") and "--checkpoint" not in args and "--baseline" not in args:
            args += ["--config", "tiny.yaml"]
        assert main([*args, "--quiet"]) == 0, shlex.join(argv)
    with open("scores.csv", newline="") as handle:
        assert len([row for row in csv.DictReader(handle) if row["score"]]) == 5
    assert json.loads(Path("runs/livec-model/result.json").read_text())["test_size"] == 4
    for folder in ("runs/livec-protocol", "runs/livec-ridge"):
        assert [run["seed"] for run in json.loads(Path(folder, "results.json").read_text())["runs"]] == [0, 1, 2]
