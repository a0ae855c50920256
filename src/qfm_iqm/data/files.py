"""Shared helpers for dataset loaders: reading label files, finding images, validating what they list.

Every check raises ``DatasetError`` naming the file, what is wrong, the count and the first offenders,
so a malformed download never loads as a silent partial dataset.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io

from qfm_iqm.data.images import IMAGE_EXTENSIONS  # re-exported (generic datasets)
from qfm_iqm.data.records import DatasetError, ImageRecord, LabelScale, offenders_message

SPLIT_PARTS = ("train", "val", "test")
_SPLIT_ALIASES = {
    "train": "train", "training": "train", "0": "train",
    "val": "val", "valid": "val", "validation": "val", "1": "val",
    "test": "test", "testing": "test", "2": "test",
}  # fmt: skip
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


def find_file(folders: Iterable[Path], names: Sequence[str], what: str) -> Path:
    """The first of ``names`` that exists in the first folder holding one; ``DatasetError`` if none does."""
    folders = list(folders)
    for folder in folders:
        for name in names:
            if (folder / name).is_file():
                return folder / name
    where = " or ".join(str(f) for f in folders)
    raise DatasetError(f"{what} not found: looked for {' / '.join(names)} in {where}")


def folder_ignoring_case(parent: Path, name: str) -> Path:
    """``parent/name``, or the single sub-folder of ``parent`` whose name equals ``name`` ignoring letter
    case (copies unpacked on Windows or macOS may differ in case); ``parent/name`` when there is none."""
    exact = parent / name
    if exact.is_dir() or not parent.is_dir():
        return exact
    matches = [p for p in parent.iterdir() if p.name.lower() == name.lower() and p.is_dir()]
    return matches[0] if len(matches) == 1 else exact


def load_mat_var(path: Path, var: str) -> np.ndarray:
    """Variable ``var`` of the MATLAB file ``path``."""
    if not path.is_file():
        raise DatasetError(f"metadata file missing: {path}")
    try:
        mat = scipy.io.loadmat(str(path))
    except (OSError, ValueError, TypeError, NotImplementedError) as exc:
        raise DatasetError(f"cannot read metadata file {path}: {exc}") from exc
    if var not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetError(f"{path} has no variable {var!r} (found: {', '.join(found) or 'none'})")
    return np.asarray(mat[var])


def mat_cell_text(cell: object) -> str | None:
    """The string inside a MATLAB cell entry (nested 1-element arrays), or ``None`` if it holds none."""
    while isinstance(cell, np.ndarray):
        if cell.size != 1:
            return None
        cell = cell.ravel()[0]
    return cell.strip() if isinstance(cell, str) and cell.strip() else None


def cell_text(value: object) -> str:
    """A CSV/spreadsheet cell as stripped text; integral numbers without a decimal part, ``None`` as ''."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def read_text(path: Path) -> str:
    """Text of ``path``: UTF-16 or UTF-32 when a byte-order mark says so, else UTF-8 (a BOM is dropped),
    else Windows-1252 as older releases are encoded; ``DatasetError`` naming the encoding otherwise."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    encoding = next((name for bom, name in _BOMS if data.startswith(bom)), None)
    if encoding is None and b"\x00" in data:
        raise DatasetError(f"{path} holds NUL bytes: UTF-16 or UTF-32 text without a byte-order mark, or no "
                           "text at all; save it as UTF-8")
    candidates = [(encoding, encoding.upper())] if encoding else [("utf-8-sig", "UTF-8"), ("cp1252", "Windows-1252")]
    problems = []
    for codec, label in candidates:
        try:
            return data.decode(codec)
        except UnicodeDecodeError as exc:
            problems.append(f"{label} (byte {exc.start} is invalid)")
    raise DatasetError(f"cannot decode {path}: it is not {' nor '.join(problems)} text; save it as UTF-8")


def _column_key(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


@dataclass
class Table:
    """Rows of a label file under its header; cells are text (CSV) or spreadsheet values (xlsx)."""

    path: Path
    header: list[str]
    rows: list[list[object]]

    def find_column(self, candidates: Sequence[str | int]) -> int | None:
        """Index of the first candidate present: a name (case, spaces and punctuation ignored; the
        first of duplicated names) or a 0-based position; ``None`` if none is present."""
        keys = [_column_key(h) for h in self.header]
        for c in candidates:
            if isinstance(c, int):
                if 0 <= c < len(self.header):
                    return c
            elif _column_key(c) in keys:
                return keys.index(_column_key(c))
        return None

    def column(self, candidates: Sequence[str | int], role: str) -> int:
        """Like ``find_column`` but raises ``DatasetError`` naming the columns that exist."""
        index = self.find_column(candidates)
        if index is None:
            wanted = " or ".join(repr(c) for c in candidates)
            raise DatasetError(f"{self.path}: no {role} column {wanted} (columns: {', '.join(self.header)})")
        return index

    def values(self, index: int) -> list[object]:
        return [row[index] for row in self.rows]

    def texts(self, index: int) -> list[str]:
        return [cell_text(row[index]) for row in self.rows]


def _checked_rows(path: Path, header: list[str], rows: Iterable[Sequence[object]]) -> Table:
    """Drop blank rows, pad short rows with empty cells and build the ``Table``."""
    kept = [list(r) + [None] * (len(header) - len(r)) for r in rows if any(cell_text(c) for c in r)]
    if not kept:
        raise DatasetError(f"{path} has a header but no rows")
    return Table(path=path, header=header, rows=kept)


def read_csv(path: Path) -> Table:
    """A comma-, tab- or semicolon-separated file with a header row (quoting, CRLF and BOM handled); a
    first row holding a number or an image file name is refused as a missing header."""
    if not path.is_file():
        raise DatasetError(f"label file missing: {path}")
    text = read_text(path)
    first = text.split("\n", 1)[0]
    delimiter = next((d for d in (",", "\t", ";") if d in first), ",")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
        rows = list(reader)
    except StopIteration:
        raise DatasetError(f"{path} is empty") from None
    except csv.Error as exc:
        raise DatasetError(f"{path}: not a readable CSV file: {exc}") from exc
    data = [cell for cell in header if _is_number(cell) or os.path.splitext(cell)[1].lower() in IMAGE_EXTENSIONS]
    if data:
        raise DatasetError(f"{path}: the first row holds data ({', '.join(data[:3])}), not column names; "
                           "label files need a header row (e.g. image,mos)")
    return _checked_rows(path, header, rows)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_xlsx(path: Path, required: Sequence[str], prefer_sheet: str | None = None) -> Table:
    """The first sheet (``prefer_sheet`` first) of an Excel workbook with a header row, within its
    first 10 rows, holding every ``required`` column name."""
    try:
        import openpyxl
    except ImportError as exc:  # pragma: no cover - openpyxl is a dependency
        raise DatasetError(f"reading {path} needs the openpyxl package (pip install openpyxl)") from exc
    if not path.is_file():
        raise DatasetError(f"label file missing: {path}")
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many unrelated types for damaged files
        raise DatasetError(f"cannot read Excel file {path}: {exc}") from exc
    try:
        sheets = sorted(book.worksheets, key=lambda s: s.title.lower() != (prefer_sheet or "").lower())
        wanted = {_column_key(r) for r in required}
        for sheet in sheets:
            rows = [list(r) for r in sheet.iter_rows(values_only=True)]
            for k, row in enumerate(rows[:10]):
                header = [cell_text(c) for c in row]
                if wanted <= {_column_key(h) for h in header}:
                    return _checked_rows(path, header, rows[k + 1 :])
    finally:
        book.close()
    raise DatasetError(f"{path}: no sheet has a header row with columns {', '.join(required)}")


def read_table(path: Path, required: Sequence[str] = ()) -> Table:
    """``read_xlsx`` for .xlsx files, else ``read_csv``."""
    return read_xlsx(path, required) if path.suffix.lower() == ".xlsx" else read_csv(path)


def to_float(value: object) -> float:
    """A numeric cell as float: empty cells are NaN; text that is no number raises ``ValueError``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = cell_text(value)
    return float(text) if text else math.nan


