from pathlib import Path

import pytest
from dataset_fixtures import tiny_image, write_csv, write_xlsx

from qfm_iqm.data.records import DatasetError
from qfm_iqm.data.registry import load_dataset
from qfm_iqm.data.spaq import LABEL_STEM, load_spaq
from qfm_iqm.data.splits import make_split

HEADER = ["Image name", "MOS", "Brightness", "Colorfulness", "Contrast", "Noisiness", "Sharpness"]
N = 8


def _rows(n: int = N) -> list[list[object]]:
    """Label rows of photos 1..n; the scores repeat every N photos."""
    return [[f"{i:05d}.jpg", 20.0 + 9 * ((i - 1) % N + 1), 50.1, 40.2, 55.3, 60.4, 45.5] for i in range(1, n + 1)]


def make_spaq(root: Path, rows: list[list[object]] | None = None, as_csv: bool = False, n: int = N) -> Path:
    """Miniature SPAQ of ``n`` photos: Annotations/'MOS and Image attribute scores.xlsx' (or .csv) and TestImage/."""
    for i in range(1, n + 1):
        tiny_image(root / "TestImage" / f"{i:05d}.jpg", shade=i, size=(12, 9))
    rows = rows if rows is not None else _rows(n)
    if as_csv:
        write_csv(root / "Annotations" / f"{LABEL_STEM}.csv", HEADER, rows)
    else:
        write_xlsx(root / "Annotations" / f"{LABEL_STEM}.xlsx", {"Sheet1": [HEADER, *rows]})
    return root


def test_official_layout(tmp_path: Path) -> None:
    root = make_spaq(tmp_path / "SPAQ")
    ds = load_spaq(root)
    assert ds.name == "SPAQ" and not ds.synthetic and len(ds) == N
    assert ds.records[0].path == root / "TestImage" / "00001.jpg"
    assert ds.records[0].raw_label == 29.0 and ds.records[0].label == pytest.approx(0.29)
    assert ds.records[-1].label > ds.records[0].label  # higher MOS, higher label
    assert ds.resize_short_side == 512 and ds.official_split is None
    split = make_split(ds, seed=0)
    assert set(split.train).isdisjoint(split.test) and len(split.train) + len(split.test) == N


def test_resize_option_csv_copy_and_extension_fallback(tmp_path: Path) -> None:
    rows = _rows()
    rows[0][0] = "00001.png"  # listed extension differs from the file's
    root = make_spaq(tmp_path / "SPAQ", rows=rows, as_csv=True)
    ds = load_dataset("spaq", root, resize_short_side="none")
    assert ds.resize_short_side is None and ds.records[0].path.name == "00001.jpg"
    assert load_dataset("spaq", root, resize_short_side="384").resize_short_side == 384
    with pytest.raises(ValueError, match="option resize_short_side"):
        load_dataset("spaq", root, resize_short_side="-3")


def test_errors(tmp_path: Path) -> None:
    rows = _rows()
    rows[3][1] = None
    with pytest.raises(DatasetError, match=r"values missing \(NaN\).*00004\.jpg \(empty\)"):
        load_spaq(make_spaq(tmp_path / "a", rows=rows))
    root = make_spaq(tmp_path / "b")
    (root / "TestImage" / "00005.jpg").unlink()
    with pytest.raises(DatasetError, match=r"SPAQ images .*not found .*\(1 in total\): 00005\.jpg"):
        load_spaq(root)
    (root / "Annotations" / f"{LABEL_STEM}.xlsx").unlink()
    with pytest.raises(DatasetError, match="SPAQ label file not found"):
        load_spaq(root)
    with pytest.raises(DatasetError, match=r"duplicate image names \(1 in total\): 00002\.jpg"):
        load_spaq(make_spaq(tmp_path / "c", rows=[*_rows(), _rows()[1]]))
