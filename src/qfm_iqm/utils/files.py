"""File helpers that need no torch: files written atomically, and the file names of a checkpoint.

``qfm_iqm.utils.checkpoint`` re-exports them; the command line imports them from here so that its
argument and output checks come back before torch is imported.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "atomic_write_csv", "atomic_write_json", "atomic_write_text", "checkpoint_paths"]


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temp file beside ``path``, fsync it, then ``os.replace`` it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.chmod(0o666 & ~_current_umask())  # mkstemp makes 0600 files; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    """Persist a rename (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_csv(path: str | Path, rows: Iterable[Sequence[Any]]) -> None:
    """Write ``rows`` (the header first) as CSV to ``path`` atomically."""
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as JSON (indent=2, keys in insertion order) to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


CONFIG_HASH_KEY = "config_sha256"  # the weights' metadata entry that holds the SHA-256 of the JSON's text


def checkpoint_paths(directory_or_file: str | Path, name: str = "model") -> tuple[Path, Path]:
    """The ``(.safetensors, .json)`` pair of a checkpoint given its directory (and name) or either file."""
    path = Path(directory_or_file)
    if path.suffix in (".safetensors", ".json"):
        return path.with_suffix(".safetensors"), path.with_suffix(".json")
    return path / f"{name}.safetensors", path / f"{name}.json"


def written_together(directory_or_file: str | Path) -> bool:
    """Whether a checkpoint's JSON is the one saved with its weights (their metadata holds its SHA-256),
    read without torch: an edited JSON is not."""
    import hashlib

    from safetensors import safe_open

    weights_path, config_path = checkpoint_paths(directory_or_file)
    try:
        with safe_open(str(weights_path), framework="numpy") as handle:
            expected = (handle.metadata() or {}).get(CONFIG_HASH_KEY)
        return expected == hashlib.sha256(config_path.read_bytes()).hexdigest()
    except Exception:  # noqa: BLE001 - unreadable or corrupt: not a pair to trust
        return False
