"""Loader for the LIVE Image Quality Assessment Database, release 2 (official layout)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import scipy.io

from qfm_iqm.data.files import (
    ImageFinder,
    check_scores,
    load_mat_var,
    make_records,
    mat_cell_text,
    option_choice,
    resolve_images,
)
from qfm_iqm.data.records import DatasetError, IQADataset, LabelScale, offenders_message
from qfm_iqm.data.registry import register_dataset

LIVE_SCALE = LabelScale(low=0.0, high=100.0, higher_is_better=False, name="DMOS")
# Distortion folders in the order of the entries of dmos.mat / refnames_all.mat, with their image counts.
LIVE_FOLDERS = (("jp2k", 227), ("jpeg", 233), ("wn", 174), ("gblur", 174), ("fastfading", 174))
LIVE_N_ENTRIES = sum(n for _, n in LIVE_FOLDERS)  # 982: 779 distorted + 203 flagged copies of references
_IMAGE_NAME = re.compile(r"img(\d+)\.bmp", re.IGNORECASE)


def _entry_names() -> list[str]:
    """``<folder>/img<k>.bmp`` for every entry, in the order of the release's .mat files."""
    return [f"{folder}/img{k}.bmp" for folder, n in LIVE_FOLDERS for k in range(1, n + 1)]


def _check_no_extra_images(root: Path) -> None:
    """Raise if a distortion folder holds ``img<k>.bmp`` beyond the release's count (another release)."""
    extra = []
    for folder, n in LIVE_FOLDERS:
        if (root / folder).is_dir():
            for p in sorted((root / folder).iterdir()):
                m = _IMAGE_NAME.fullmatch(p.name)
                if m and int(m.group(1)) > n:
                    extra.append(f"{folder}/{p.name}")
    if extra:
        what = f"{root}: images beyond release 2's counts ({', '.join(f'{f} {n}' for f, n in LIVE_FOLDERS)})"
        raise DatasetError(offenders_message(what, extra))


def _vector(path: Path, var: str) -> np.ndarray:
    values = load_mat_var(path, var).ravel()
    if len(values) != LIVE_N_ENTRIES:
        raise DatasetError(f"{path}: {var!r} has {len(values)} entries, release 2 has {LIVE_N_ENTRIES}")
    return values


@register_dataset(
    "live",
    expects="dmos.mat or dmos_realigned.mat, refnames_all.mat, jp2k/ jpeg/ wn/ gblur/ fastfading/ (img<k>.bmp)",
    source="LIVE Image Quality Assessment Database Release 2, LIVE lab, UT Austin (live.ece.utexas.edu)",
    kind="synthetic, 29 references, 779 distorted images, DMOS (lower is better)",
)
def load_live(root: str | Path, *, dmos: str = "auto") -> IQADataset:
    """Load LIVE release 2: the 779 distorted images (entries flagged by ``orgs`` are dropped).

    ``dmos``: ``realigned`` reads ``dmos_realigned.mat`` (``dmos_new``, ``orgs``, optional ``dmos_std``; the
    scores HyperIQA/DEIQT use), ``original`` reads ``dmos.mat`` (``dmos``, ``orgs``, as pyiqa does),
    ``auto`` (default) the realigned file when present, else the original. Reference names come from
    ``refnames_all.mat`` and group images by content.
    """
    root = Path(root)
    variant = option_choice(dmos, ("auto", "realigned", "original"), "dmos")
    realigned = root / "dmos_realigned.mat"
    if variant == "auto":
        variant = "realigned" if realigned.is_file() else "original"
    if variant == "realigned":
        label_file = realigned
        scores, orgs = _vector(label_file, "dmos_new"), _vector(label_file, "orgs")
        has_std = any(name == "dmos_std" for name, *_ in scipy.io.whosmat(str(label_file)))
        std = _vector(label_file, "dmos_std").astype(np.float64) if has_std else None
    else:
        label_file = root / "dmos.mat"
        scores, orgs, std = _vector(label_file, "dmos"), _vector(label_file, "orgs"), None
    refs = [mat_cell_text(c) for c in _vector(root / "refnames_all.mat", "refnames_all")]
    names = _entry_names()
    unnamed = [n for n, r in zip(names, refs) if r is None]
    if unnamed:
        raise DatasetError(offenders_message(f"{root / 'refnames_all.mat'}: entries without a name", unnamed))
    keep = [i for i, flag in enumerate(orgs.astype(np.float64)) if flag != 1]
    names = [names[i] for i in keep]
    raw = check_scores(names, [scores[i] for i in keep], str(label_file))
    _check_no_extra_images(root)
    paths = resolve_images(ImageFinder([root]), names, f"LIVE images listed in {label_file.name}")
    records = make_records(
        paths, raw, LIVE_SCALE, ref_ids=[str(refs[i]) for i in keep], stds=None if std is None else std[keep]
    )
    return IQADataset(name="LIVE", root=root, records=records, scale=LIVE_SCALE, synthetic=True)
