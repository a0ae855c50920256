import math
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from dataset_fixtures import assert_parts_disjoint, assert_refs_disjoint, tiny_image, write_csv

from qfm_iqm.data.generic import load_csv, load_folder
from qfm_iqm.data.records import DatasetError
from qfm_iqm.data.registry import load_dataset
from qfm_iqm.data.splits import official_split

KONIQ_HEADER = ["img_name", "mos", "std", "split", "c1", "c2", "c3", "c4", "c5", "c_total", "official_split"]
SPLIT_NAMES = {0: "train", 1: "val", 2: "test"}


def make_pyiqa_koniq(root: Path, official_column: bool = True) -> Path:
    """pyiqa's meta_info_KonIQ10kDataset.csv (CRLF, integer 'split', HF 'official_split') + 512x384/."""
    rows = []
    for i in range(9):
        tiny_image(root / "512x384" / f"{100 + i}.jpg", shade=i)
        rows.append([f"{100 + i}.jpg", 10.0 + 9 * i, 0.5, i % 3, 0.0, 0.1, 0.2, 0.6, 0.1, 100, SPLIT_NAMES[i % 3]])
    header = KONIQ_HEADER if official_column else KONIQ_HEADER[:-1]
    write_csv(root / "meta_info" / "meta_info_KonIQ10kDataset.csv", header, [r[: len(header)] for r in rows])
    return root


def make_pyiqa_live(root: Path) -> Path:
    """pyiqa's meta_info_LIVEIQADataset.csv (full-reference layout, DMOS) with a ratio split column."""
    rows = []
    for k in range(1, 13):
        ref = f"refimgs/ref{k % 4}.bmp"
        tiny_image(root / ref)
        tiny_image(root / "jp2k" / f"img{k}.bmp", shade=k)
        rows.append([ref, f"jp2k/img{k}.bmp", 20.0 + 5 * k, "train" if k % 4 else "val"])
    write_csv(
        root / "meta_info_LIVEIQADataset.csv", ["ref_name", "dist_name", "mos", "ratio802_seed123_split_01"], rows
    )
    return root


def test_pyiqa_koniq_csv_with_official_split(tmp_path: Path) -> None:
    root = make_pyiqa_koniq(tmp_path / "koniq10k")
    assert (root / "meta_info" / "meta_info_KonIQ10kDataset.csv").read_bytes().count(b"\r\n") == 10
    ds = load_dataset("csv", root, file="meta_info/meta_info_KonIQ10kDataset.csv", image_root="512x384",
                      low="0", high="100")  # fmt: skip
    assert ds.name == "meta_info_KonIQ10kDataset" and not ds.synthetic and len(ds) == 9
    assert ds.records[0].path == root / "512x384" / "100.jpg" and ds.records[0].label == pytest.approx(0.1)
    assert ds.records[8].label > ds.records[0].label
    assert ds.official_split == {"train": (0, 3, 6), "val": (1, 4, 7), "test": (2, 5, 8)}
    assert_parts_disjoint(ds.official_split, 9)
    split = official_split(ds)
    assert split is not None and split.train == (0, 3, 6) and split.test == (2, 5, 8)
    older = make_pyiqa_koniq(tmp_path / "older", official_column=False)  # integer 'split' column only
    ds = load_csv(older, file="meta_info/meta_info_KonIQ10kDataset.csv", image_root="512x384", split_column="split")
    assert ds.official_split == {"train": (0, 3, 6), "val": (1, 4, 7), "test": (2, 5, 8)}
    assert ds.scale.low == 10.0 and ds.scale.high == 82.0  # observed range without low/high
    assert load_csv(older, file="meta_info/meta_info_KonIQ10kDataset.csv", image_root="512x384",
                    split_column="none").official_split is None  # fmt: skip


def test_pyiqa_full_reference_csv_is_synthetic(tmp_path: Path) -> None:
    root = make_pyiqa_live(tmp_path / "LIVEIQA_release2")
    ds = load_dataset("csv", root, low="0", high="100", higher_is_better="false",
                      split_column="ratio802_seed123_split_01", dataset_name="LIVE")  # fmt: skip
    assert ds.name == "LIVE" and ds.synthetic and len(ds) == 12
    assert ds.records[0].path == root / "jp2k" / "img1.bmp" and ds.records[0].ref_id == "refimgs/ref1.bmp"
    assert ds.records[0].label == pytest.approx(0.75) and ds.records[0].label > ds.records[5].label
    assert_refs_disjoint(ds)
    assert ds.official_split is not None and ds.official_split["val"] == (3, 7, 11)


def test_exclude_and_legacy_pickle(tmp_path: Path) -> None:
    root = tmp_path / "LIVEC"
    names = [f"t{i}.bmp" for i in range(1, 4)] + [f"{100 + i}.bmp" for i in range(6)]
    for name in names[3:]:
        tiny_image(root / "Images" / name)
    write_csv(
        root / "meta_info_LIVEChallengeDataset.csv",
        ["img_name", "mos", "std"],
        [[n, 50.0 + i, 9] for i, n in enumerate(names)],
    )
    with (root / "livechallenge_seed123.pkl").open("wb") as fh:
        pickle.dump({1: {"train": [0, 2, 4, 5], "val": [1, 3]}, 2: {"train": [1, 2, 3, 4], "val": [0, 5]}}, fh)
    ds = load_csv(
        root, image_root="Images", exclude=r"^t\d+\.bmp$", split_file="livechallenge_seed123.pkl", split_index="2"
    )
    assert [r.path.name for r in ds.records] == names[3:]
    assert ds.official_split == {"train": (1, 2, 3, 4), "val": (0, 5), "test": ()}
    with (root / "bad.pkl").open("wb") as fh:
        pickle.dump({1: {"train": [0, 9], "val": [1]}}, fh)
    with pytest.raises(DatasetError, match=r"no row index in \[0, 6\) \(1 in total\): 9"):
        load_csv(root, image_root="Images", exclude=r"^t", split_file="bad.pkl")
    with (root / "code.pkl").open("wb") as fh:
        pickle.dump(OrderedDict({1: {"train": [0]}}), fh)
    with pytest.raises(DatasetError, match=r"may hold only dicts, lists and integers, found collections\.OrderedDict"):
        load_csv(root, image_root="Images", exclude=r"^t", split_file="code.pkl")


