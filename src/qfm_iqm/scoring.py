"""Scoring many files: input discovery, parallel decoding that never fails a batch, sharding across
the processes of a ``torchrun`` run, result writers and readers (for resuming)."""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from qfm_iqm.api import ScoreResult, Scorer
from qfm_iqm.data.files import IMAGE_EXTENSIONS
from qfm_iqm.data.images import ImageLoadError, load_image, set_max_image_pixels
from qfm_iqm.data.transforms import Preprocessing, grid_crops
from qfm_iqm.evaluation.quality_map import overlay_quality_map
from qfm_iqm.training.distributed import all_gather_json, is_main, shard, world_size
from qfm_iqm.utils.checkpoint import atomic_write_json, atomic_write_text

__all__ = [
    "OUTPUT_FORMATS",
    "InputFile",
    "append_results",
    "auto_workers",
    "find_images",
    "format_table",
    "output_format",
    "prepare_output",
    "read_results",
    "score_files",
    "settings_path",
    "write_results",
]

OUTPUT_FORMATS = (".csv", ".json", ".jsonl")
FIELDS = ("path", "score", "uncertainty", "error")


class InputFile(NamedTuple):
    """A file to score, or an input that already failed (``error`` set) and is reported as such."""

    path: str
    error: str | None = None


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def _folder_images(folder: Path, recursive: bool) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted((p for p in found if _is_image_file(p)), key=str)


def find_images(inputs: Sequence[str | os.PathLike], recursive: bool = True) -> tuple[list[InputFile], list[str]]:
    """Expand files, folders and glob patterns into the files to score; return (files, warnings).

    A file path is always kept, whatever its extension (a path that does not exist fails when it is
    read). Folders contribute their files with an image extension (case-insensitive), sorted, searched
    recursively unless ``recursive`` is false. A pattern (``*``, ``?``, ``[``) that is not an existing
    path is expanded (``**`` matches folders at any depth); matched folders are expanded as above and
    matched files are kept if they have an image extension; a pattern that matches nothing becomes a
    failed input. Duplicates are dropped, first occurrence kept. Warnings name folders without images.
    """
    files: list[InputFile] = []
    warnings: list[str] = []
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            images = _folder_images(path, recursive)
            if not images:
                warnings.append(f"no images in folder {text}")
            files.extend(InputFile(str(p)) for p in images)
        elif path.exists() or not any(ch in text for ch in "*?["):
            files.append(InputFile(str(path)))
        else:
            found: list[Path] = []
            for match in map(Path, sorted(glob.glob(text, recursive=True))):
                found.extend(_folder_images(match, recursive) if match.is_dir() else [match])
            found = [p for p in found if _is_image_file(p)]
            if found:
                files.extend(InputFile(str(p)) for p in found)
            else:
                files.append(InputFile(text, "no image file matches this pattern"))
    return list(dict.fromkeys(files)), warnings


