from pathlib import Path

import pytest
from dataset_fixtures import assert_refs_disjoint, tiny_image

from qfm_iqm.data.records import DatasetError
from qfm_iqm.data.registry import load_dataset
from qfm_iqm.data.tid2013 import load_tid2013

REFS, DISTS, LEVELS = 4, 2, 3


def _entries() -> list[tuple[str, float]]:
    """(listed name, MOS): MOS falls with the distortion level, so level 1 is the better image."""
    return [
        (f"i{r:02d}_{d:02d}_{lv}.bmp", 7.0 - lv - 0.1 * d - 0.01 * r)
        for r in range(1, REFS + 1)
        for d in range(1, DISTS + 1)
        for lv in range(1, LEVELS + 1)
    ]


def make_tid2013(root: Path, lines: list[str] | None = None, std_lines: list[str] | None = None) -> Path:
    """Miniature TID2013: ``mos_with_names.txt`` (CRLF, '<mos> <name>'), mos_std.txt, images whose
    on-disk case differs from the listed names for reference 1 (as in the release)."""
    for r in range(1, REFS + 1):
        tiny_image(root / "reference_images" / (f"I{r:02d}.BMP" if r < REFS else f"i{r:02d}.bmp"))
    for name, _ in _entries():
        on_disk = name.replace("i01", "I01").replace(".bmp", ".BMP") if name.startswith("i01_01") else name
        tiny_image(root / "distorted_images" / on_disk)
    lines = lines if lines is not None else [f"{mos:.5f} {name}" for name, mos in _entries()]
    (root / "mos_with_names.txt").write_bytes(("\r\n".join(lines) + "\r\n").encode())
    std_lines = std_lines if std_lines is not None else ["0.12345"] * len(lines)
    (root / "mos_std.txt").write_text("\n".join(std_lines) + "\n")
    return root


def test_official_layout(tmp_path: Path) -> None:
    root = make_tid2013(tmp_path / "tid2013")
    ds = load_tid2013(root)
    assert ds.name == "TID2013" and ds.synthetic and len(ds) == REFS * DISTS * LEVELS
    assert ds.records[0].path == root / "distorted_images" / "I01_01_1.BMP"  # case differs from the list
    assert ds.records[3].path == root / "distorted_images" / "i01_02_1.bmp"
    assert [r.ref_id for r in ds.records[:: DISTS * LEVELS]] == ["I01", "I02", "I03", "I04"]
    assert ds.records[0].raw_label == pytest.approx(5.89) and ds.records[0].label == pytest.approx(5.89 / 9)
    assert all(r.raw_std == pytest.approx(0.12345) for r in ds.records)
    assert_refs_disjoint(ds)


def test_lower_level_is_better(tmp_path: Path) -> None:
    ds = load_dataset("tid2013", make_tid2013(tmp_path / "tid2013"))
    by_name = {r.path.name: r for r in ds.records}
    assert by_name["i02_02_1.bmp"].label > by_name["i02_02_3.bmp"].label


def test_std_file_optional_but_checked(tmp_path: Path) -> None:
    root = make_tid2013(tmp_path / "a")
    (root / "mos_std.txt").unlink()
    assert load_tid2013(root).records[0].raw_std is None
    with pytest.raises(DatasetError, match=r"mos_std\.txt: expected 24 lines of one value each, got 2"):
        load_tid2013(make_tid2013(tmp_path / "b", std_lines=["0.1", "0.2"]))


def test_errors(tmp_path: Path) -> None:
    root = make_tid2013(tmp_path / "a")
    (root / "distorted_images" / "i03_02_2.bmp").unlink()
    with pytest.raises(DatasetError, match=r"not found .*\(1 in total\): i03_02_2\.bmp"):
        load_tid2013(root)
    with pytest.raises(DatasetError, match=r"values missing \(NaN\).*i01_01_2\.bmp \(nan\)"):
        load_tid2013(make_tid2013(tmp_path / "b", lines=["5.1 i01_01_1.bmp", "nan i01_01_2.bmp"]))
    with pytest.raises(DatasetError, match=r"outside 0\.\.9.*i01_01_1\.bmp \(12\)"):
        load_tid2013(make_tid2013(tmp_path / "c", lines=["12 i01_01_1.bmp"]))
    with pytest.raises(DatasetError, match=r"duplicate image names \(2 in total\): I01_01_1\.BMP, i01_01_1\.bmp"):
        load_tid2013(make_tid2013(tmp_path / "d", lines=["5.1 i01_01_1.bmp", "5.2 I01_01_1.BMP"]))
    with pytest.raises(DatasetError, match=r"lines not of the form.*\(1 in total\): 5\.1 i01_01_1\.png"):
        load_tid2013(make_tid2013(tmp_path / "e", lines=["5.1 i01_01_1.png", "5.2 i01_01_2.bmp"]))
