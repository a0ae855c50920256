"""The quality report: one HTML page of a folder's scores (``qfm-iqm report``, docs/report.md).

The page is a single file: its styles, script and data (one JSON object) are inside it, and it fetches
nothing from the network. Photos are shown as downscaled JPEG thumbnails (and, when asked, quality-map
overlays) in the folder ``<page stem>_files/`` beside it, linked relatively: the page works offline and
from any folder as long as that folder moves with it.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.resources import files as package_files
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from qfm_iqm.api import ScoreResult, Scorer
from qfm_iqm.data.images import ImageLoadError, load_image
from qfm_iqm.data.records import LabelScale
from qfm_iqm.inference.quality_map import overlay_quality_map
from qfm_iqm.scoring import (
    OUTPUT_FORMATS, SCORES_FORMAT, InputFile, input_key, journal_path, read_results, settings_path,
)
from qfm_iqm.utils.checkpoint import atomic_write_text

__all__ = ["THUMBNAIL_SIDE", "ScoreFile", "files_folder", "read_scores", "select_rows", "write_report"]

THUMBNAIL_SIDE = 320  # px, the longer side of a thumbnail (cards are about 260 CSS px wide)
THUMBNAIL_QUALITY = 80  # JPEG quality of thumbnails and map overlays
HISTOGRAM_BINS = 20


@dataclass(frozen=True)
class ScoreFile:
    """The rows of a ``qfm-iqm score -o`` file, with what its ``.settings.json`` records.

    ``base`` is the folder relative paths of the rows are taken from (the scoring run's working folder;
    the current one when the file records none); ``settings`` the model, grid and interval its scores were
    made with, or ``None`` when they are not recorded.
    """

    path: Path
    rows: list[ScoreResult]
    base: str
    settings: dict | None


def files_folder(page: str | Path) -> Path:
    """The folder beside a report page that holds its thumbnails (``report.html`` -> ``report_files``)."""
    page = Path(page)
    return page.with_name(f"{page.stem}_files")


def _recorded_settings(path: Path) -> dict | None:
    """The record of a score file's ``.settings.json`` (format, settings, base), or ``None``."""
    try:
        record = json.loads(settings_path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    valid = (isinstance(record, dict) and record.get("format") == SCORES_FORMAT and isinstance(record.get("base"), str)
             and isinstance(record.get("settings"), dict))
    return record if valid else None


def read_scores(path: str | Path) -> ScoreFile:
    """Read a score file (.csv, .json or .jsonl of ``qfm-iqm score -o``) and its recorded settings;
    ``ValueError`` naming the file for one that is missing, empty or not a file of scores."""
    path = Path(path)
    if path.suffix.lower() not in OUTPUT_FORMATS:
        raise ValueError(f"{path}: a file of scores ends in {', '.join(OUTPUT_FORMATS)} (qfm-iqm score -o FILE)")
    if not path.is_file():
        journal = journal_path(path)
        hint = (f"; the rows of an interrupted run are in {journal}: finish it with qfm-iqm score ... -o {path} --resume"
                if journal.exists() else "")
        raise ValueError(f"{path}: no such file{hint}")
    rows = read_results(path)
    if not rows:
        raise ValueError(f"{path}: it holds no rows of scores")
    record = _recorded_settings(path)
    return ScoreFile(path, rows, record["base"] if record else os.getcwd(), record["settings"] if record else None)


def select_rows(scores: ScoreFile, files: Sequence[InputFile]) -> list[ScoreResult]:
    """The rows of ``scores`` for ``files`` (as :func:`qfm_iqm.scoring.find_images` gives them), in their
    order; an input that failed before scoring (a pattern matching nothing) becomes a failed row.
    ``ValueError`` when some inputs have no row."""
    rows = {input_key(row.path, scores.base): row for row in scores.rows}
    selected, missing = [], []
    for file in files:
        row = rows.get(input_key(file.path))
        if row is None and file.error is not None:
            row = ScoreResult(None, None, file.path, file.error)
        if row is None:
            missing.append(file.path)
        else:
            selected.append(row)
    if missing:
        raise ValueError(f"{len(missing)} of the {len(files)} inputs have no row in {scores.path} (e.g. {missing[0]}): "
                         f"score them first with qfm-iqm score ... -o {scores.path} --resume")
    return selected


def _url(path: str) -> str:
    """A relative URL of a relative file path."""
    return quote(Path(path).as_posix())


def _thumbnail(image: Image.Image) -> Image.Image:
    thumb = image.copy()
    thumb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BICUBIC)
    return thumb