def auto_workers(num_files: int, batch_size: int) -> int:
    """Default DataLoader workers: none for a single batch (start-up would dominate) or on machines of
    2 cores or fewer (measured: workers there slow the model's own threads down), else up to 4."""
    cores = os.cpu_count() or 1
    return 0 if num_files <= batch_size or cores <= 2 else min(4, cores // 2)


@dataclass
class _Item:
    """One decoded input, or the reason it could not be decoded."""

    index: int
    path: str
    crops: torch.Tensor | None = None
    image: np.ndarray | None = None
    error: str | None = None


class _ImageFiles(Dataset):
    """Decodes files and cuts the fixed crop grid (in DataLoader workers); never raises for a bad file."""

    def __init__(self, files: Sequence[InputFile], pre: Preprocessing, grid: int, keep_image: bool) -> None:
        self.files = list(files)
        self.pre = pre
        self.grid = grid
        self.keep_image = keep_image

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> _Item:
        path, error = self.files[index]
        if error is not None:
            return _Item(index, path, error=error)
        try:
            image = load_image(path)
            crops = grid_crops(image, self.pre, self.grid)
        except ImageLoadError as exc:
            return _Item(index, path, error=exc.problem)
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the others
            return _Item(index, path, error=f"{type(exc).__name__}: {exc}")
        return _Item(index, path, crops, np.asarray(image) if self.keep_image else None)


def _init_worker(max_pixels: int | None, worker_id: int) -> None:
    """Give each worker the parent's decompression-bomb limit (spawned workers start with Pillow's)."""
    set_max_image_pixels(max_pixels)


def _map_names(files: Sequence[InputFile]) -> list[str]:
    """``<stem>_map.png`` per input, made unique with ``_2``, ``_3``, ... in input order."""
    names: list[str] = []
    used: set[str] = set()
    for file in files:
        stem = Path(file.path).stem
        name, k = f"{stem}_map.png", 1
        while name in used:
            k += 1
            name = f"{stem}_{k}_map.png"
        used.add(name)
        names.append(name)
    return names


def _input_files(files: Sequence[InputFile | str | os.PathLike]) -> list[InputFile]:
    return [f if isinstance(f, InputFile) else InputFile(os.fspath(f)) for f in files]


def _scores(
    scorer: Scorer,
    entries: list[InputFile],
    map_names: list[str] | None,
    batch_size: int,
    workers: int,
    progress: bool,
    map_dir: Path | None,
) -> Iterator[ScoreResult]:
    """Score ``entries`` in order, one result at a time (see :func:`score_files`)."""
    dataset = _ImageFiles(entries, scorer.preprocessing, scorer.grid, keep_image=map_dir is not None)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=list,
        worker_init_fn=partial(_init_worker, Image.MAX_IMAGE_PIXELS) if workers else None,
    )
    with tqdm(total=len(entries), desc="scoring", unit="img", disable=not progress) as bar:
        for batch in loader:
            for item in batch:
                if item.error is not None:
                    result = ScoreResult(None, None, item.path, item.error)
                else:
                    result = scorer.score_crops(item.crops, item.path)
                    if map_dir is not None:
                        image = Image.fromarray(item.image)
                        overlay_quality_map(image, scorer.quality_map(image)).save(map_dir / map_names[item.index])
                bar.update()  # before the yield: the consumer stops pulling after the last result
                yield result


def score_files(
    scorer: Scorer,
    files: Sequence[InputFile | str | os.PathLike],
    batch_size: int = 16,
    workers: int = 0,
    progress: bool = False,
    map_dir: str | Path | None = None,
    sync_every: int = 256,
    on_results: Callable[[list[ScoreResult]], None] | None = None,
) -> list[ScoreResult]:
    """Score files in input order; a file that cannot be scored gives a result with ``error`` set.

    Decoding and cropping run in ``workers`` DataLoader processes, ``batch_size`` files at a time;
    each image is then scored on its own, so results do not depend on ``batch_size`` or ``workers``.
    With ``map_dir``, ``<stem>_map.png`` (the quality map over the image) is written for each scored file.

    Under ``torchrun`` each process scores every ``world``-th file and all processes return all
    results. After every ``sync_every`` files per process the new results are gathered and, on rank 0,
    passed in input order to ``on_results`` (e.g. to append them to the output file, so that an
    interrupted run keeps what it scored).
    """
    if batch_size < 1 or workers < 0:
        raise ValueError(f"need batch_size >= 1 and workers >= 0, got {batch_size} and {workers}")
    entries = _input_files(files)
    names = _map_names(entries) if map_dir is not None else None
    if map_dir is not None:
        map_dir = Path(map_dir)
        map_dir.mkdir(parents=True, exist_ok=True)
    mine = shard(range(len(entries)))
    scores = _scores(
        scorer, [entries[i] for i in mine], [names[i] for i in mine] if names is not None else None,
        batch_size, workers, progress and is_main(), map_dir,
    )
    results: list[ScoreResult] = []
    rounds = math.ceil(math.ceil(len(entries) / world_size()) / sync_every)
    with closing(scores):
        for start in range(0, rounds * sync_every, sync_every):
            local = [[index, asdict(next(scores))] for index in mine[start : start + sync_every]]
            gathered = sorted((row for part in all_gather_json(local) for row in part), key=lambda row: row[0])
            new = [ScoreResult(**fields) for _, fields in gathered]
            results.extend(new)
            if on_results is not None and is_main():
                on_results(new)
    return results


