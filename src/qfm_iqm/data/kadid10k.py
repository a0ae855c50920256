"""Loader for the KADID-10k image quality database (official layout)."""

from __future__ import annotations

from pathlib import Path

from qfm_iqm.data.files import (
    ImageFinder,
    check_nonempty,
    check_scores,
    check_unique,
    make_records,
    read_csv,
    resolve_images,
)
from qfm_iqm.data.records import IQADataset, LabelScale
from qfm_iqm.data.registry import register_dataset

KADID_SCALE = LabelScale(low=1.0, high=5.0, higher_is_better=True, name="MOS")
KADID_RATED_SIDE = 384  # every image is 512x384, rated as stored


@register_dataset(
    "kadid10k",
    expects="dmos.csv (dist_img,ref_img,dmos,var) and images/",
    source="KADID-10k (Konstanz artificially distorted image quality database), MMSP group, Univ. of Konstanz",
    kind="synthetic, 81 references, 10,125 distorted images, opinion score 1..5 (higher is better)",
)
def load_kadid10k(root: str | Path) -> IQADataset:
    """Load KADID-10k's 10,125 distorted images from ``dmos.csv`` and ``images/``.

    The column named ``dmos`` holds mean opinion scores on 1..5 where higher is better, despite its
    name. The ``var`` column holds the ratings' standard deviation despite its name (pyiqa reads it
    as ``std``), so it becomes ``raw_std`` unchanged. ``ref_img`` groups images by content.
    """
    root = Path(root)
    table = read_csv(root / "dmos.csv")
    names = table.texts(table.column(["dist_img"], "distorted image"))
    refs = table.texts(table.column(["ref_img"], "reference image"))
    where = str(table.path)
    check_nonempty(names, where)
    check_nonempty(refs, where, "a reference name")
    check_unique(names, where)
    raw = check_scores(names, table.values(table.column(["dmos"], "score")), where, KADID_SCALE.low, KADID_SCALE.high)
    var = table.find_column(["var"])
    stds = None if var is None else check_scores(names, table.values(var), where, 0.0, None)
    paths = resolve_images(ImageFinder([root / "images"]), names, f"KADID-10k images listed in {table.path.name}")
    records = make_records(paths, raw, KADID_SCALE, ref_ids=refs, stds=stds)
    return IQADataset(name="KADID-10k", root=root, records=records, scale=KADID_SCALE, synthetic=True,
                      rated_short_side=KADID_RATED_SIDE)
