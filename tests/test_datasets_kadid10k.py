from pathlib import Path

import pytest
from dataset_fixtures import assert_refs_disjoint, tiny_image, write_csv

from qfm_iqm.data.kadid10k import load_kadid10k
from qfm_iqm.data.records import DatasetError
from qfm_iqm.data.registry import load_dataset

HEADER = ["dist_img", "ref_img", "dmos", "var"]


def _rows() -> list[list[object]]:
    """3 references x 2 distortions x 3 levels; the score falls with the level (level 01 is best)."""
    return [
        [f"I{r:02d}_{d:02d}_{lv:02d}.png", f"I{r:02d}.png", round(4.8 - 1.1 * lv + 0.05 * d, 2), 0.25]
        for r in range(1, 4)
        for d in range(1, 3)
        for lv in range(1, 4)
    ]


def make_kadid(root: Path, rows: list[list[object]] | None = None) -> Path:
    """Miniature KADID-10k: dmos.csv (official header, LF) and images/ holding references and distorted images."""
    rows = rows if rows is not None else _rows()
    for dist, ref, *_ in _rows():
        tiny_image(root / "images" / dist)
        tiny_image(root / "images" / ref)
    write_csv(root / "dmos.csv", HEADER, rows, lineterminator="\n")
    return root


def test_official_layout(tmp_path: Path) -> None:
    root = make_kadid(tmp_path / "kadid10k")
    ds = load_kadid10k(root)
    assert ds.name == "KADID-10k" and ds.synthetic and len(ds) == 18
    assert ds.records[0].path == root / "images" / "I01_01_01.png" and ds.records[0].ref_id == "I01.png"
    assert ds.records[0].raw_label == pytest.approx(3.75) and ds.records[0].label == pytest.approx(2.75 / 4)
    assert ds.records[0].raw_std == pytest.approx(0.25)  # the 'var' column holds the standard deviation
    assert_refs_disjoint(ds)


def test_higher_score_is_better(tmp_path: Path) -> None:
    ds = load_dataset("kadid10k", make_kadid(tmp_path / "kadid10k"))
    by_name = {r.path.name: r for r in ds.records}
    assert by_name["I02_01_01.png"].label > by_name["I02_01_03.png"].label
    assert ds.scale.higher_is_better


def test_errors(tmp_path: Path) -> None:
    rows = _rows()
    rows[4][2] = ""
    with pytest.raises(DatasetError, match=r"values missing \(NaN\).*I01_02_02\.png \(empty\)"):
        load_kadid10k(make_kadid(tmp_path / "a", rows))
    rows = [*_rows(), _rows()[1]]
    with pytest.raises(DatasetError, match=r"duplicate image names \(1 in total\): I01_01_02\.png"):
        load_kadid10k(make_kadid(tmp_path / "b", rows))
    root = make_kadid(tmp_path / "c")
    (root / "images" / "I03_02_03.png").unlink()
    with pytest.raises(DatasetError, match=r"not found .*\(1 in total\): I03_02_03\.png"):
        load_kadid10k(root)
    write_csv(root / "dmos.csv", ["image", "reference", "score"], [["a.png", "b.png", 3]])
    with pytest.raises(
        DatasetError, match=r"no distorted image column 'dist_img' \(columns: image, reference, score\)"
    ):
        load_kadid10k(root)
