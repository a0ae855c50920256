"""Loader for the LIVE In the Wild Image Quality Challenge database (LIVEC / CLIVE), official layout."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from qfm_iqm.data.files import (
    ImageFinder,
    check_scores,
    check_unique,
    load_mat_var,
    make_records,
    mat_cell_text,
    resolve_images,
)
from qfm_iqm.data.records import DatasetError, IQADataset, LabelScale, offenders_message
from qfm_iqm.data.registry import register_dataset

LIVEC_SCALE = LabelScale(low=0.0, high=100.0, higher_is_better=True, name="MOS")
LIVEC_RATED_SIDE = 500  # the photos were rated as stored: 500x500 (phone photos downscaled by the authors)
# The release's first entries are the training-phase images t1..t7, excluded by the standard protocol.
LIVEC_N_TRAINING_ENTRIES = 7
_IMAGE_DIRS = ("Images", "Images/trainingImages")


@register_dataset(
    "livec",
    expects="Data/AllImages_release.mat, Data/AllMOS_release.mat, Data/AllStdDev_release.mat and Images/",
    source="https://live.ece.utexas.edu/research/ChallengeDB/index.html",
    kind="authentic, 1,162 images, MOS 0..100 (higher is better)",
)
def load_livec(root: str | Path) -> IQADataset:
    """Load LIVEC from its official layout, dropping the 7 training-phase entries.

    Reads ``Data/AllImages_release.mat`` (``AllImages_release``, (N, 1) cell of names),
    ``Data/AllMOS_release.mat`` (``AllMOS_release``, (1, N)) and ``Data/AllStdDev_release.mat``
    (``AllStdDev_release``, (1, N)); images are looked up in ``Images/`` then
    ``Images/trainingImages/``. Works on the full release (1,169 entries) and on partial copies.
    Raises ``DatasetError`` for missing files, inconsistent lengths, unusable names or scores.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"LIVEC root folder not found: {root}")
    data = root / "Data"
    names_raw = load_mat_var(data / "AllImages_release.mat", "AllImages_release").ravel()
    mos = load_mat_var(data / "AllMOS_release.mat", "AllMOS_release").astype(np.float64).ravel()
    std = load_mat_var(data / "AllStdDev_release.mat", "AllStdDev_release").astype(np.float64).ravel()
    if not len(names_raw) == len(mos) == len(std):
        raise DatasetError(
            f"LIVEC metadata lengths differ in {data}: {len(names_raw)} names, {len(mos)} MOS, {len(std)} std values"
        )
    if len(names_raw) <= LIVEC_N_TRAINING_ENTRIES:
        raise DatasetError(f"{data / 'AllImages_release.mat'} lists only {len(names_raw)} entries")

    keep = range(LIVEC_N_TRAINING_ENTRIES, len(names_raw))
    cells = [mat_cell_text(names_raw[i]) for i in keep]
    unnamed = [f"entry {i + 1}" for i, n in zip(keep, cells) if n is None]
    if unnamed:
        raise DatasetError(offenders_message(f"{data / 'AllImages_release.mat'}: entries without a file name", unnamed))
    names = [n for n in cells if n is not None]
    check_unique(names, str(data / "AllImages_release.mat"))
    mos, std = mos[LIVEC_N_TRAINING_ENTRIES:], std[LIVEC_N_TRAINING_ENTRIES:]
    check_scores(names, list(mos), str(data / "AllMOS_release.mat"), LIVEC_SCALE.low, LIVEC_SCALE.high)
    bad_std = [f"{n} ({s})" for n, s in zip(names, std) if not (math.isfinite(s) and s >= 0)]
    if bad_std:
        where = data / "AllStdDev_release.mat"
        raise DatasetError(offenders_message(f"{where}: std missing (NaN) or negative", bad_std))

    finder = ImageFinder(root / d for d in _IMAGE_DIRS)
    if not finder.folders:
        raise DatasetError(f"LIVEC image folder missing: {root / _IMAGE_DIRS[0]}")
    paths = resolve_images(finder, names, f"LIVEC images listed in {data}")
    records = make_records(paths, mos, LIVEC_SCALE, stds=std)
    return IQADataset(name="LIVEC", root=root, records=records, scale=LIVEC_SCALE, synthetic=False,
                      rated_short_side=LIVEC_RATED_SIDE)
