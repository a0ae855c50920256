import csv
from pathlib import Path

import pytest
from dataset_fixtures import assert_parts_disjoint, tiny_image, write_csv

from qfm_iqm.data.koniq10k import SCORES_FILE, SETS_FILE, load_koniq10k
from qfm_iqm.data.records import DatasetError
from qfm_iqm.data.registry import load_dataset
from qfm_iqm.data.splits import OFFICIAL_SPLIT_SEED, make_split, official_split

SCORE_HEADER = ["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "MOS_zscore"]
SETS_HEADER = ["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "set"]  # MOS: 0..100
N = 10
SETS = ["training"] * 6 + ["validation"] * 2 + ["test"] * 2
QUOTED = {"quoting": csv.QUOTE_NONNUMERIC, "lineterminator": "\n"}
COUNTS = [0, 2, 30, 60, 8]  # ratings per category 1..5


def _zscore(i: int) -> float:
    return 10.0 + 8 * i


def _row(i: int) -> list[object]:
    """A scores-file row: rating counts, their total, MOS (1..5), SD, MOS_zscore (0..100); the scores
    repeat every N images."""
    return [f"{1000 + i}.jpg", *COUNTS, sum(COUNTS), 1.5 + 0.3 * (i % N), 0.6, _zscore(i % N)]


def _set_row(i: int) -> list[object]:
    """A sets-file row: rating fractions, their count, the 0..100 score in 'MOS', SD and the part."""
    return [f"{1000 + i}.jpg", *(c / sum(COUNTS) for c in COUNTS), sum(COUNTS), _zscore(i % N), 0.6, SETS[i % N]]


def make_koniq(
    root: Path, folders: tuple[str, ...] = ("1024x768",), rows: list | None = None, sets: bool = True, n: int = N
) -> Path:
    """Miniature KonIQ-10k of ``n`` images: the scores CSV (quoted header and names), optionally the sets
    CSV of the authors' GitHub repository (plain CSV, 'set' column), and the image folders."""
    rows = rows if rows is not None else [_row(i) for i in range(n)]
    for folder in folders:
        for i in range(n):
            tiny_image(root / folder / f"{1000 + i}.jpg", shade=i)
    write_csv(root / SCORES_FILE, SCORE_HEADER, rows, **QUOTED)
    if sets:
        write_csv(root / SETS_FILE, SETS_HEADER, [_set_row(i) for i in range(n)], lineterminator="\n")
    return root


def test_official_layout_and_split(tmp_path: Path) -> None:
    root = make_koniq(tmp_path / "koniq10k")
    assert (root / SCORES_FILE).read_text().startswith('"image_name","c1"')
    assert (root / SETS_FILE).read_text().startswith("image_name,c1,")
    ds = load_koniq10k(root)
    assert ds.name == "KonIQ-10k" and not ds.synthetic and len(ds) == N
    assert ds.records[0].path == root / "1024x768" / "1000.jpg" and ds.records[0].ref_id is None
    assert ds.scale.name == "MOS_zscore" and ds.records[1].raw_label == 18.0
    assert ds.records[1].label == pytest.approx(0.18) and ds.records[1].raw_std is None
    assert ds.official_split == {"train": tuple(range(6)), "val": (6, 7), "test": (8, 9)}
    assert_parts_disjoint(ds.official_split, N)
    split = official_split(ds)
    assert split is not None and split.seed == OFFICIAL_SPLIT_SEED
    assert split.train == tuple(range(6)) and split.test == (8, 9)
    random = make_split(ds, seed=0)
    assert set(random.train).isdisjoint(random.test)


def test_higher_mos_is_better(tmp_path: Path) -> None:
    ds = load_koniq10k(make_koniq(tmp_path / "koniq10k"))
    assert ds.records[9].label > ds.records[0].label


def test_mos_option_and_image_folders(tmp_path: Path) -> None:
    root = make_koniq(tmp_path / "koniq10k", folders=("512x384", "1024x768"))
    ds = load_dataset("koniq10k", root, score="MOS", images="512x384")
    assert ds.records[0].raw_label == 1.5 and ds.records[0].label == pytest.approx(0.5 / 4)
    assert ds.records[0].raw_std == 0.6 and ds.records[0].path.parent.name == "512x384"
    assert load_dataset("koniq10k", root).records[0].path.parent.name == "1024x768"
    only_small = make_koniq(tmp_path / "small", folders=("512x384",))
    assert load_koniq10k(only_small).records[0].path.parent.name == "512x384"


def test_without_sets_file_and_sets_file_alone(tmp_path: Path) -> None:
    root = make_koniq(tmp_path / "a", sets=False)
    ds = load_koniq10k(root)
    assert ds.official_split is None and official_split(ds) is None
    root = make_koniq(tmp_path / "b")
    (root / "metadata").mkdir()
    (root / SETS_FILE).rename(root / "metadata" / SETS_FILE)
    (root / SCORES_FILE).unlink()
    ds = load_koniq10k(root)  # the sets file's MOS column is the 0..100 score
    assert ds.official_split == {"train": tuple(range(6)), "val": (6, 7), "test": (8, 9)}
    assert [r.raw_label for r in ds.records] == [_zscore(i) for i in range(N)]
    with pytest.raises(DatasetError, match=r"has no MOS column .*1\.\.5 MOS is only in koniq10k_scores"):
        load_koniq10k(root, score="MOS")


def test_errors(tmp_path: Path) -> None:
    rows = [_row(i) for i in range(N)]
    rows[2][9] = "NaN"
    with pytest.raises(DatasetError, match=r"values missing \(NaN\).*1002\.jpg \(NaN\)"):
        load_koniq10k(make_koniq(tmp_path / "a", rows=rows))
    rows = [_row(i) for i in range(N)] + [_row(4)]
    with pytest.raises(DatasetError, match=r"duplicate image names \(1 in total\): 1004\.jpg"):
        load_koniq10k(make_koniq(tmp_path / "b", rows=rows))
    root = make_koniq(
        tmp_path / "c", rows=[_row(i) for i in range(N)] + [["2000.jpg", 0, 0, 0, 0, 9, 9, 4.9, 0.1, 90.0]]
    )
    with pytest.raises(DatasetError, match=r"images missing from the split file \(1 in total\): 2000\.jpg"):
        load_koniq10k(root)
    root = make_koniq(tmp_path / "d")
    (root / "1024x768" / "1003.jpg").unlink()
    with pytest.raises(DatasetError, match=r"not found .*\(1 in total\): 1003\.jpg"):
        load_koniq10k(root)
    with pytest.raises(DatasetError, match="image folder missing"):
        load_koniq10k(root, images="512x384")
    with pytest.raises(ValueError, match="option score: expected one of MOS_zscore, MOS"):
        load_koniq10k(root, score="mean")