def test_csv_errors(tmp_path: Path) -> None:
    root = make_pyiqa_koniq(tmp_path / "koniq10k")
    meta = root / "meta_info"
    with pytest.raises(DatasetError, match=r"images listed in .*not found.*\(9 in total\)"):
        load_csv(meta)  # images are not under meta_info/; the single CSV there is picked
    write_csv(meta / "other.csv", ["img_name", "mos"], [["100.jpg", "n/a"], ["100.jpg", "3"]])
    with pytest.raises(DatasetError, match="give the CSV file with the 'file' option"):
        load_csv(meta)
    with pytest.raises(DatasetError, match=r"duplicate image names \(1 in total\): 100\.jpg"):
        load_csv(meta, file="other.csv")
    write_csv(meta / "other.csv", ["img_name", "mos"], [["100.jpg", "n/a"], ["101.jpg", "3"]])
    with pytest.raises(DatasetError, match=r"values missing \(NaN\), not numeric.*100\.jpg \(n/a\)"):
        load_csv(meta, file="other.csv")
    with pytest.raises(DatasetError, match=r"no score column 'quality'"):
        load_csv(meta, file="other.csv", score_column="quality")
    with pytest.raises(ValueError, match="has no option imgs; its options are file, image_root"):
        load_dataset("csv", meta, imgs="x")
    with pytest.raises(ValueError, match="options low and high go together"):
        load_csv(root, file="meta_info/meta_info_KonIQ10kDataset.csv", low=1)


def test_folder_of_unlabelled_images(tmp_path: Path) -> None:
    root = tmp_path / "extra"
    for rel in ["a.jpg", "sub/b.PNG", "sub/deeper/c.webp", ".hidden/d.jpg", "sub/.e.jpg"]:
        tiny_image(root / rel)
    (root / "notes.txt").write_text("not an image")
    ds = load_dataset("folder", root)
    assert [r.path.relative_to(root).as_posix() for r in ds.records] == ["a.jpg", "sub/b.PNG", "sub/deeper/c.webp"]
    assert np.isnan(ds.labels()).all() and all(math.isnan(r.raw_label) for r in ds.records)
    assert not ds.synthetic and ds.official_split is None
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images found under"):
        load_folder(tmp_path / "empty")


def test_csv_without_header_is_refused_not_short_of_its_first_image(tmp_path: Path) -> None:
    for i in range(3):
        tiny_image(tmp_path / f"{i}.png")
    (tmp_path / "mos.csv").write_text("0.png,10\n1.png,20\n2.png,30\n")
    with pytest.raises(DatasetError, match=r"mos\.csv: the first row holds data \(0\.png, 10\), not column names"):
        load_csv(tmp_path)
    (tmp_path / "mos.csv").write_text("image,mos\n0.png,10\n1.png,20\n2.png,30\n")
    assert len(load_csv(tmp_path)) == 3


def test_image_paths_leaving_the_root_need_allow_outside_root(tmp_path: Path) -> None:
    root = tmp_path / "data" / "set"
    tiny_image(root / "a.png")
    outside = tiny_image(tmp_path / "secret.png")
    write_csv(root / "mos.csv", ["image", "mos"], [["a.png", 10], ["../../secret.png", 20], [str(outside), 30]])
    message = r"outside their folder .* \(2 in total\): \.\./\.\./secret\.png, /.*secret\.png"
    with pytest.raises(DatasetError, match=message):
        load_csv(root)
    with pytest.raises(DatasetError, match="outside their folder"):
        load_csv(root, image_root=".", allow_outside_root="false")
    ds = load_dataset("csv", root, allow_outside_root="true")
    assert [r.path.resolve() for r in ds.records] == [root / "a.png", outside, outside]


def test_label_file_encodings(tmp_path: Path) -> None:
    tiny_image(tmp_path / "café.png")
    text = "image,mos\ncafé.png,10\n"
    for encoding in ("utf-16", "utf-32", "utf-8-sig", "cp1252"):
        (tmp_path / "mos.csv").write_bytes(text.encode(encoding))
        assert load_csv(tmp_path, low=0, high=100).records[0].raw_label == 10.0, encoding
    (tmp_path / "mos.csv").write_bytes(text.encode("utf-16-le"))  # no byte-order mark
    with pytest.raises(DatasetError, match="mos.csv holds NUL bytes: UTF-16 or UTF-32 text without a byte-order mark"):
        load_csv(tmp_path)
    (tmp_path / "mos.csv").write_bytes(b"image,mos\n\x81x.png,10\n")  # 0x81: not UTF-8, undefined in Windows-1252
    with pytest.raises(DatasetError, match=r"it is not UTF-8 \(byte 10 is invalid\) nor Windows-1252 \(byte 10"):
        load_csv(tmp_path)
