from pathlib import Path

import pytest
from dataset_fixtures import assert_refs_disjoint, tiny_image, write_xlsx

from qfm_iqm.data.csiq import load_csiq
from qfm_iqm.data.records import DatasetError
from qfm_iqm.data.registry import load_dataset

REFS = [1600, "aerial_city", "boston"]
# (folder, file-name token, spreadsheet dst_idx and dst_type, levels), as in the official release
TYPES = [
    ("awgn", "AWGN", 1, "noise", 2),
    ("jpeg", "JPEG", 2, "jpeg", 2),
    ("jpeg2000", "jpeg2000", 3, "jpeg 2000", 2),
    ("fnoise", "fnoise", 4, "fnoise", 2),
    ("blur", "BLUR", 5, "blur", 2),
    ("contrast", "contrast", 6, "contrast", 1),
]
N_IMAGES = len(REFS) * sum(t[4] for t in TYPES)
XLSX_HEADER = ["image", "dst_idx", "dst_type", "dst_lev", "dmos_std", "dmos"]
TABLE_OFFSET = [None, None, None]  # the official sheet's table starts in column D, on row 4


def _entries() -> list[tuple[str, str, str, int, float]]:
    """(ref, folder, file name, level, dmos): DMOS grows with the level, so level 1 is the better image."""
    out = []
    for r, ref in enumerate(REFS):
        for t, (folder, token, _, _, levels) in enumerate(TYPES):
            for level in range(1, levels + 1):
                out.append((str(ref), folder, f"{ref}.{token}.{level}.png", level, 0.1 * level + 0.02 * t + 0.01 * r))
    return out


def make_csiq(root: Path, variant: str = "xlsx", flat: str | None = None, rows: list | None = None) -> Path:
    """Miniature CSIQ: src_imgs/, dst_imgs/<type>/ (or a flat folder) and the spreadsheet or text labels."""
    for ref in REFS:
        tiny_image(root / "src_imgs" / f"{ref}.png")
    for _, folder, name, level, _ in _entries():
        tiny_image(root / (flat or f"dst_imgs/{folder}") / name, shade=level)
    if variant == "xlsx":
        index = {t[0]: t for t in TYPES}
        data = (
            rows
            if rows is not None
            else [
                [int(ref) if ref.isdigit() else ref, index[folder][2], index[folder][3], level, 0.05, dmos]
                for ref, folder, _, level, dmos in _entries()
            ]
        )
        table = [[*TABLE_OFFSET, *row] for row in [XLSX_HEADER, *data]]
        title_rows: list[list[object]] = [["CSIQ DMOS"], [None], [None]]
        by_distortion = [*title_rows, [*TABLE_OFFSET, "dst_type", "image", "dst_lev", "dmos"]]
        write_xlsx(
            root / "csiq.DMOS.xlsx", {"all_by_distortion": by_distortion, "all_by_image": [*title_rows, *table]}
        )
    else:
        lines = rows if rows is not None else [f"{name} {dmos:.6f}" for _, _, name, _, dmos in _entries()]
        (root / "csiq_label.txt").write_text("\n".join(lines) + "\n")
    return root


def test_official_spreadsheet_layout(tmp_path: Path) -> None:
    root = make_csiq(tmp_path / "CSIQ")
    ds = load_csiq(root)
    assert ds.name == "CSIQ" and ds.synthetic and len(ds) == N_IMAGES
    first = ds.records[0]
    assert first.path == root / "dst_imgs" / "awgn" / "1600.AWGN.1.png" and first.ref_id == "1600"
    assert {r.path.parent.name for r in ds.records} == {t[0] for t in TYPES}
    assert ds.records[0].raw_label == pytest.approx(0.1) and ds.records[0].label == pytest.approx(0.9)
    assert len({r.ref_id for r in ds.records}) == len(REFS)
    assert_refs_disjoint(ds)


