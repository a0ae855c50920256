from pathlib import Path

import pytest
from dataset_fixtures import assert_parts_disjoint, tiny_image, write_csv

from qfm_iqm.data.livefb import load_livefb
from qfm_iqm.data.records import DatasetError
from qfm_iqm.data.registry import load_dataset
from qfm_iqm.data.splits import official_split

FOLDERS = ["AVA__", "blur_dataset", "EE371R", "voc_emotic_ava"]
NAMES = [f"{FOLDERS[i % 4]}/{i:04d}.jpg" for i in range(12)]
SETS = ["train"] * 6 + ["val"] * 3 + ["test"] * 3


def make_livefb(root: Path, split: str = "set", rows: list[list[object]] | None = None) -> Path:
    """Miniature LIVE-FB: database/labels_image.csv (+ labels_patch.csv) and the source sub-folders."""
    db = root / "database"
    for i, name in enumerate(NAMES):
        tiny_image(db / name, shade=i)
    header = ["name_image", "mos_image", "width", "height"]
    if rows is None:
        rows = [[n, 40.0 + 3 * i, 8, 8] for i, n in enumerate(NAMES)]
        if split == "set":
            rows = [[*r, s] for r, s in zip(rows, SETS)]
        elif split == "is_valid":
            rows = [[*r, i % 4 == 0] for i, r in enumerate(rows)]
    header += ["set"] if split == "set" else ["is_valid"] if split == "is_valid" else []
    write_csv(db / "labels_image.csv", header, rows)
    patch_rows = [[n, 40.0, 50.0, 0, 0, 4, 4] for n in NAMES]
    write_csv(db / "labels_patch.csv", ["name_image", "mos_image", "mos_patch", "left", "top", "w", "h"], patch_rows)
    return root


def test_official_layout_with_set_column(tmp_path: Path) -> None:
    root = make_livefb(tmp_path / "FLIVE_Database")
    ds = load_livefb(root)
    assert ds.name == "LIVE-FB" and not ds.synthetic and len(ds) == len(NAMES)
    assert ds.records[1].path == root / "database" / "blur_dataset" / "0001.jpg"
    assert ds.records[0].raw_label == 40.0 and ds.records[0].label == pytest.approx(0.4)
    assert ds.records[5].label > ds.records[0].label
    assert ds.official_split == {"train": tuple(range(6)), "val": (6, 7, 8), "test": (9, 10, 11)}
    assert_parts_disjoint(ds.official_split, len(ds))
    split = official_split(ds)
    assert split is not None and split.test == (9, 10, 11)


def test_is_valid_flag_and_no_split(tmp_path: Path) -> None:
    ds = load_dataset("livefb", make_livefb(tmp_path / "a", split="is_valid") / "database")
    assert ds.official_split is not None and ds.official_split["val"] == (0, 4, 8) and ds.official_split["test"] == ()
    split = official_split(ds)
    assert split is not None and split.test == (0, 4, 8)  # no test part: the validation part is the test
    assert set(split.train).isdisjoint(split.test)
    assert load_livefb(make_livefb(tmp_path / "b", split="none")).official_split is None


def test_errors(tmp_path: Path) -> None:
    rows = [[n, 40.0, 8, 8, "train"] for n in NAMES]
    rows[2][4] = "holdout"
    with pytest.raises(
        DatasetError, match=r"without a recognised split value \(1 in total\): EE371R/0002\.jpg \(holdout\)"
    ):
        load_livefb(make_livefb(tmp_path / "a", rows=rows))
    rows = [[n, 40.0, 8, 8, "train"] for n in NAMES]
    rows[3][1] = 140.0
    with pytest.raises(DatasetError, match=r"outside 0\.\.100.*voc_emotic_ava/0003\.jpg \(140\.0\)"):
        load_livefb(make_livefb(tmp_path / "b", rows=rows))
    root = make_livefb(tmp_path / "c")
    (root / "database" / "AVA__" / "0004.jpg").unlink()
    with pytest.raises(DatasetError, match=r"not found .*\(1 in total\): AVA__/0004\.jpg"):
        load_livefb(root)
