from pathlib import Path

import pytest
from dataset_fixtures import assert_parts_disjoint, tiny_image, write_csv

from qfm_iqm.data.livefb import LABEL_FILE, TEST_SPLIT_FILES, TRAIN_VAL_SPLIT_FILES, load_livefb
from qfm_iqm.data.records import DatasetError
from qfm_iqm.data.registry import load_dataset
from qfm_iqm.data.splits import official_split

# image names as labels_image.csv lists them: the source folder, then the file (AVA, EMOTIC and VOC
# pictures carry their source as a file-name prefix inside voc_emotic_ava/)
NAMES = [
    "blur_dataset/motion0044.jpg",
    "voc_emotic_ava/AVA__129332.jpg",
    "voc_emotic_ava/EMOTIC__2ccz61xjvddut42ywu.jpg",
    "voc_emotic_ava/JPEGImages__2008_000203.jpg",
    "voc_emotic_ava/VOC2012__2008_000497.jpg",
    "EE371R/rq59.jpg",
    "blur_dataset/out_of_focus0059.jpg",
    "voc_emotic_ava/AVA__12958.jpg",
    "voc_emotic_ava/EMOTIC__COCO_train2014_000000004377.jpg",
    "EE371R/rq73.jpg",
    "voc_emotic_ava/AVA__133333.jpg",
    "blur_dataset/motion0091.jpg",
]
TEST, VAL = (1, 5, 9), (2, 6)  # the rest is training data
# columns of the authors' split files (image and patch boxes; the padded file adds is_valid)
SPLIT_HEADER = ["mos_patch_1", "name_patch", "mos_image", "name_image", "width_image", "height_image"]


def _mos(i: int) -> float:
    return 0.0 if i == 11 else 40.0 + 3.7 * i  # a 0.0 score occurs in the release


def _split_row(i: int, names: list[str] = NAMES) -> list[object]:
    return [70.1, f"patches/{names[i].split('/')[1]}", _mos(i), names[i], 800, 600]


def make_livefb(root: Path, split_files: tuple[str, ...] = ("test", "train_val"), extra: int = 0) -> Path:
    """Miniature FLIVE_Database: database/labels_image.csv (name,mos), labels_patch.csv, the image
    folders, and the split files (labels640.csv, labels=640_padded.csv with its is_valid flag); ``extra``
    more training pictures (at most 4: their scores stay below 100) after the 12 of ``NAMES``."""
    names = NAMES + [f"EE371R/extra{k}.jpg" for k in range(extra)]
    db = root / "database"
    for i, name in enumerate(names):
        tiny_image(db / name, shade=i)
    write_csv(db / LABEL_FILE, ["name", "mos"], [[n, _mos(i)] for i, n in enumerate(names)], lineterminator="\n")
    patches = [[f"patches/{n.split('/')[1]}_patch_{k}.jpg", 55.5] for n in names for k in (1, 2, 3)]
    write_csv(db / "labels_patch.csv", ["name", "mos"], patches, lineterminator="\n")
    if "test" in split_files:
        write_csv(db / TEST_SPLIT_FILES[0], SPLIT_HEADER, [_split_row(i, names) for i in TEST], lineterminator="\n")
    if "train_val" in split_files:
        rows = [[*_split_row(i, names), i in VAL] for i in range(len(names)) if i not in TEST]
        write_csv(db / TRAIN_VAL_SPLIT_FILES[0], [*SPLIT_HEADER, "is_valid"], rows, lineterminator="\n")
    return root


def test_official_layout_and_split(tmp_path: Path) -> None:
    root = make_livefb(tmp_path / "FLIVE_Database")
    assert (root / "database" / TRAIN_VAL_SPLIT_FILES[0]).read_text().splitlines()[1].endswith(",False")
    ds = load_livefb(root)
    assert ds.name == "LIVE-FB" and not ds.synthetic and len(ds) == len(NAMES)
    assert ds.records[1].path == root / "database" / "voc_emotic_ava" / "AVA__129332.jpg"
    assert ds.records[0].raw_label == 40.0 and ds.records[0].label == pytest.approx(0.4)
    assert ds.records[10].label > ds.records[0].label and ds.records[11].raw_label == 0.0
    train = tuple(i for i in range(len(NAMES)) if i not in TEST + VAL)
    assert ds.official_split == {"train": train, "val": VAL, "test": TEST}
    assert_parts_disjoint(ds.official_split, len(ds))
    split = official_split(ds)
    assert split is not None and split.test == TEST and split.train == train


def test_label_file_split_column_and_no_split(tmp_path: Path) -> None:
    root = make_livefb(tmp_path / "a", split_files=())
    assert load_livefb(root).official_split is None
    sets = ["train", "val", "test"] * 4  # a meta-info style 'split' column takes precedence
    rows = [[n, _mos(i), sets[i]] for i, n in enumerate(NAMES)]
    write_csv(root / "database" / LABEL_FILE, ["name_image", "mos_image", "split"], rows)
    ds = load_dataset("livefb", root / "database")
    assert ds.official_split is not None and ds.official_split["val"] == (1, 4, 7, 10)


def test_errors(tmp_path: Path) -> None:
    root = make_livefb(tmp_path / "a", split_files=("test",))
    with pytest.raises(DatasetError, match=r"labels640\.csv: the official split needs labels=640_padded\.csv"):
        load_livefb(root)
    root = make_livefb(tmp_path / "b")
    rows = [[*_split_row(i), "maybe" if i == 0 else False] for i in range(len(NAMES)) if i not in TEST]
    write_csv(root / "database" / TRAIN_VAL_SPLIT_FILES[0], [*SPLIT_HEADER, "is_valid"], rows)
    with pytest.raises(DatasetError, match=r"without a recognised split value \(1 in total\): blur_dataset/.*maybe"):
        load_livefb(root)
    root = make_livefb(tmp_path / "c")
    rows = [_split_row(i) for i in (*TEST, 0)]
    write_csv(root / "database" / TEST_SPLIT_FILES[0], SPLIT_HEADER, rows)
    with pytest.raises(DatasetError, match=r"both list images \(1 in total\): blur_dataset/motion0044\.jpg"):
        load_livefb(root)
    root = make_livefb(tmp_path / "d")
    rows = [[n, 140.0 if i == 3 else _mos(i)] for i, n in enumerate(NAMES)]
    write_csv(root / "database" / LABEL_FILE, ["name", "mos"], rows)
    with pytest.raises(DatasetError, match=r"outside 0\.\.100.*JPEGImages__2008_000203\.jpg \(140\.0\)"):
        load_livefb(root)
    root = make_livefb(tmp_path / "e")
    (root / "database" / "EE371R" / "rq73.jpg").unlink()
    with pytest.raises(DatasetError, match=r"not found .*\(1 in total\): EE371R/rq73\.jpg"):
        load_livefb(root)
    root = make_livefb(tmp_path / "f")
    unknown = [70.1, "patches/x.jpg", 50.0, "other/x.jpg", 800, 600]
    write_csv(root / "database" / TEST_SPLIT_FILES[0], SPLIT_HEADER, [unknown])
    train_val_row = [*unknown[:3], "other/y.jpg", 8, 8, False]
    write_csv(root / "database" / TRAIN_VAL_SPLIT_FILES[0], [*SPLIT_HEADER, "is_valid"], [train_val_row])
    with pytest.raises(DatasetError, match=r"list none of the images of labels_image\.csv"):
        load_livefb(root)
