"""Loader for the LIVE In the Wild Image Quality Challenge database (LIVEC / CLIVE), official layout."""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import scipy.io

from qfm_iqm.data.records import DatasetError, ImageRecord, IQADataset, LabelScale, offenders_message
from qfm_iqm.data.registry import register_dataset

DEFAULT_LIVEC_ROOT_ENV = "QFM_IQM_LIVEC_ROOT"
LIVEC_SCALE = LabelScale(low=0.0, high=100.0, higher_is_better=True, name="MOS")
# The release's first entries are the training-phase images t1..t7, excluded by the standard protocol.
LIVEC_N_TRAINING_ENTRIES = 7
_IMAGE_DIRS = ("Images", "Images/trainingImages")


def find_livec_root() -> Path | None:
    """``$QFM_IQM_LIVEC_ROOT`` if set, else the project's shared copy if it exists, else ``None``."""
    env = os.environ.get(DEFAULT_LIVEC_ROOT_ENV)
    if env:
        return Path(env)
    shared = Path(__file__).resolve().parents[3].parent / "shared" / "datasets" / "livec"
    return shared if shared.is_dir() else None


def _load_var(path: Path, var: str) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"LIVEC metadata file missing: {path}")
    try:
        mat = scipy.io.loadmat(str(path))
    except (OSError, ValueError, TypeError, NotImplementedError) as exc:
        raise DatasetError(f"cannot read LIVEC metadata file {path}: {exc}") from exc
    if var not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetError(f"{path} has no variable {var!r} (found: {', '.join(found) or 'none'})")
    return np.asarray(mat[var])


def _cell_name(cell: object) -> str | None:
    """The string inside a MATLAB cell entry (nested 1-element arrays), or ``None`` if it holds none."""
    while isinstance(cell, np.ndarray):
        if cell.size != 1:
            return None
        cell = cell.ravel()[0]
    return cell.strip() if isinstance(cell, str) and cell.strip() else None


class _ImageFinder:
    """Resolves a file name in the image folders: exact name first, then a case-insensitive match."""

    def __init__(self, root: Path) -> None:
        self.dirs = [root / d for d in _IMAGE_DIRS if (root / d).is_dir()]
        if not self.dirs:
            raise DatasetError(f"LIVEC image folder missing: {root / _IMAGE_DIRS[0]}")
        self._lower: dict[Path, dict[str, list[str]]] = {}

    def find(self, name: str) -> Path | None:
        for d in self.dirs:
            if (d / name).is_file():
                return d / name
        for d in self.dirs:
            if d not in self._lower:
                listing: dict[str, list[str]] = {}
                for entry in os.listdir(d):
                    listing.setdefault(entry.lower(), []).append(entry)
                self._lower[d] = listing
            matches = self._lower[d].get(name.lower(), [])
            if len(matches) == 1 and (d / matches[0]).is_file():
                return d / matches[0]
        return None


@register_dataset(
    "livec",
    expects="Data/AllImages_release.mat, Data/AllMOS_release.mat, Data/AllStdDev_release.mat and Images/",
    source="https://live.ece.utexas.edu/research/ChallengeDB/index.html",
    default_root=find_livec_root,
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
    names_raw = _load_var(data / "AllImages_release.mat", "AllImages_release").ravel()
    mos = _load_var(data / "AllMOS_release.mat", "AllMOS_release").astype(np.float64).ravel()
    std = _load_var(data / "AllStdDev_release.mat", "AllStdDev_release").astype(np.float64).ravel()
    if not len(names_raw) == len(mos) == len(std):
        raise DatasetError(
            f"LIVEC metadata lengths differ in {data}: {len(names_raw)} names, {len(mos)} MOS, {len(std)} std values"
        )
    if len(names_raw) <= LIVEC_N_TRAINING_ENTRIES:
        raise DatasetError(f"{data / 'AllImages_release.mat'} lists only {len(names_raw)} entries")

    keep = range(LIVEC_N_TRAINING_ENTRIES, len(names_raw))
    cells = [_cell_name(names_raw[i]) for i in keep]
    unnamed = [f"entry {i + 1}" for i, n in zip(keep, cells) if n is None]
    if unnamed:
        raise DatasetError(offenders_message(f"{data / 'AllImages_release.mat'}: entries without a file name", unnamed))
    names = [n for n in cells if n is not None]
    dups = sorted(n for n, c in Counter(names).items() if c > 1)
    if dups:
        raise DatasetError(offenders_message(f"{data / 'AllImages_release.mat'}: duplicate image names", dups))
    mos, std = mos[LIVEC_N_TRAINING_ENTRIES:], std[LIVEC_N_TRAINING_ENTRIES:]
    bad_mos = [f"{n} ({m})" for n, m in zip(names, mos) if not 0.0 <= m <= 100.0]
    if bad_mos:
        where = data / "AllMOS_release.mat"
        raise DatasetError(offenders_message(f"{where}: MOS missing (NaN) or outside 0..100", bad_mos))
    bad_std = [f"{n} ({s})" for n, s in zip(names, std) if not (math.isfinite(s) and s >= 0)]
    if bad_std:
        where = data / "AllStdDev_release.mat"
        raise DatasetError(offenders_message(f"{where}: std missing (NaN) or negative", bad_std))

    finder = _ImageFinder(root)
    records: list[ImageRecord] = []
    missing: list[str] = []
    for n, m, s in zip(names, mos, std):
        path = finder.find(n)
        if path is None:
            missing.append(n)
            continue
        records.append(ImageRecord(path=path, label=LIVEC_SCALE.normalize(m), raw_label=float(m), raw_std=float(s)))
    if missing:
        raise DatasetError(
            offenders_message(f"LIVEC images listed in {data} but not found under {root / 'Images'}", missing)
        )
    return IQADataset(name="LIVEC", root=root, records=records, scale=LIVEC_SCALE, synthetic=False)
