"""Loader for the SPAQ smartphone photography quality database (official layout)."""

from __future__ import annotations

from pathlib import Path

from qfm_iqm.data.files import (
    ImageFinder,
    check_nonempty,
    check_scores,
    check_unique,
    find_file,
    make_records,
    option_int,
    read_table,
    resolve_images,
)
from qfm_iqm.data.records import DatasetError, IQADataset, LabelScale
from qfm_iqm.data.registry import register_dataset

SPAQ_SCALE = LabelScale(low=0.0, high=100.0, higher_is_better=True, name="MOS")
LABEL_STEM = "MOS and Image attribute scores"
SPAQ_SHORT_SIDE = 512


@register_dataset(
    "spaq",
    expects=f"'{LABEL_STEM}.xlsx' (or .csv; at the root or in Annotations/) and TestImage/",
    source="SPAQ (Smartphone Photography Attribute and Quality) database, Fang et al., CVPR 2020",
    kind="authentic, 11,125 smartphone photos, MOS 0..100 (higher is better); resized to shorter side 512",
)
def load_spaq(root: str | Path, *, resize_short_side: int | str | None = SPAQ_SHORT_SIDE) -> IQADataset:
    """Load SPAQ's 11,125 photos with their MOS (columns ``Image name`` and ``MOS``).

    The photos are full-resolution (up to about 4000x3000); ``resize_short_side`` (default 512, the
    field's practice; ``none`` keeps full size) is recorded on the dataset for the transforms.
    An image whose listed extension differs from the file's (same stem) is still found.
    """
    root = Path(root)
    no_resize = resize_short_side is None or str(resize_short_side).strip().lower() in ("", "none")
    short_side = None if no_resize else option_int(resize_short_side, "resize_short_side")
    names_tried = [f"{LABEL_STEM}.xlsx", f"{LABEL_STEM}.csv"]
    table = read_table(find_file([root, root / "Annotations"], names_tried, "SPAQ label file"), ("Image name", "MOS"))
    where = str(table.path)
    names = table.texts(table.column(["Image name"], "image name"))
    check_nonempty(names, where)
    check_unique(names, where, key=str.lower)
    raw = check_scores(names, table.values(table.column(["MOS"], "MOS")), where, SPAQ_SCALE.low, SPAQ_SCALE.high)
    if not (root / "TestImage").is_dir():
        raise DatasetError(f"SPAQ image folder missing: {root / 'TestImage'}")
    finder = ImageFinder([root / "TestImage"], any_extension=True)
    paths = resolve_images(finder, names, f"SPAQ images listed in {table.path.name}")
    return IQADataset(
        name="SPAQ",
        root=root,
        records=make_records(paths, raw, SPAQ_SCALE),
        scale=SPAQ_SCALE,
        synthetic=False,
        resize_short_side=short_side,
    )