def check_scores(
    names: Sequence[str], values: Sequence[object], where: str, low: float | None = None, high: float | None = None
) -> np.ndarray:
    """Parse ``values`` (one per name) as floats; all must be finite and, when bounds are given, in range."""
    out = np.empty(len(values), dtype=np.float64)
    bad: list[str] = []
    for i, (name, value) in enumerate(zip(names, values)):
        try:
            out[i] = to_float(value)
        except ValueError:
            out[i] = math.nan
        inside = (low is None or out[i] >= low) and (high is None or out[i] <= high)
        if not (math.isfinite(out[i]) and inside):
            bad.append(f"{name} ({cell_text(value) or 'empty'})")
    if bad:
        if low is not None and high is not None:
            bounds = f" or outside {low:g}..{high:g}"
        else:
            bounds = f" or below {low:g}" if low is not None else f" or above {high:g}" if high is not None else ""
        raise DatasetError(offenders_message(f"{where}: values missing (NaN), not numeric{bounds}", bad))
    return out


def check_unique(names: Sequence[str], where: str, key: Callable[[str], str] = str) -> None:
    """Raise if a name is listed twice (compared through ``key``)."""
    counts = Counter(key(n) for n in names)
    dups = sorted({n for n in names if counts[key(n)] > 1})
    if dups:
        raise DatasetError(offenders_message(f"{where}: duplicate image names", dups))


