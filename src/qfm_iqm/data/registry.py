"""Registry of datasets: a name -> a loader reading the authors' official files under a root folder.

Where a dataset is found when no folder is given: ``$QFM_IQM_<NAME>_ROOT`` (e.g. ``QFM_IQM_LIVEC_ROOT``),
else ``datasets/<name>`` under the current folder (as pyiqa's ``./datasets``).
"""

from __future__ import annotations

import inspect
import os
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qfm_iqm.data.records import IQADataset


@dataclass(frozen=True)
class DatasetInfo:
    """How to load a dataset and what it expects on disk.

    ``kind`` says what the dataset holds (synthetic/authentic distortions, size); ``options`` are the
    keyword-only parameters of the loader, which ``load_dataset`` passes through.
    """

    name: str
    loader: Callable[..., IQADataset]
    expects: str
    source: str
    kind: str = ""

    @property
    def options(self) -> tuple[str, ...]:
        params = inspect.signature(self.loader).parameters.values()
        return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


_DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(
    name: str,
    expects: str,
    source: str,
    kind: str = "",
) -> Callable:
    """Decorator registering ``loader(root, *, **options) -> IQADataset`` under ``name``."""

    def wrap(loader: Callable[..., IQADataset]) -> Callable[..., IQADataset]:
        _DATASETS[name] = DatasetInfo(name, loader, expects, source, kind)
        return loader

    return wrap


def list_datasets() -> list[DatasetInfo]:
    _import_loaders()
    return [_DATASETS[name] for name in sorted(_DATASETS)]


DATASETS_FOLDER = "datasets"


def root_variable(name: str) -> str:
    """The environment variable naming a dataset's folder: ``QFM_IQM_<NAME>_ROOT``."""
    return f"QFM_IQM_{re.sub(r'[^0-9A-Z]', '_', name.upper())}_ROOT"


def default_root(name: str) -> tuple[Path, str] | None:
    """Where dataset ``name`` is looked for without a folder, and how that was chosen: the folder in
    ``$QFM_IQM_<NAME>_ROOT``, else ``datasets/<name>`` under the current folder if it exists."""
    variable = root_variable(name)
    if os.environ.get(variable):
        return Path(os.environ[variable]), f"${variable}"
    local = Path(DATASETS_FOLDER) / name
    return (local, "the default folder") if local.is_dir() else None


def load_dataset(name: str, root: str | Path | None = None, **options: Any) -> IQADataset:
    """Load a registered dataset from its unpacked official download at ``root``.

    Without ``root`` the folder comes from :func:`default_root`. ``options`` go to the loader (see
    ``describe_datasets``); values may be given as text, as on the command line.
    """
    _import_loaders()
    if name not in _DATASETS:
        raise KeyError(f"unknown dataset {name!r}; available: {', '.join(sorted(_DATASETS))}")
    info = _DATASETS[name]
    unknown = sorted(set(options) - set(info.options))
    if unknown:
        accepted = f"its options are {', '.join(info.options)}" if info.options else "it takes no options"
        raise ValueError(f"dataset {name!r} has no option {', '.join(unknown)}; {accepted}")
    chosen = "the given folder"
    if root is None:
        found = default_root(name)
        if found is None:
            raise FileNotFoundError(
                f"dataset {name!r}: no folder given and none found; pass --data-root DIR (root= in Python), "
                f"set {root_variable(name)}=DIR, or unpack its official download to "
                f"{Path.cwd() / DATASETS_FOLDER / name} (it expects {info.expects})"
            )
        root, chosen = found
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset {name!r}: folder {root} ({chosen}) does not exist ({info.expects})")
    return info.loader(root, **options)


def describe_datasets(width: int = 100) -> str:
    """A text table of the registered datasets: name, kind, files expected on disk, where to get them
    and the loader's options."""
    infos = list_datasets()
    name_w = max(len(i.name) for i in infos) + 2
    indent = " " * name_w
    lines = [f"{'name':<{name_w}}kind / expects on disk / source / options"]
    for info in infos:
        fields = [info.kind, f"expects: {info.expects}", f"source: {info.source}"]
        if info.options:
            fields.append(f"options: {', '.join(info.options)}")
        for k, field in enumerate(f for f in fields if f):
            wrapped = textwrap.wrap(field, width - name_w, subsequent_indent="  ") or [""]
            head = f"{info.name:<{name_w}}" if k == 0 else indent
            lines.append(head + wrapped[0])
            lines.extend(indent + w for w in wrapped[1:])
    return "\n".join(lines)


def _import_loaders() -> None:
    """Import the modules whose decorators fill the registry."""
    from qfm_iqm.data import csiq, generic, kadid10k, koniq10k, live, livec, livefb, spaq, tid2013  # noqa: F401
