"""Generic datasets: any labelled CSV file (pyiqa's meta-info files included) and unlabelled folders."""

from __future__ import annotations

import math
import pickle
import re
from collections import Counter
from pathlib import Path

import numpy as np

from qfm_iqm.data.files import (
    IMAGE_EXTENSIONS,
    SPLIT_PARTS,
    ImageFinder,
    Table,
    cell_text,
    check_nonempty,
    check_scores,
    check_unique,
    make_records,
    option_bool,
    option_float,
    option_int,
    parts_to_split,
    read_csv,
    resolve_images,
    split_part,
)
from qfm_iqm.data.records import DatasetError, ImageRecord, IQADataset, LabelScale, offenders_message
from qfm_iqm.data.registry import register_dataset

UNLABELLED_SCALE = LabelScale(low=0.0, high=1.0, higher_is_better=True, name="unlabelled")
_FR_FIRST_COLUMNS = ("ref_name", "hq_name")  # pyiqa full-reference layout: reference, distorted, label
_AUTO_SPLIT_COLUMNS = ("official_split", "split")


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numbers only: a split file cannot run code."""

    def find_class(self, module: str, name: str) -> object:
        raise pickle.UnpicklingError(f"split files may hold only dicts, lists and integers, found {module}.{name}")


def _column_spec(value: object) -> str | int:
    """A column given by name, or by 0-based position (an int or digits)."""
    text = cell_text(value)
    return int(text) if text.isdigit() else text


def _pick_file(root: Path, file: str | Path | None) -> Path:
    if file is not None:
        return root / Path(file).expanduser()
    found = sorted(p for p in root.iterdir() if p.suffix.lower() == ".csv" and p.is_file())
    if len(found) != 1:
        listed = ", ".join(p.name for p in found) or "none"
        raise DatasetError(f"{root}: give the CSV file with the 'file' option (CSV files here: {listed})")
    return found[0]


def _pickle_split(path: Path, index: int, n_records: int) -> dict[str, tuple[int, ...]]:
    """Split ``index`` of a pyiqa-style pickle ``{1..N: {'train': [...], 'val': [...], 'test': [...]}}``
    whose integers index the dataset's rows (after ``exclude``)."""
    try:
        with path.open("rb") as fh:
            data = _PlainUnpickler(fh).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DatasetError(f"cannot read split file {path}: {exc}") from exc
    if not isinstance(data, dict) or not ({index, str(index)} & set(data)):
        keys = ", ".join(str(k) for k in data) if isinstance(data, dict) else type(data).__name__
        raise DatasetError(f"{path}: no split {index} (found: {keys})")
    entry = data[index] if index in data else data[str(index)]
    if not isinstance(entry, dict):
        raise DatasetError(f"{path}: split {index} must map part names to lists of row indices")
    parts: dict[str, tuple[int, ...]] = {p: () for p in SPLIT_PARTS}
    for key, indices in entry.items():
        part = split_part(key)
        if part is None or not isinstance(indices, (list, tuple)):
            raise DatasetError(f"{path}: split {index} has an unknown part {key!r} or a part that is no list")
        bad = [i for i in indices if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n_records]
        if bad:
            what = f"{path}: split {index}, part {key!r}: entries that are no row index in [0, {n_records})"
            raise DatasetError(offenders_message(what, bad))
        parts[part] += tuple(indices)
    counts = Counter(i for part in parts.values() for i in part)
    repeated = sorted(i for i, c in counts.items() if c > 1)
    if repeated:
        raise DatasetError(offenders_message(f"{path}: split {index} lists rows more than once", repeated))
    return parts


def _column_split(
    table: Table, rows: list[int], names: list[str], split_column: str | int
) -> dict[str, tuple[int, ...]] | None:
    """Split from a column of part names (train/val/test, training/validation, pyiqa's 0/1/2)."""
    mode = cell_text(split_column).lower()
    if mode == "none":
        return None
    if mode == "auto":
        column = table.find_column(_AUTO_SPLIT_COLUMNS)
        if column is None:
            return None
    else:
        column = table.column([_column_spec(split_column)], "split")
    values = table.values(column)
    return parts_to_split(names, [values[r] for r in rows], f"{table.path} column {table.header[column]!r}")


def _columns(
    table: Table, path_column: str | int | None, score_column: str | int | None, ref_column: str | int | None
) -> tuple[int, int, int | None]:
    """The image path, score and reference columns (``None``: no reference) of :func:`load_csv`'s table:
    as given, else the pyiqa layouts."""
    full_reference = table.find_column(_FR_FIRST_COLUMNS) == 0 and len(table.header) >= 3
    default_path, default_score = (1, 2) if full_reference else (0, 1)
    path_col = table.column([_column_spec(path_column if path_column is not None else default_path)], "image path")
    score_col = table.column([_column_spec(score_column if score_column is not None else default_score)], "score")
    ref_col = None
    if ref_column is not None:
        ref_col = table.column([_column_spec(ref_column)], "reference")
    elif full_reference:
        ref_col = 0
    return path_col, score_col, ref_col