def test_workbook_layout_and_type_spellings(tmp_path: Path) -> None:
    import openpyxl

    root = make_csiq(tmp_path / "CSIQ")
    sheet = openpyxl.load_workbook(root / "csiq.DMOS.xlsx", read_only=True)["all_by_image"]
    assert list(next(sheet.iter_rows(min_row=4, max_row=4, values_only=True)))[3:9] == XLSX_HEADER
    derived = [["boston", 4, "1/f noise", 1, 0.05, 0.2], ["boston", 3, "JPEG2000", 1, 0.05, 0.3]]
    ds = load_csiq(make_csiq(tmp_path / "derived", rows=derived))
    assert [r.path.parent.name for r in ds.records] == ["fnoise", "jpeg2000"]


def test_folder_letter_case_ignored(tmp_path: Path) -> None:
    root = make_csiq(tmp_path / "CSIQ")
    (root / "dst_imgs" / "awgn").rename(root / "dst_imgs" / "AWGN")
    ds = load_csiq(root)
    assert len(ds) == N_IMAGES and ds.records[0].path == root / "dst_imgs" / "AWGN" / "1600.AWGN.1.png"


def test_lower_level_is_better(tmp_path: Path) -> None:
    ds = load_csiq(make_csiq(tmp_path / "CSIQ"))
    by_name = {r.path.name: r for r in ds.records}
    assert by_name["boston.BLUR.1.png"].label > by_name["boston.BLUR.2.png"].label


def test_text_labels_with_flat_folder(tmp_path: Path) -> None:
    root = make_csiq(tmp_path / "CSIQ", variant="txt", flat="dst_imgs_all")
    ds = load_dataset("csiq", root)
    assert len(ds) == N_IMAGES and ds.records[0].path == root / "dst_imgs_all" / "1600.AWGN.1.png"
    assert {r.ref_id for r in ds.records} == {str(r) for r in REFS}
    assert_refs_disjoint(ds)


def test_extra_distorted_images_are_ignored(tmp_path: Path) -> None:
    root = make_csiq(tmp_path / "CSIQ")
    tiny_image(root / "dst_imgs" / "blur" / "1600.BLUR.9.png")
    assert len(load_csiq(root)) == N_IMAGES


def test_missing_image_nan_and_duplicate(tmp_path: Path) -> None:
    root = make_csiq(tmp_path / "a")
    (root / "dst_imgs" / "jpeg" / "boston.JPEG.2.png").unlink()
    with pytest.raises(DatasetError, match=r"CSIQ images .*not found.*\(1 in total\): boston\.JPEG\.2\.png"):
        load_csiq(root)
    nan_row = [["boston", 5, "blur", 1, 0.05, None]]
    with pytest.raises(DatasetError, match=r"values missing \(NaN\).*boston\.BLUR\.1\.png \(empty\)"):
        load_csiq(make_csiq(tmp_path / "b", rows=nan_row))
    dup = [["boston", 5, "blur", 1, 0.05, 0.2], ["boston", 5, "blur", 1, 0.05, 0.3]]
    with pytest.raises(DatasetError, match=r"duplicate image names \(1 in total\): boston\.BLUR\.1\.png"):
        load_csiq(make_csiq(tmp_path / "c", rows=dup))


def test_unknown_type_bad_line_and_no_labels(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"unknown distortion types.*boston: dst_type 'sharpen'"):
        load_csiq(make_csiq(tmp_path / "a", rows=[["boston", 7, "sharpen", 1, 0.05, 0.2]]))
    with pytest.raises(DatasetError, match=r"lines not of the form.*line 2: 'boston\.SHARP\.1\.png 0\.2'"):
        load_csiq(make_csiq(tmp_path / "b", variant="txt", rows=["boston.BLUR.1.png 0.1", "boston.SHARP.1.png 0.2"]))
    with pytest.raises(DatasetError, match=r"outside 0\.\.1"):
        load_csiq(make_csiq(tmp_path / "c", variant="txt", rows=["boston.BLUR.1.png 7.5"]))
    (tmp_path / "d").mkdir()
    with pytest.raises(DatasetError, match="CSIQ label file not found"):
        load_csiq(tmp_path / "d")
