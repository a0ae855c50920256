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
from qfm_iqm.data.records import IQADataset, LabelScale
from qfm_iqm.data.registry import register_dataset

LIVEFB_SCALE = LabelScale(low=0.0, high=100.0, higher_is_better=True, name="MOS")
LABEL_FILE = "labels_image.csv"
NAME_COLUMNS = ("name_image", "name", "image_name", "img_name")
SCORE_COLUMNS = ("mos_image", "mos")
SPLIT_COLUMNS = ("set", "split", "official_split")


def _official_split(table: Table, names: list[str]) -> dict[str, tuple[int, ...]] | None:
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


def _valid_flag_part(value: object) -> str | None:
    flag = flag_value(value)
    return None if flag is None else "val" if flag else "train"


@register_dataset(
    "livefb",
    expects=f"{LABEL_FILE} (at the root or in database/) and the image folders its names start with",
    source="LIVE-FB / FLIVE large-scale database of the PaQ-2-PiQ project, Ying et al., CVPR 2020",
    kind="authentic, 39,810 images, MOS 0..100 (higher is better), official split when labelled",
)
def load_livefb(root: str | Path) -> IQADataset:
    """Load LIVE-FB's whole images (patch labels in ``labels_patch.csv`` are not used).

    ``labels_image.csv``: image path column ``name_image`` (or ``name``), relative to the CSV's folder
    and including the source sub-folder; score column ``mos_image`` (or ``mos``). The official split is
    read from a ``set``/``split`` column or an ``is_valid`` flag when the file has one.
    """
    root = Path(root)
    table = read_csv(find_file([root, root / "database"], [LABEL_FILE], "LIVE-FB label file"))
    where = str(table.path)
    names = table.texts(table.column(NAME_COLUMNS, "image name"))
    check_nonempty(names, where)
    check_unique(names, where)
    scores = table.values(table.column(SCORE_COLUMNS, "MOS"))
    raw = check_scores(names, scores, where, LIVEFB_SCALE.low, LIVEFB_SCALE.high)
    split = _official_split(table, names)
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
