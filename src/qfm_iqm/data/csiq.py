"""Loader for the CSIQ image quality database (official spreadsheet, or the common text label file)."""

from __future__ import annotations

import re
from pathlib import Path

from qfm_iqm.data.files import (
    ImageFinder,
    Table,
    check_nonempty,
    check_scores,
    check_unique,
    folder_ignoring_case,
    make_records,
    read_text,
    read_xlsx,
    resolve_images,
    to_float,
)
from qfm_iqm.data.records import DatasetError, IQADataset, LabelScale, offenders_message
from qfm_iqm.data.registry import register_dataset

CSIQ_SCALE = LabelScale(low=0.0, high=1.0, higher_is_better=False, name="DMOS")
CSIQ_RATED_SIDE = 512  # every image is 512x512, rated as stored
XLSX_NAME = "csiq.DMOS.xlsx"
TXT_NAME = "csiq_label.txt"
# distortion folder under dst_imgs/ -> the type token inside the file names
CSIQ_TYPES = {
    "awgn": "AWGN",
    "jpeg": "JPEG",
    "jpeg2000": "jpeg2000",
    "fnoise": "fnoise",
    "blur": "BLUR",
    "contrast": "contrast",
}
# spreadsheet dst_type spellings (lower case, letters and digits only) -> folder; the official workbook
# uses noise, jpeg, jpeg 2000, fnoise, blur, contrast (the others are spellings seen in derived copies)
_TYPE_NAMES = {
    "noise": "awgn", "awgn": "awgn", "whitenoise": "awgn", "jpeg": "jpeg", "jpeg2000": "jpeg2000", "jp2k": "jpeg2000",
    "fnoise": "fnoise", "1fnoise": "fnoise", "pinknoise": "fnoise", "blur": "blur", "gaussianblur": "blur",
    "contrast": "contrast",
}  # fmt: skip
_FILE_NAME = re.compile(r"(?P<ref>[^.]+)\.(?P<type>[A-Za-z0-9]+)\.(?P<level>\d+)\.png", re.IGNORECASE)


def _from_xlsx(path: Path) -> tuple[list[str], list[str], list[str], list[object]]:
    """(file names, folders, reference names, raw DMOS cells) from sheet ``all_by_image``."""
    table: Table = read_xlsx(path, ("image", "dst_type", "dst_lev", "dmos"), prefer_sheet="all_by_image")
    refs = table.texts(table.column(["image"], "reference image"))
    types = table.texts(table.column(["dst_type"], "distortion type"))
    levels = table.values(table.column(["dst_lev"], "distortion level"))
    folders = [_TYPE_NAMES.get(re.sub(r"[^0-9a-z]", "", t.lower()), "") for t in types]
    bad = [f"{r}: dst_type {t!r}" for r, t, f in zip(refs, types, folders) if not f]
    bad += [f"{r}: dst_lev {lv!r}" for r, lv in zip(refs, levels) if not _is_level(lv)]
    if bad:
        raise DatasetError(offenders_message(f"{path}: unknown distortion types or levels", bad))
    names = [f"{r}.{CSIQ_TYPES[f]}.{int(to_float(lv))}.png" for r, f, lv in zip(refs, folders, levels)]
    return names, folders, refs, table.values(table.column(["dmos"], "DMOS"))


def _is_level(value: object) -> bool:
    try:
        level = to_float(value)
    except ValueError:
        return False
    return level.is_integer() and level >= 1


def _from_txt(path: Path) -> tuple[list[str], list[str], list[str], list[object]]:
    """(file names, folders, reference names, raw DMOS) from lines ``<ref>.<TYPE>.<level>.png <dmos>``."""
    names, folders, refs, scores, bad = [], [], [], [], []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        m = _FILE_NAME.fullmatch(fields[0])
        if len(fields) != 2 or m is None or m.group("type").lower() not in CSIQ_TYPES:
            bad.append(f"line {number}: {line.strip()!r}")
            continue
        names.append(fields[0])
        folders.append(m.group("type").lower())
        refs.append(m.group("ref"))
        scores.append(fields[1])
    if bad:
        raise DatasetError(offenders_message(f"{path}: lines not of the form '<ref>.<TYPE>.<level>.png <dmos>'", bad))
    if not names:
        raise DatasetError(f"{path} lists no images")
    return names, folders, refs, scores


@register_dataset(
    "csiq",
    expects=f"{XLSX_NAME} (or {TXT_NAME}) and dst_imgs/<type>/<ref>.<TYPE>.<level>.png (or a flat dst_imgs/)",
    source="CSIQ image quality database, Larson and Chandler (Computational Perception and Image Quality lab)",
    kind="synthetic, 30 references, 866 distorted images, DMOS 0..1 (lower is better)",
)
def load_csiq(root: str | Path) -> IQADataset:
    """Load CSIQ's 866 distorted images with their DMOS.

    Labels come from the official ``csiq.DMOS.xlsx`` (sheet ``all_by_image``, header row ``image``,
    ``dst_idx``, ``dst_type``, ``dst_lev``, ``dmos_std``, ``dmos`` below title rows) when present, else
    from ``csiq_label.txt`` lines ``<file name> <dmos>``. Images are looked up in ``dst_imgs/<type>/``
    (official; folder case ignored), then a flat ``dst_imgs/`` or ``dst_imgs_all/``. Distorted images on
    disk that the labels do not list are ignored.
    """
    root = Path(root)
    if (root / XLSX_NAME).is_file():
        label_file = root / XLSX_NAME
        names, folders, refs, scores = _from_xlsx(label_file)
    elif (root / TXT_NAME).is_file():
        label_file = root / TXT_NAME
        names, folders, refs, scores = _from_txt(label_file)
    else:
        raise DatasetError(f"CSIQ label file not found: looked for {XLSX_NAME} / {TXT_NAME} in {root}")
    check_nonempty(refs, str(label_file))
    check_unique(names, str(label_file), key=str.lower)
    raw = check_scores(names, scores, str(label_file), CSIQ_SCALE.low, CSIQ_SCALE.high)
    distorted = folder_ignoring_case(root, "dst_imgs")
    flat = [distorted, folder_ignoring_case(root, "dst_imgs_all")]
    finders = {f: ImageFinder([folder_ignoring_case(distorted, f), *flat]) for f in CSIQ_TYPES}
    if not any(finder.folders for finder in finders.values()):
        raise DatasetError(f"CSIQ distorted image folder missing: {distorted} (or a flat dst_imgs_all/)")
    what = f"CSIQ images listed in {label_file.name}"
    paths = resolve_images([finders[f] for f in folders], names, what)
    records = make_records(paths, raw, CSIQ_SCALE, ref_ids=refs)
    return IQADataset(name="CSIQ", root=root, records=records, scale=CSIQ_SCALE, synthetic=True,
                      rated_short_side=CSIQ_RATED_SIDE)
