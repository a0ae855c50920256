"""Loader for the TID2013 image database (official layout)."""

from __future__ import annotations

import re
from pathlib import Path

from qfm_iqm.data.files import (
    ImageFinder,
    check_scores,
    check_unique,
    make_records,
    read_text,
    resolve_images,
)
from qfm_iqm.data.records import DatasetError, IQADataset, LabelScale, offenders_message
from qfm_iqm.data.registry import register_dataset

TID2013_SCALE = LabelScale(low=0.0, high=9.0, higher_is_better=True, name="MOS")
TID2013_RATED_SIDE = 384  # every image is 512x384, rated as stored
_NAME = re.compile(r"i(?P<ref>\d{2})_(?P<dist>\d{2})_(?P<level>\d)\.bmp", re.IGNORECASE)


def _lines(path: Path) -> list[list[str]]:
    return [line.split() for line in read_text(path).splitlines() if line.strip()]


@register_dataset(
    "tid2013",
    expects="mos_with_names.txt (optional mos_std.txt) and distorted_images/i<ref>_<type>_<level>.bmp",
    source="TID2013 (Tampere Image Database 2013), Ponomarenko et al., ponomarenko.info",
    kind="synthetic, 25 references, 3,000 distorted images, MOS 0..9 (higher is better)",
)
def load_tid2013(root: str | Path) -> IQADataset:
    """Load TID2013's 3,000 distorted images.

    ``mos_with_names.txt`` has one ``<MOS> <file name>`` line per image; ``mos_std.txt`` (optional,
    one value per line in the same order) gives the standard deviations. File names are matched to
    ``distorted_images/`` exactly, else ignoring letter case (the release mixes ``i``/``I`` and
    ``bmp``/``BMP``). The reference id is ``I<nn>`` from the name.
    """
    root = Path(root)
    label_file = root / "mos_with_names.txt"
    if not label_file.is_file():
        raise DatasetError(f"TID2013 label file missing: {label_file}")
    rows = _lines(label_file)
    matches = [_NAME.fullmatch(r[1]) if len(r) == 2 else None for r in rows]
    bad = [" ".join(r) for r, m in zip(rows, matches) if m is None]
    if bad:
        raise DatasetError(offenders_message(f"{label_file}: lines not of the form '<mos> i<nn>_<nn>_<n>.bmp'", bad))
    if not rows:
        raise DatasetError(f"{label_file} lists no images")
    names = [r[1] for r in rows]
    check_unique(names, str(label_file), key=str.lower)
    raw = check_scores(names, [r[0] for r in rows], str(label_file), TID2013_SCALE.low, TID2013_SCALE.high)
    stds = None
    std_file = root / "mos_std.txt"
    if std_file.is_file():
        std_rows = _lines(std_file)
        if len(std_rows) != len(names) or any(len(r) != 1 for r in std_rows):
            raise DatasetError(f"{std_file}: expected {len(names)} lines of one value each, got {len(std_rows)}")
        stds = check_scores(names, [r[0] for r in std_rows], str(std_file), 0.0, None)
    paths = resolve_images(ImageFinder([root / "distorted_images"]), names, f"TID2013 images listed in {label_file}")
    refs = [f"I{m.group('ref')}" for m in matches if m is not None]
    records = make_records(paths, raw, TID2013_SCALE, ref_ids=refs, stds=stds)
    return IQADataset(name="TID2013", root=root, records=records, scale=TID2013_SCALE, synthetic=True,
                      rated_short_side=TID2013_RATED_SIDE)