def check_nonempty(values: Sequence[str], where: str, role: str = "an image name") -> None:
    """Raise if a row has an empty cell where ``role`` is expected (rows counted from 1)."""
    empty = [f"row {i + 1}" for i, v in enumerate(values) if not v]
    if empty:
        raise DatasetError(offenders_message(f"{where}: rows without {role}", empty))


class ImageFinder:
    """Resolves names (which may include sub-folders) against folders, in order.

    A name matches its exact relative path first; failing that, files in the same sub-folder whose
    name differs only in letter case, and (``any_extension``) files with the same stem and any image
    extension. ``lookup`` returns every candidate of the first folder that has any.
    """

    def __init__(self, folders: Iterable[Path], any_extension: bool = False) -> None:
        self.folders = [f for f in folders if f.is_dir()]
        self.any_extension = any_extension
        self._by_name: dict[Path, dict[str, list[str]]] = {}
        self._by_stem: dict[Path, dict[str, list[str]]] = {}

    def _index(self, folder: Path) -> None:
        by_name: dict[str, list[str]] = {}
        by_stem: dict[str, list[str]] = {}
        if folder.is_dir():
            for entry in os.listdir(folder):
                by_name.setdefault(entry.lower(), []).append(entry)
                stem, ext = os.path.splitext(entry)
                if ext.lower() in IMAGE_EXTENSIONS:
                    by_stem.setdefault(stem.lower(), []).append(entry)
        self._by_name[folder], self._by_stem[folder] = by_name, by_stem

    def lookup(self, name: str) -> list[Path]:
        """Candidate files for ``name`` (one when unambiguous, none when missing)."""
        if os.path.isabs(name):
            return [Path(name)] if os.path.isfile(name) else []
        for folder in self.folders:
            if (folder / name).is_file():
                return [folder / name]
        rel = Path(name)
        for folder in self.folders:
            parent = folder / rel.parent
            if parent not in self._by_name:
                self._index(parent)
            found = self._by_name[parent].get(rel.name.lower(), [])
            if not found and self.any_extension:
                found = self._by_stem[parent].get(rel.stem.lower(), [])
            files = [parent / f for f in found if (parent / f).is_file()]
            if files:
                return files
        return []


def leaves_folder(name: str) -> bool:
    """Whether an image name listed in a label file points outside its folder (absolute, or ``..``
    climbing out of it)."""
    return os.path.isabs(name) or os.path.normpath(name).split(os.sep)[0] == os.pardir


