"""Registry of datasets: a name -> a loader reading the authors' official files under a root folder."""

from __future__ import annotations

import inspect
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
    default_root: Callable[[], Path | None] | None = None
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
    default_root: Callable[[], Path | None] | None = None,
    kind: str = "",
) -> Callable:
    """Decorator registering ``loader(root, *, **options) -> IQADataset`` under ``name``."""

    def wrap(loader: Callable[..., IQADataset]) -> Callable[..., IQADataset]:
        _DATASETS[name] = DatasetInfo(name, loader, expects, source, default_root, kind)
        return loader

    return wrap


def list_datasets() -> list[DatasetInfo]:
    _import_loaders()
    return [_DATASETS[name] for name in sorted(_DATASETS)]


def load_dataset(name: str, root: str | Path | None = None, **options: Any) -> IQADataset:
    """Load a registered dataset from its unpacked official download at ``root``.

    Without ``root`` the dataset's default location is used where it has one. ``options`` go to the
    loader (see ``describe_datasets``); values may be given as text, as on the command line.
    """
    _import_loaders()
    if name not in _DATASETS:
        raise KeyError(f"unknown dataset {name!r}; available: {', '.join(sorted(_DATASETS))}")
    info = _DATASETS[name]
    unknown = sorted(set(options) - set(info.options))
    if unknown:
        accepted = f"its options are {', '.join(info.options)}" if info.options else "it takes no options"
        raise ValueError(f"dataset {name!r} has no option {', '.join(unknown)}; {accepted}")
    if root is None:
        root = info.default_root() if info.default_root else None
        if root is None:
            raise FileNotFoundError(f"dataset {name!r}: give the folder of its official download ({info.expects})")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset {name!r}: folder {root} does not exist ({info.expects})")
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
