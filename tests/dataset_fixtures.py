"""Helpers writing miniature benchmark downloads in their official file formats."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import openpyxl
from PIL import Image

from qfm_iqm.data.records import IQADataset
from qfm_iqm.data.splits import make_split

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