def resolve_images(
    finder: ImageFinder | Sequence[ImageFinder], names: Sequence[str], what: str, allow_outside: bool = False
) -> list[Path]:
    """Paths of ``names`` (through one finder, or one finder per name); raises listing the names that
    leave their folder (unless ``allow_outside``), the missing names, or the ambiguous ones (several
    files differing only in letter case or extension)."""
    outside = [] if allow_outside else [name for name in names if leaves_folder(name)]
    if outside:
        raise DatasetError(offenders_message(f"{what} outside their folder (absolute, or leaving it through "
                                             f"'{os.pardir}')", outside))
    finders = [finder] * len(names) if isinstance(finder, ImageFinder) else list(finder)
    paths: list[Path] = []
    missing: list[str] = []
    ambiguous: list[str] = []
    for name, f in zip(names, finders):
        found = f.lookup(name)
        if len(found) == 1:
            paths.append(found[0])
        elif found:
            ambiguous.append(f"{name} ({' / '.join(p.name for p in found)})")
        else:
            missing.append(name)
    if missing:
        folders = ", ".join(dict.fromkeys(str(d) for f in finders for d in f.folders)) or "no existing folder"
        raise DatasetError(offenders_message(f"{what} not found under {folders}", missing))
    if ambiguous:
        raise DatasetError(offenders_message(f"{what} matching several files", ambiguous))
    return paths


def make_records(
    paths: Sequence[Path],
    raw: Sequence[float],
    scale: LabelScale,
    ref_ids: Sequence[str] | None = None,
    stds: Sequence[float] | None = None,
) -> list[ImageRecord]:
    """Records with labels normalised through ``scale``."""
    return [
        ImageRecord(
            path=p,
            label=scale.normalize(r),
            raw_label=float(r),
            ref_id=ref_ids[i] if ref_ids is not None else None,
            raw_std=float(stds[i]) if stds is not None else None,
        )
        for i, (p, r) in enumerate(zip(paths, raw))
    ]


def split_part(value: object) -> str | None:
    """``train``/``val``/``test`` for a split cell (names such as ``training``, ``validation`` or
    pyiqa's integer codes 0/1/2), else ``None``."""
    text = cell_text(value).lower()
    if re.fullmatch(r"[012]\.0+", text):
        text = text[0]
    return _SPLIT_ALIASES.get(text)


def flag_value(value: object) -> bool | None:
    """A boolean cell (``True``/``False``, 1/0, yes/no), else ``None``."""
    text = cell_text(value).lower()
    return True if text in _TRUE else False if text in _FALSE else None


def parts_to_split(
    names: Sequence[str], values: Sequence[object], where: str, parse: Callable[[object], str | None] = split_part
) -> dict[str, tuple[int, ...]]:
    """Index tuples per part from one split cell per record, read by ``parse`` (``split_part`` by
    default); raises listing the records whose cell names no part."""
    parts = [parse(v) for v in values]
    unknown = [f"{n} ({cell_text(v) or 'empty'})" for n, v, p in zip(names, values, parts) if p not in SPLIT_PARTS]
    if unknown:
        raise DatasetError(offenders_message(f"{where}: images without a recognised split value", unknown))
    return {part: tuple(i for i, p in enumerate(parts) if p == part) for part in SPLIT_PARTS}


def option_bool(value: object, name: str) -> bool:
    """A loader option given as a bool or as text (``true``/``false``, ``yes``/``no``, ``1``/``0``)."""
    if isinstance(value, bool):
        return value
    parsed = flag_value(value)
    if parsed is None:
        raise ValueError(f"option {name}: expected true or false, got {value!r}")
    return parsed


def option_int(value: object, name: str) -> int:
    """A positive integer option (text accepted)."""
    try:
        number = int(cell_text(value))
    except ValueError:
        number = 0
    if number <= 0:
        raise ValueError(f"option {name}: expected a positive integer, got {value!r}")
    return number


def option_float(value: object, name: str) -> float:
    """A number option (text accepted)."""
    try:
        number = float(cell_text(value))
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"option {name}: expected a number, got {value!r}")
    return number


def option_choice(value: object, choices: Sequence[str], name: str) -> str:
    """One of ``choices`` (case-insensitive)."""
    text = cell_text(value).lower()
    for choice in choices:
        if text == choice.lower():
            return choice
    raise ValueError(f"option {name}: expected one of {', '.join(choices)}, got {value!r}")