def _map_overlay(thumb: Image.Image, heat: np.ndarray) -> Image.Image:
    """The quality map of the whole image, resized to the thumbnail and drawn over it."""
    small = np.asarray(Image.fromarray(heat.astype(np.float32)).resize(thumb.size, Image.Resampling.BILINEAR))
    return overlay_quality_map(thumb, np.clip(small, 0.0, 1.0))


def _photo_entry(
    row: ScoreResult, source: str, name: str, page_dir: Path, folder: Path, index: int, scorer: Scorer | None,
) -> dict:
    """A photo's entry in the page's data; writes its thumbnail (and map overlay) into ``folder``."""
    entry: dict = {
        "name": name,
        "href": None if row.error is not None else _url(os.path.relpath(source, page_dir)),
        "score": row.score,
        "text": None if row.score is None else f"{row.score:.1f}",
        "low": row.low,
        "high": row.high,
        "range": None if row.low is None else f"{row.low:.1f}\u2013{row.high:.1f}",
        "uncertainty": row.uncertainty,
        "spread": None if row.uncertainty is None else f"{row.uncertainty:.2f}",
        "error": row.error,
    }
    if row.error is not None:
        return entry
    try:
        image = load_image(source)
    except ImageLoadError as exc:  # e.g. moved or changed since it was scored
        return {**entry, "preview": f"no preview: {exc.problem}"}
    thumb = _thumbnail(image)
    stem = f"{index:05d}.jpg"
    thumb.save(folder / "thumbs" / stem, quality=THUMBNAIL_QUALITY)
    entry.update(thumb=_url(f"{folder.name}/thumbs/{stem}"), width=thumb.width, height=thumb.height)
    if scorer is not None:
        _map_overlay(thumb, scorer.quality_map(image)).save(folder / "maps" / stem, quality=THUMBNAIL_QUALITY)
        entry["map"] = _url(f"{folder.name}/maps/{stem}")
    return entry


def _display_names(sources: Sequence[str]) -> tuple[list[str], str]:
    """Each photo's path relative to the folder common to all of them, and that folder (relative to the
    working folder when it lies inside it)."""
    common = os.path.commonpath([os.path.dirname(source) for source in sources])
    relative = os.path.relpath(common)
    return [os.path.relpath(source, common) for source in sources], common if relative.split(os.sep)[0] == ".." else relative


def _script_json(data: dict) -> str:
    """JSON to place inside a ``<script>`` element (``<`` escaped, so no ``</script>`` can end it)."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def write_report(
    page: str | Path,
    rows: Sequence[ScoreResult],
    base: str,
    scale: LabelScale,
    *,
    model: str,
    coverage: float | None = None,
    flag_below: float | None = None,
    scorer: Scorer | None = None,
    command: str = "",
    progress: bool = False,
) -> None:
    """Write the report page of ``rows`` (relative paths taken from ``base``) and its thumbnails.

    ``scale``: the scores' scale (the bars span it); ``model``: the model named on the page; ``coverage``:
    the share of photos the calibrated range holds (e.g. 0.9); ``flag_below``: the initial threshold
    below which photos are flagged; ``scorer``: when given, a quality map of every photo is drawn over
    its thumbnail. The folder :func:`files_folder` gets fresh ``thumbs/`` (and ``maps/``); the page is
    written last, in one piece.
    """
    page = Path(page)
    folder = files_folder(page)
    for sub in ("thumbs", "maps"):
        shutil.rmtree(folder / sub, ignore_errors=True)
    (folder / "thumbs").mkdir(parents=True)
    if scorer is not None:
        (folder / "maps").mkdir()
    page_dir = page.resolve().parent
    sources = [os.path.abspath(os.path.join(base, row.path)) for row in rows]
    names, folder_shown = _display_names(sources)
    photos = [
        _photo_entry(row, source, name, page_dir, folder, index, scorer)
        for index, (row, source, name) in enumerate(
            tqdm(list(zip(rows, sources, names)), desc="report", unit="img", disable=not progress)
        )
    ]
    title = f"Quality report: {folder_shown}"
    data = {
        "title": title,
        "folder": folder_shown,
        "model": model,
        "scale": {"low": scale.low, "high": scale.high, "name": scale.name, "higherIsBetter": scale.higher_is_better},
        "coverage": coverage,
        "flagBelow": flag_below,
        "bins": HISTOGRAM_BINS,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "photos": photos,
    }
    assets = package_files(__package__)
    parts = {"STYLE": (assets / "page.css").read_text(encoding="utf-8"),
             "SCRIPT": (assets / "page.js").read_text(encoding="utf-8"),
             "TITLE": html.escape(title), "DATA": _script_json(data)}
    template = (assets / "page.html").read_text(encoding="utf-8")
    atomic_write_text(page, re.sub(r"/\*(STYLE|SCRIPT|TITLE|DATA)\*/", lambda match: parts[match[1]], template))
