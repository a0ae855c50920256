"""Helpers writing miniature benchmark downloads in their official file formats."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import openpyxl
import scipy.io
from PIL import Image

from qfm_iqm.data.records import IQADataset
from qfm_iqm.data.splits import make_split

LIVEC_TEST_IMAGES = 6  # test-phase images of make_livec by default
_FORMATS = {".bmp": "BMP", ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def tiny_image(path: Path, shade: int = 0, size: tuple[int, int] = (8, 8)) -> Path:
    """An 8x8 image in the format its extension names, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (shade % 256, 80, 160)).save(path, format=_FORMATS[path.suffix.lower()])
    return path


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]], **fmt: object) -> Path:
    """A CSV file written by Python's csv module (CRLF line ends unless ``lineterminator`` is given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, **fmt)  # type: ignore[arg-type]
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_xlsx(path: Path, sheets: dict[str, list[list[object]]]) -> Path:
    """A workbook with one sheet per entry (rows as given, header included)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    book = openpyxl.Workbook()
    book.remove(book.active)
    for title, rows in sheets.items():
        sheet = book.create_sheet(title)
        for row in rows:
            sheet.append(row)
    book.save(path)
    return path


def assert_refs_disjoint(dataset: IQADataset, seeds: Sequence[int] = (0, 1, 2)) -> None:
    """make_split keeps every reference content on one side."""
    for seed in seeds:
        split = make_split(dataset, seed)
        train_refs = {dataset.records[i].ref_id for i in split.train}
        test_refs = {dataset.records[i].ref_id for i in split.test}
        assert train_refs and test_refs and not train_refs & test_refs


def assert_parts_disjoint(parts: dict[str, tuple[int, ...]], n: int) -> None:
    """The parts of an official split are disjoint and cover the n records."""
    flat = [i for part in parts.values() for i in part]
    assert sorted(flat) == list(range(n))


def _cell(names: list[str]) -> np.ndarray:
    cell = np.empty((len(names), 1), dtype=object)
    for i, n in enumerate(names):
        cell[i, 0] = np.array([n])
    return cell


def make_livec(
    root: Path,
    names: list[str] | None = None,
    mos: list[float] | None = None,
    std: list[float] | None = None,
    skip_files: tuple[str, ...] = (),
) -> Path:
    """Miniature LIVEC in the official layout: 7 training entries t1..t7 first, then test images."""
    train = [f"t{i}.bmp" for i in range(1, 8)]
    test = [f"{100 + i}.bmp" for i in range(LIVEC_TEST_IMAGES)]
    names = names if names is not None else train + test
    mos = mos if mos is not None else [10.0 * (i % 10) + 5 for i in range(len(names))]
    std = std if std is not None else [15.0 + i for i in range(len(names))]
    (root / "Data").mkdir(parents=True)
    (root / "Images" / "trainingImages").mkdir(parents=True)
    scipy.io.savemat(root / "Data" / "AllImages_release.mat", {"AllImages_release": _cell(names)})
    scipy.io.savemat(root / "Data" / "AllMOS_release.mat", {"AllMOS_release": np.array([mos], dtype=np.float64)})
    scipy.io.savemat(root / "Data" / "AllStdDev_release.mat", {"AllStdDev_release": np.array([std], dtype=np.float64)})
    for k, n in enumerate(dict.fromkeys(names)):
        if n in skip_files:
            continue
        folder = root / "Images" / ("trainingImages" if n.startswith("t") else "")
        Image.new("RGB", (6, 5), (k * 10, 50, 100)).save(folder / n, format="BMP")
    return root
