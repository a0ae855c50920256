"""Scoring many files: input discovery, decoding in threads that keeps the network busy and never
fails a batch, several images' crops per network call, sharding across the processes of a
``torchrun`` run, result writers and readers, and the ``-o`` file of a run that is never left
half-written and can be resumed.

The module imports no torch itself: the command line checks its inputs and output file with it before
it loads a model (which brings torch).
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass, replace
from functools import partial
from itertools import islice
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from qfm_iqm.data.images import IMAGE_EXTENSIONS, ImageLoadError, load_image
from qfm_iqm.inference.score_result import ScoreResult
from qfm_iqm.utils.files import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    import torch

    from qfm_iqm.api import Scorer

__all__ = [
    "BATCH_SIZE",
    "OUTPUT_FORMATS",
    "InputFile",
    "ScoreOutput",
    "auto_workers",
    "find_images",
    "format_table",
    "input_key",
    "journal_path",
    "output_format",
    "read_results",
    "score_files",
    "settings_path",
    "write_results",
]

OUTPUT_FORMATS = (".csv", ".json", ".jsonl")
FIELDS = ("path", "score", "low", "high", "uncertainty", "error")
LEGACY_FIELDS = ("path", "score", "uncertainty", "error")  # files written before low and high; still read
NUMBER_FIELDS = ("score", "low", "high", "uncertainty")
SCORES_FORMAT = "qfm-iqm-scores/1"
SYNC_EVERY = 256  # files per process between two flushes of finished rows
BATCH_SIZE = 2  # images per network call: 18 crops of the 3x3 grid, as many as onnxruntime runs at once (CHUNK_CROPS)


class InputFile(NamedTuple):
    """A file to score, or an input that already failed (``error`` set) and is reported as such."""

    path: str
    error: str | None = None


def input_key(path: str, base: str | None = None) -> str:
    """What identifies an input: its absolute path with symlinks and ``..`` resolved (a relative path is
    taken from ``base``, by default the working directory)."""
    return os.path.realpath(os.path.join(base or os.getcwd(), path))


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def _folder_images(folder: Path, recursive: bool) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted((p for p in found if _is_image_file(p)), key=str)


def find_images(inputs: Sequence[str | os.PathLike], recursive: bool = True) -> tuple[list[InputFile], list[str]]:
    """Expand files, folders and glob patterns into the files to score; return (files, warnings).

    A file path is always kept, whatever its extension; a path that does not exist (and is no pattern)
    raises ``FileNotFoundError`` naming every such input. Folders contribute their files with an image
    extension (case-insensitive), sorted, searched recursively unless ``recursive`` is false. A pattern (``*``, ``?``, ``[``) that is not an existing
    path is expanded (``**`` matches folders at any depth); matched folders are expanded as above and
    matched files are kept if they have an image extension; a pattern that matches nothing becomes a
    failed input. Inputs naming the same file (see :func:`input_key`) are kept once, as first named.
    Warnings name folders without images.
    """
    files: list[InputFile] = []
    warnings: list[str] = []
    missing: list[str] = []
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            images = _folder_images(path, recursive)
            if not images:
                warnings.append(f"no images in folder {text}")
            files.extend(InputFile(str(p)) for p in images)
        elif path.exists():
            files.append(InputFile(str(path)))
        elif not any(ch in text for ch in "*?["):
            missing.append(text)
        else:
            found: list[Path] = []
            for match in map(Path, sorted(glob.glob(text, recursive=True))):
                found.extend(_folder_images(match, recursive) if match.is_dir() else [match])
            found = [p for p in found if _is_image_file(p)]
            if found:
                files.extend(InputFile(str(p)) for p in found)
            else:
                files.append(InputFile(text, "no image file matches this pattern"))
    if missing:
        raise FileNotFoundError(f"no such file or folder: {', '.join(missing)}")
    unique: dict[str, InputFile] = {}
    for file in files:
        unique.setdefault(input_key(file.path), file)
    return list(unique.values()), warnings


def auto_workers() -> int:
    """Default decoding threads: one per 4 cores, 1 to 4. Decoding and cutting the crops of an image is a
    small part of scoring it on a CPU, and the threads take cores from the network."""
    return max(1, min(4, (os.cpu_count() or 1) // 4))


@dataclass
class _Item:
    """One decoded input, or the reason it could not be decoded."""

    index: int
    path: str
    crops: torch.Tensor | None = None
    image: np.ndarray | None = None
    error: str | None = None


def _decode(scorer: Scorer, keep_image: bool, index: int, file: InputFile) -> _Item:
    """Decode a file and cut its crops with ``scorer.crops``; never raises for a bad file."""
    path, error = file
    if error is not None:
        return _Item(index, path, error=error)
    try:
        image = load_image(path)
        crops = scorer.crops(image)
    except ImageLoadError as exc:
        return _Item(index, path, error=exc.problem)
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop the others
        return _Item(index, path, error=f"{type(exc).__name__}: {exc}")
    return _Item(index, path, crops, np.asarray(image) if keep_image else None)


def _decoded(
    scorer: Scorer, entries: Sequence[InputFile], workers: int, ahead: int, keep_image: bool
) -> Iterator[_Item]:
    """``entries`` decoded, in order: by ``workers`` threads that run at most ``ahead`` files ahead of
    the consumer (a bounded queue; Pillow and torch release the GIL while they work), or in this thread
    when ``workers`` is 0."""
    decode = partial(_decode, scorer, keep_image)
    if workers == 0:
        yield from (decode(index, entry) for index, entry in enumerate(entries))
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="qfm-iqm-decode") as pool:
        pending = deque()
        try:
            for index, entry in enumerate(entries):
                pending.append(pool.submit(decode, index, entry))
                if len(pending) > ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # the consumer stopped early: drop what is queued (the running decodes finish)
            for future in pending:
                future.cancel()


class _OneProcess:
    """The helpers of :mod:`qfm_iqm.utils.distributed` that scoring uses, for a world of one process,
    without importing torch (which a cached graph scores without)."""

    @staticmethod
    def barrier() -> None:
        pass

    @staticmethod
    def is_main() -> bool:
        return True

    @staticmethod
    def world_size() -> int:
        return 1

    @staticmethod
    def shard(items: Sequence[int]) -> list[int]:
        return list(items)

    @staticmethod
    def all_gather_json(obj: object) -> list[object]:
        return [obj]


def _processes() -> ModuleType | type[_OneProcess]:
    """:mod:`qfm_iqm.utils.distributed` once torch is imported (a process group needs it), else
    :class:`_OneProcess`."""
    if "torch" in sys.modules:
        from qfm_iqm.utils import distributed

        return distributed
    return _OneProcess


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
    from PIL import Image
    from tqdm.auto import tqdm

    if map_dir is not None:
        from qfm_iqm.inference.quality_map import overlay_quality_map
    calls = getattr(scorer, "calls", 1)  # network calls at once (a graph scorer's; eager models: one)
    items = _decoded(scorer, entries, workers, (calls + 1) * batch_size + workers, keep_image=map_dir is not None)
    network = ThreadPoolExecutor(calls, thread_name_prefix="qfm-iqm-network") if calls > 1 else None

    def score(batch: list[_Item]) -> list[ScoreResult]:
        decoded = [item for item in batch if item.error is None]
        return scorer.score_crop_stacks([item.crops for item in decoded], [item.path for item in decoded]) if decoded else []

    def results(batch: list[_Item], scored: list[ScoreResult]) -> Iterator[ScoreResult]:
        scored = iter(scored)
        for item in batch:
            if item.error is not None:
                result = ScoreResult(None, None, item.path, item.error)
            else:
                result = next(scored)
                if map_dir is not None:
                    image = Image.fromarray(item.image)
                    overlay_quality_map(image, scorer.quality_map(image)).save(map_dir / map_names[item.index])
            bar.update()  # before the yield: the consumer stops pulling after the last result
            yield result

    with tqdm(total=len(entries), desc="scoring", unit="img", disable=not progress) as bar, closing(items):
        if network is None:
            while batch := list(islice(items, batch_size)):
                yield from results(batch, score(batch))
            return
        in_flight: deque = deque()  # (batch, its network call), in input order
        try:
            while batch := list(islice(items, batch_size)):
                in_flight.append((batch, network.submit(score, batch)))
                if len(in_flight) >= calls:
                    batch, call = in_flight.popleft()
                    yield from results(batch, call.result())
            while in_flight:
                batch, call = in_flight.popleft()
                yield from results(batch, call.result())
        finally:  # the consumer stopped early: queued calls are dropped, running ones finish
            for _, call in in_flight:
                call.cancel()
            network.shutdown(wait=True)


def score_files(
    scorer: Scorer,
    files: Sequence[InputFile | str | os.PathLike],
    batch_size: int = BATCH_SIZE,
    workers: int = 1,
    progress: bool = False,
    map_dir: str | Path | None = None,
    sync_every: int = SYNC_EVERY,
    on_results: Callable[[list[ScoreResult]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[ScoreResult]:
    """Score files in input order; a file that cannot be scored gives a result with ``error`` set.

    ``workers`` threads decode the files and cut their crops while the network scores the files
    before them (0: no threads, one file after the other); the crops of ``batch_size`` files go through
    the network together. Each image's score is the one :meth:`~qfm_iqm.api.Scorer.score` gives it
    alone, up to float32 rounding, whatever ``batch_size``, ``workers`` and the order of the files.
    With ``map_dir``, ``<stem>_map.png`` (the quality map over the image) is written for each scored file.

    Under ``torchrun`` each process scores every ``world``-th file and all processes return all
    results. After every ``sync_every`` files per process the new results are gathered and, on rank 0,
    passed in input order to ``on_results`` (e.g. to append them to the output file, so that an
    interrupted run keeps what it scored).

    When ``should_stop()`` turns true (e.g. on SIGTERM), the files scored so far are gathered and passed
    on as above, and the results so far are returned: fewer than the files. Under ``torchrun`` the
    processes stop together at the end of the round in which one of them stopped.
    """
    processes = _processes()
    if batch_size < 1 or workers < 0:
        raise ValueError(f"need batch_size >= 1 and workers >= 0, got {batch_size} and {workers}")
    entries = _input_files(files)
    names = _map_names(entries) if map_dir is not None else None
    if map_dir is not None:
        map_dir = Path(map_dir)
        map_dir.mkdir(parents=True, exist_ok=True)
    mine = processes.shard(range(len(entries)))
    scores = _scores(
        scorer, [entries[i] for i in mine], [names[i] for i in mine] if names is not None else None,
        batch_size, workers, progress and processes.is_main(), map_dir,
    )
    stopping = should_stop or (lambda: False)
    results: list[ScoreResult] = []
    rounds = math.ceil(math.ceil(len(entries) / processes.world_size()) / sync_every)
    with closing(scores):
        for start in range(0, rounds * sync_every, sync_every):
            local = []
            for index in mine[start : start + sync_every]:
                if stopping():
                    break
                local.append([index, asdict(next(scores))])
            parts = processes.all_gather_json([stopping(), local])
            gathered = sorted((row for _, part in parts for row in part), key=lambda row: row[0])
            new = [ScoreResult(**fields) for _, fields in gathered]
            results.extend(new)
            if on_results is not None and processes.is_main() and new:
                on_results(new)
            if any(stopped for stopped, _ in parts):
                break
    return results


def output_format(path: str | Path) -> str:
    """The output format chosen by a file's extension (``ValueError`` for an unsupported one)."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(f"output file {path}: the extension must be one of {', '.join(OUTPUT_FORMATS)}")
    return suffix


def _serialise(results: Sequence[ScoreResult], kind: str) -> str:
    rows = [{field: asdict(r)[field] for field in FIELDS} for r in results]
    if kind == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()
    if kind == ".json":
        return json.dumps(rows, indent=2) + "\n"
    return "".join(json.dumps(row) + "\n" for row in rows)


def write_results(results: Sequence[ScoreResult], path: str | Path) -> None:
    """Write results as CSV (path,score,low,high,uncertainty,error; empty cells for missing values), a
    JSON list of objects or JSON lines (``null`` for missing values), chosen by ``path``'s extension;
    the file is written beside ``path`` and moved into place."""
    atomic_write_text(path, _serialise(results, output_format(path)))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _row(data: object, where: str) -> ScoreResult:
    """A result from a parsed row: the fields of :data:`FIELDS` (or :data:`LEGACY_FIELDS`), and either a
    score and uncertainty (with both bounds or neither) or an error."""
    if isinstance(data, dict) and list(data) in (list(FIELDS), list(LEGACY_FIELDS)):
        values = {field: data.get(field) for field in FIELDS}
        path, error = values["path"], values["error"]
        bounds = [values["low"], values["high"]]
        scored = (error is None and _is_number(values["score"]) and _is_number(values["uncertainty"])
                  and (all(map(_is_number, bounds)) or bounds == [None, None]))
        failed = isinstance(error, str) and error and all(values[field] is None for field in NUMBER_FIELDS)
        if isinstance(path, str) and path and (scored or failed):
            converted = {k: float(v) if k in NUMBER_FIELDS and v is not None else v for k, v in values.items()}
            return ScoreResult(**converted)
    shown = json.dumps(data)
    raise ValueError(f"{where}: not a row of scores: {shown if len(shown) <= 80 else shown[:77] + '...'}")


def _csv_cell(key: str, value: str | None) -> object:
    """A CSV cell as a row value: ``None`` when empty, a number in the score columns when it is one."""
    if not value:
        return None
    try:
        return float(value) if key in NUMBER_FIELDS else value
    except ValueError:
        return value


def _parse_rows(text: str, kind: str, where: str, first_line: int = 1) -> list[ScoreResult]:
    """The rows of a results file's ``text`` in format ``kind``; ``ValueError`` naming ``where`` and the
    line for anything that is not a row of scores."""
    if kind == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if reader.fieldnames not in (list(FIELDS), list(LEGACY_FIELDS)):
            raise ValueError(f"{where}: not a file of scores: its header is not {','.join(FIELDS)}")
        try:
            return [_row({k: _csv_cell(k, v) for k, v in row.items()}, f"{where}, line {reader.line_num}")
                    for row in reader]
        except csv.Error as exc:
            raise ValueError(f"{where}: not a file of scores: {exc}") from exc
    try:
        if kind == ".json":
            rows = json.loads(text)
            if not isinstance(rows, list):
                raise ValueError(f"{where}: not a file of scores: it holds no JSON list")
            return [_row(row, f"{where}, entry {i + 1}") for i, row in enumerate(rows)]
        lines = enumerate(text.splitlines(), start=first_line)
        return [_row(json.loads(line), f"{where}, line {n}") for n, line in lines if line.strip()]
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{where}: not a file of scores: {exc}") from exc


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a file of scores: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def read_results(path: str | Path) -> list[ScoreResult]:
    """Read a file written by :func:`write_results` (``ValueError`` for a file that is not one)."""
    return _parse_rows(_read_text(Path(path)), output_format(path), str(path))


def settings_path(path: str | Path) -> Path:
    """The file beside a scoring output that records what its scores were made with."""
    return Path(f"{path}.settings.json")


def journal_path(path: str | Path) -> Path:
    """The file beside a scoring output that collects its rows while a run is under way."""
    return Path(f"{path}.partial")


class ScoreOutput:
    """The ``-o`` file of a scoring run, which is never left half-written.

    Rows are appended to the journal :func:`journal_path` as they are scored: a first line recording
    the settings (model, grid, ...) and the working directory that relative paths are taken from,
    then one JSON line per row. Once every input has a row, the file is written beside its place and
    moved into it, the settings go to :func:`settings_path` and the journal is removed. An existing
    file or journal is only replaced with ``overwrite``; with ``resume`` their rows are kept (those
    of the journal, which holds the file's rows and newer ones, when it exists), provided they were
    made with the same settings, and the inputs they hold scores of are skipped.

    The file holds one row per input, in input order, after the kept rows of files this run does not
    name. Inputs are matched to kept rows by :func:`input_key`; paths are written as given, except
    that a relative path given in another working directory than the file's is written relative to
    the file's. Under ``torchrun`` every process checks and reads; rank 0 alone writes.
    """

    def __init__(self, path: str | Path, settings: dict, resume: bool = False, overwrite: bool = False) -> None:
        self.path = Path(path)
        output_format(self.path)
        self.journal = journal_path(self.path)
        if self.path.is_dir():
            raise ValueError(f"output {path} is a folder; -o takes a file name ending in {', '.join(OUTPUT_FORMATS)}")
        if resume and overwrite:
            raise ValueError("resume and overwrite exclude each other")
        if not (resume or overwrite) and self.journal.exists():
            raise ValueError(f"{self.journal} holds the rows of an interrupted run: add --resume to continue it, "
                             "or --overwrite to start over")
        if not (resume or overwrite) and self.path.exists():
            raise ValueError(f"{path} exists: add --overwrite to replace it (it is kept until the new results are "
                             "complete), or --resume to score only the inputs it lacks")
        self.settings = json.loads(json.dumps(settings))
        self.base = os.getcwd()
        self.previous: dict[str, ScoreResult] = {}
        if resume and (self.journal.exists() or self.path.exists()):
            self._read_previous()

    def _read_previous(self) -> None:
        """Load the rows to keep from the journal, else from the file, after checking their settings."""
        if self.journal.exists():
            source = self.journal
            text = _read_text(source)
            header, _, rest = text[: text.rfind("\n") + 1].partition("\n")  # a last line cut short is dropped
            record = _json_or_none(header)
            read_rows = partial(_parse_rows, rest, ".jsonl", str(source), first_line=2)
        else:
            source, recorded = self.path, settings_path(self.path)
            record = _json_or_none(_read_text(recorded)) if recorded.exists() else None
            read_rows = partial(read_results, source)
        if not (isinstance(record, dict) and record.get("format") == SCORES_FORMAT
                and isinstance(record.get("base"), str) and "settings" in record):
            where = source if source == self.journal else f"{source} ({settings_path(source).name} is missing or damaged)"
            raise ValueError(f"cannot resume {where}: the settings its scores were made with are unknown; "
                             "write to another file, or use --overwrite to start it over")
        if record["settings"] != self.settings:
            saved, now = record["settings"], self.settings
            changed = ", ".join(f"{key} {json.dumps(saved.get(key))} there, {json.dumps(now.get(key))} now"
                                for key in sorted(set(saved) | set(now)) if saved.get(key) != now.get(key))
            raise ValueError(f"cannot resume {source}: its scores were made with other settings ({changed}); "
                             "write to another file, or use --overwrite to start it over")
        self.base = record["base"]
        self.previous = {input_key(r.path, self.base): r for r in read_rows()}

    def pending(self, files: Sequence[InputFile]) -> list[InputFile]:
        """The files without a scored row among the kept ones."""
        kept = {key for key, row in self.previous.items() if row.error is None}
        return [file for file in files if input_key(file.path) not in kept]

    def _record(self) -> dict:
        return {"format": SCORES_FORMAT, "settings": self.settings, "base": self.base}

    def _stored(self, result: ScoreResult) -> ScoreResult:
        """``result`` with its path as the file holds it (relative to the file's working directory)."""
        if os.path.isabs(result.path) or self.base == os.getcwd():
            return result
        return replace(result, path=os.path.relpath(os.path.abspath(result.path), self.base))

    def start(self) -> None:
        """Begin the journal with the settings and the kept rows (rank 0, once every process has checked)."""
        processes = _processes()
        processes.barrier()
        if processes.is_main():
            rows = _serialise(list(self.previous.values()), ".jsonl")
            atomic_write_text(self.journal, json.dumps(self._record()) + "\n" + rows)

    def append(self, results: Sequence[ScoreResult]) -> None:
        """Add rows to the journal (one write, synced)."""
        with open(self.journal, "a", encoding="utf-8", newline="") as handle:
            handle.write(_serialise([self._stored(r) for r in results], ".jsonl"))
            handle.flush()
            os.fsync(handle.fileno())

    def finish(self, files: Sequence[InputFile], results: Sequence[ScoreResult]) -> None:
        """Write the file from the kept rows and ``results`` (one for each of ``files`` not kept), then
        its settings, and remove the journal (rank 0)."""
        if not _processes().is_main():
            return
        rows = dict(self.previous)
        rows.update((input_key(r.path), self._stored(r)) for r in results)
        named = dict.fromkeys(input_key(file.path) for file in files)
        others = [key for key in rows if key not in named]
        settings_path(self.path).unlink(missing_ok=True)  # never a file beside settings it was not made with
        write_results([rows[key] for key in [*others, *named]], self.path)
        atomic_write_json(settings_path(self.path), self._record())
        self.journal.unlink()


def _json_or_none(text: str) -> object:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None


def format_table(results: Sequence[ScoreResult]) -> str:
    """A plain-text table: path, score, its calibrated range ``low`` and ``high`` (when a result has one),
    uncertainty; ``-`` for missing numbers, and the error of failed inputs."""
    names = ["score", *(["low", "high"] if any(r.low is not None for r in results) else []), "uncertainty"]
    columns = {name: max(8, len(name)) for name in names}  # name: width
    width = max([len("path")] + [len(str(r.path)) for r in results])
    lines = [f"{'path':<{width}}" + "".join(f"  {name:>{size}}" for name, size in columns.items())]
    for r in results:
        numbers = ((getattr(r, name), size) for name, size in columns.items())
        cells = "".join(f"  {'-':>{size}}" if value is None else f"  {value:>{size}.2f}" for value, size in numbers)
        lines.append(f"{r.path:<{width}}{cells}" + (f"  error: {r.error}" if r.error is not None else ""))
    return "\n".join(lines)