def _kept_rows(table: Table, path_col: int, exclude: str | None, where: str) -> tuple[list[int], list[str]]:
    """The rows whose image path ``exclude`` does not match, and those paths (checked: non-empty, unique)."""
    all_names = table.texts(path_col)
    try:
        pattern = re.compile(exclude) if exclude else None
    except re.error as exc:
        raise ValueError(f"option exclude: not a regular expression: {exc}") from exc
    rows = [i for i, n in enumerate(all_names) if pattern is None or not pattern.search(n)]
    if not rows:
        raise DatasetError(f"{where}: no rows left after excluding {exclude!r}")
    names = [all_names[i] for i in rows]
    check_nonempty(names, where)
    check_unique(names, where)
    return rows, names


def _scores_and_scale(
    table: Table, score_col: int, rows: list[int], names: list[str], low: float | str | None,
    high: float | str | None, higher_is_better: bool | str, where: str,
) -> tuple[np.ndarray, LabelScale]:
    """The checked scores of ``rows`` and their scale: ``low``-``high`` when given, else the observed range."""
    if (low is None) != (high is None):
        raise ValueError("options low and high go together")
    lo, hi = (None, None) if low is None else (option_float(low, "low"), option_float(high, "high"))
    scores = table.values(score_col)
    raw = check_scores(names, [scores[i] for i in rows], where, lo, hi)
    if lo is None or hi is None:
        lo, hi = float(raw.min()), float(raw.max())
    return raw, LabelScale(lo, hi, option_bool(higher_is_better, "higher_is_better"), table.header[score_col] or "score")


@register_dataset(
    "csv",
    expects="a CSV file (option file) with an image path column and a score column; images under image_root",
    source="any labelled set, e.g. pyiqa's meta_info_<Name>Dataset.csv files",
    kind="generic: authentic, or synthetic when a reference column is given",
)
def load_csv(
    root: str | Path,
    *,
    file: str | Path | None = None,
    image_root: str | Path | None = None,
    path_column: str | int | None = None,
    score_column: str | int | None = None,
    ref_column: str | int | None = None,
    split_column: str | int = "auto",
    split_file: str | Path | None = None,
    split_index: int | str = 1,
    low: float | str | None = None,
    high: float | str | None = None,
    higher_is_better: bool | str = True,
    exclude: str | None = None,
    dataset_name: str | None = None,
    allow_outside_root: bool | str = False,
) -> IQADataset:
    """Load any CSV of image paths and scores.

    Columns are given by name or 0-based position. By default the pyiqa layouts apply: when the first
    column is ``ref_name``/``hq_name`` (full-reference files) it is the reference, column 1 the image
    and column 2 the score; otherwise column 0 is the image and column 1 the score. A reference column
    makes the dataset synthetic (split by content). Image paths are relative to ``image_root``
    (default: the root; a relative ``image_root`` is taken from the root). ``low``/``high`` give the score scale (default:
    the observed minimum and maximum) and ``higher_is_better`` its direction. ``exclude`` is a regular
    expression: rows whose image path matches it are dropped (e.g. ``_patch_`` for FLIVE patches).
    ``dataset_name`` names the dataset (default: the CSV file's stem). Image paths that are absolute
    or leave ``image_root`` through ``..`` are refused unless ``allow_outside_root`` is true.
    The split comes from ``split_file`` (a pyiqa pickle; ``split_index`` picks the split, its indices
    count the rows kept) or from ``split_column`` (``auto``: ``official_split`` then ``split``;
    ``none``: no split).
    """
    root = Path(root)
    table = read_csv(_pick_file(root, file))
    where = str(table.path)
    path_col, score_col, ref_col = _columns(table, path_column, score_column, ref_column)
    rows, names = _kept_rows(table, path_col, exclude, where)
    raw, scale = _scores_and_scale(table, score_col, rows, names, low, high, higher_is_better, where)
    refs = None
    if ref_col is not None:
        all_refs = table.texts(ref_col)
        refs = [all_refs[i] for i in rows]
        check_nonempty(refs, where, "a reference name")
    if split_file is not None:
        split = _pickle_split(root / Path(split_file).expanduser(), option_int(split_index, "split_index"), len(rows))
    else:
        split = _column_split(table, rows, names, split_column)
    folder = root / Path(image_root).expanduser() if image_root is not None else root
    outside = option_bool(allow_outside_root, "allow_outside_root")
    paths = resolve_images(ImageFinder([folder]), names, f"images listed in {table.path.name}", outside)
    return IQADataset(
        name=dataset_name or table.path.stem,
        root=root,
        records=make_records(paths, raw, scale, ref_ids=refs),
        scale=scale,
        synthetic=refs is not None,
        official_split=split,
    )


@register_dataset(
    "folder",
    expects="a folder of images (searched recursively; .jpg .jpeg .png .bmp .tif .tiff .webp .gif)",
    source="your own unlabelled images, e.g. extra data for the distillation teacher",
    kind="unlabelled (labels are NaN)",
)
def load_folder(root: str | Path) -> IQADataset:
    """Every image under ``root`` (recursively, hidden files and folders skipped), sorted by path,
    with NaN labels."""
    root = Path(root)
    found = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.is_file()
    )
    if not found:
        raise DatasetError(f"no images found under {root} (extensions: {' '.join(sorted(IMAGE_EXTENSIONS))})")
    records = [ImageRecord(path=p, label=math.nan, raw_label=math.nan) for p in found]
    return IQADataset(name=root.name or str(root), root=root, records=records, scale=UNLABELLED_SCALE, synthetic=False)
