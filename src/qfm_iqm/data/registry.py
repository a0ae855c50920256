"""Registry of datasets: a name -> a loader reading the authors' official files under a root folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from qfm_iqm.data.records import IQADataset


@dataclass(frozen=True)
class DatasetInfo:
    """How to load a dataset and what it expects on disk."""

    name: str
    loader: Callable[[Path], IQADataset]
    expects: str
    source: str
    default_root: Callable[[], Path | None] | None = None


_DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(
    name: str, expects: str, source: str, default_root: Callable[[], Path | None] | None = None
) -> Callable:
    """Decorator registering ``loader(root) -> IQADataset`` under ``name``."""

    def wrap(loader: Callable[[Path], IQADataset]) -> Callable[[Path], IQADataset]:
        _DATASETS[name] = DatasetInfo(name, loader, expects, source, default_root)
        return loader

    return wrap


def list_datasets() -> list[DatasetInfo]:
    _import_loaders()
    return [_DATASETS[name] for name in sorted(_DATASETS)]


def load_dataset(name: str, root: str | Path | None = None) -> IQADataset:
    """Load a registered dataset from its unpacked official download at ``root``.

    Without ``root`` the dataset's default location is used where it has one.
    """
    _import_loaders()
    if name not in _DATASETS:
        raise KeyError(f"unknown dataset {name!r}; available: {', '.join(sorted(_DATASETS))}")
    info = _DATASETS[name]
    if root is None:
        root = info.default_root() if info.default_root else None
        if root is None:
            raise FileNotFoundError(f"dataset {name!r}: give the folder of its official download ({info.expects})")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset {name!r}: folder {root} does not exist ({info.expects})")
    return info.loader(root)


def _import_loaders() -> None:
    """Import the modules whose decorators fill the registry."""
    from qfm_iqm.data import livec  # noqa: F401
