"""The maintainer scripts that feed a release: what they read and what they refuse."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cell(folder: Path, intervals: list[dict | None]) -> Path:
    runs = [{"seed": seed, **({"interval": interval} if interval else {})} for seed, interval in enumerate(intervals)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({"runs": runs}))
    return folder


def test_release_interval_is_the_median_half_width_of_the_splits(tmp_path: Path, capsys) -> None:
    quantiles = [0.20, 0.17, 0.19, 0.25, 0.18]
    cell = _cell(tmp_path / "cell", [{"coverage_target": 0.9, "quantile": q, "calibration_size": 149} for q in quantiles])
    assert _script("release_interval").main(str(cell)) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"coverage": 0.9, "quantile": 0.19, "scaled": False, "calibration_size": 745}


def test_release_interval_refuses_cells_it_cannot_summarise(tmp_path: Path) -> None:
    release_interval = _script("release_interval")
    with pytest.raises(SystemExit, match="no split recorded an interval"):
        release_interval.main(str(_cell(tmp_path / "none", [None, None])))
    mixed = [{"coverage_target": c, "quantile": 0.2, "calibration_size": 10} for c in (0.9, 0.8)]
    with pytest.raises(SystemExit, match="different coverages"):
        release_interval.main(str(_cell(tmp_path / "mixed", mixed)))
