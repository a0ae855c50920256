"""Loader for the LIVE-FB / FLIVE (PaQ-2-PiQ) database, whole images (official layout)."""

from __future__ import annotations

from pathlib import Path

from qfm_iqm.data.files import (
    ImageFinder,
    Table,
    check_nonempty,
    check_scores,
    check_unique,
    find_file,
    flag_value,
    make_records,
    parts_to_split,
    read_csv,
    resolve_images,
)
from qfm_iqm.data.records import DatasetError, IQADataset, LabelScale, offenders_message
from qfm_iqm.data.registry import register_dataset

LIVEFB_SCALE = LabelScale(low=0.0, high=100.0, higher_is_better=True, name="MOS")
LABEL_FILE = "labels_image.csv"
NAME_COLUMNS = ("name", "name_image", "image_name", "img_name")
SCORE_COLUMNS = ("mos", "mos_image")
SPLIT_COLUMNS = ("set", "split", "official_split")
# The authors' split files: the test images (pictures larger than 640 px) and the training images with
# their is_valid flag (pictures of at most 640 px). '<' and '>' are dropped from the names in the
# distributed copies; the original names are accepted too.
TEST_SPLIT_FILES = ("labels640.csv", "labels>640.csv")
TRAIN_VAL_SPLIT_FILES = ("labels=640_padded.csv", "labels<=640_padded.csv")
SPLIT_NAME_COLUMN = "name_image"


def _valid_flag_part(value: object) -> str | None:
    flag = flag_value(value)
    return None if flag is None else "val" if flag else "train"


def _split_from_column(table: Table, names: list[str]) -> dict[str, tuple[int, ...]] | None:
    """From a ``set``/``split`` column (train/val/test names or 0/1/2), else an ``is_valid`` flag
    (true: val, false: train); ``None`` if the label file has neither."""
    where = str(table.path)
    column = table.find_column(SPLIT_COLUMNS)
    if column is not None:
        return parts_to_split(names, table.values(column), where)
    column = table.find_column(["is_valid"])
    if column is None:
        return None
    return parts_to_split(names, table.values(column), where, parse=_valid_flag_part)


def _first_file(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _split_from_files(folder: Path, names: list[str]) -> dict[str, tuple[int, ...]] | None:
    """The authors' split: test = the images of ``labels640.csv``, val = the images flagged ``is_valid``
    in ``labels=640_padded.csv``, train = all other images (as pyiqa builds it). ``None`` when neither
    file is in ``folder``."""
    test_file = _first_file(folder, TEST_SPLIT_FILES)
    train_val_file = _first_file(folder, TRAIN_VAL_SPLIT_FILES)
    if test_file is None and train_val_file is None:
        return None
    if test_file is None or train_val_file is None:
        missing = TEST_SPLIT_FILES[0] if test_file is None else TRAIN_VAL_SPLIT_FILES[0]
        raise DatasetError(
            f"{test_file or train_val_file}: the official split needs {missing} in the same folder too "
            "(add it, or remove this file to load without the official split)"
        )
    test_table, train_val = read_csv(test_file), read_csv(train_val_file)
    test_names = set(test_table.texts(test_table.column([SPLIT_NAME_COLUMN], "image name")))
    listed = train_val.texts(train_val.column([SPLIT_NAME_COLUMN], "image name"))
    flags = train_val.values(train_val.column(["is_valid"], "validation flag"))
    flagged = parts_to_split(listed, flags, str(train_val.path), parse=_valid_flag_part)
    val_names = {listed[i] for i in flagged["val"]}
    in_both = sorted(test_names & set(listed))
    if in_both:
        raise DatasetError(offenders_message(f"{test_file.name} and {train_val_file.name} both list images", in_both))
    if not (test_names | set(listed)) & set(names):
        raise DatasetError(f"{test_file} and {train_val_file} list none of the images of {LABEL_FILE}")
    parts = ["test" if n in test_names else "val" if n in val_names else "train" for n in names]
    return parts_to_split(names, parts, str(folder))


@register_dataset(
    "livefb",
    expects=f"{LABEL_FILE} (at the root or in database/), the image folders its names start with, "
    f"and for the official split {TEST_SPLIT_FILES[0]} and {TRAIN_VAL_SPLIT_FILES[0]}",
    source="LIVE-FB / FLIVE large-scale database of the PaQ-2-PiQ project, Ying et al., CVPR 2020",
    kind="authentic, 39,810 images, MOS 0..100 (higher is better), official train/val/test split",
)
def load_livefb(root: str | Path) -> IQADataset:
    """Load LIVE-FB's whole images (patch labels in ``labels_patch.csv`` are not used).

    ``labels_image.csv``: image path column ``name`` (or ``name_image``), relative to the CSV's folder
    and including the source sub-folder (``voc_emotic_ava/``, ``blur_dataset/``, ``EE371R/``); score
    column ``mos`` (or ``mos_image``). The official split is read from a ``set``/``split`` column or an
    ``is_valid`` flag when the label file has one, else from the authors' split files next to it.
    """
    root = Path(root)
    table = read_csv(find_file([root, root / "database"], [LABEL_FILE], "LIVE-FB label file"))
    where = str(table.path)
    names = table.texts(table.column(NAME_COLUMNS, "image name"))
    check_nonempty(names, where)
    check_unique(names, where)
    scores = table.values(table.column(SCORE_COLUMNS, "MOS"))
    raw = check_scores(names, scores, where, LIVEFB_SCALE.low, LIVEFB_SCALE.high)
    split = _split_from_column(table, names)
    if split is None:
        split = _split_from_files(table.path.parent, names)
    finder = ImageFinder(dict.fromkeys([table.path.parent, root]))
    paths = resolve_images(finder, names, f"LIVE-FB images listed in {table.path.name}")
    return IQADataset(
        name="LIVE-FB",
        root=root,
        records=make_records(paths, raw, LIVEFB_SCALE),
        scale=LIVEFB_SCALE,
        synthetic=False,
        official_split=split,
    )