def output_format(path: str | Path) -> str:
    """The output format chosen by a file's extension (``ValueError`` for an unsupported one)."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(f"output file {path}: the extension must be one of {', '.join(OUTPUT_FORMATS)}")
    return suffix


def _serialise(results: Sequence[ScoreResult], kind: str, header: bool = True) -> str:
    rows = [{field: asdict(r)[field] for field in FIELDS} for r in results]
    if kind == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
        if header:
            writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()
    if kind == ".json":
        return json.dumps(rows, indent=2) + "\n"
    return "".join(json.dumps(row) + "\n" for row in rows)


def write_results(results: Sequence[ScoreResult], path: str | Path) -> None:
    """Write results as CSV (path,score,uncertainty,error; empty cells for missing values), a JSON
    list of objects or JSON lines (``null`` for missing values), chosen by ``path``'s extension."""
    atomic_write_text(path, _serialise(results, output_format(path)))


def append_results(results: Sequence[ScoreResult], path: str | Path) -> None:
    """Append results to a CSV or JSON-lines file written by :func:`write_results` (one write, synced)."""
    kind = output_format(path)
    if kind == ".json":
        raise ValueError(f"{path}: a .json output holds one list and cannot be appended to; use .csv or .jsonl")
    with open(path, "a", encoding="utf-8", newline="") as handle:
        handle.write(_serialise(results, kind, header=False))
        handle.flush()
        os.fsync(handle.fileno())


def read_results(path: str | Path) -> list[ScoreResult]:
    """Read a file written by :func:`write_results` / :func:`append_results`; a last line cut short by
    an interruption (no final newline) is ignored."""
    kind = output_format(path)
    text = Path(path).read_text(encoding="utf-8")
    if kind == ".json":
        rows = json.loads(text) if text.strip() else []
    else:
        lines = io.StringIO(text[: text.rfind("\n") + 1])
        if kind == ".csv":
            rows = [{key: value or None for key, value in row.items()} for row in csv.DictReader(lines)]
            for row in rows:
                row.update({key: float(row[key]) for key in ("score", "uncertainty") if row[key] is not None})
        else:
            rows = [json.loads(line) for line in lines if line.strip()]
    return [ScoreResult(**{field: row.get(field) for field in FIELDS}) for row in rows]


def settings_path(path: str | Path) -> Path:
    """The file beside a scoring output that records what its scores were made with."""
    return Path(f"{path}.settings.json")


def prepare_output(path: str | Path, resume: bool, settings: dict) -> set[str]:
    """Start the output file of a scoring run that appends its results; return the paths already scored.

    ``settings`` (model, grid, ...) are recorded in :func:`settings_path`. With ``resume`` and an
    existing file, its rows of scored inputs are kept (failed inputs are tried again), provided it
    was made with the same settings: scores of another model or grid are never mixed into one file
    (``ValueError``). Otherwise the file starts empty. Rank 0 replaces the files atomically.
    """
    kept: list[ScoreResult] = []
    if resume and Path(path).exists():
        recorded = settings_path(path)
        saved = json.loads(recorded.read_text(encoding="utf-8")) if recorded.exists() else None
        if saved != json.loads(json.dumps(settings)):
            made_with = f"scores made with {json.dumps(saved)}" if saved else f"scores whose settings are unknown (no {recorded.name})"
            raise ValueError(f"cannot resume {path}: it holds {made_with}, and this run uses {json.dumps(settings)}; "
                             "write to another file, or leave out --resume to start it over")
        kept = [r for r in read_results(path) if r.error is None]
    if is_main():
        write_results(kept, path)
        atomic_write_json(settings_path(path), settings)
    return {r.path for r in kept}


def format_table(results: Sequence[ScoreResult]) -> str:
    """A plain-text table: path, score, uncertainty (``-`` for failed inputs, with the error)."""
    width = max([len("path")] + [len(str(r.path)) for r in results])
    lines = [f"{'path':<{width}}  {'score':>8}  {'uncertainty':>11}"]
    for r in results:
        if r.error is None:
            lines.append(f"{r.path:<{width}}  {r.score:>8.2f}  {r.uncertainty:>11.2f}")
        else:
            lines.append(f"{r.path:<{width}}  {'-':>8}  {'-':>11}  error: {r.error}")
    return "\n".join(lines)
