"""What a benchmark runs: datasets x methods x split seeds, cross-dataset pairs and speed cells.

A benchmark is described by a YAML or JSON file::

    name: livec-lite0
    seeds: [0, 1, 2, 3, 4]
    train: {lr: 5.0e-5, head_lr_scale: 10, schedule: cosine}   # shared by every trained method
    datasets:
      - name: livec                      # optional: root, options (as --data-root / --dataset-option), id
    methods:
      - {name: qfm, label: "QFM-IQM", train: {mode: qfm},
         published: {livec: {srcc: 0.891, plcc: 0.913}}}   # the paper's medians, shown beside ours
      - {name: deiqt, train: {mode: deiqt}}
      - {name: ridge-lite0, baseline: ridge}
    published_source: "QFM-IQM paper, Table 1"   # where the published numbers come from (recorded)
    cross:                               # train on all of A, test on all of B
      - {train: livec, test: koniq10k}
    speed: {models: [qfm_iqm_lite0], score_batch_sizes: [16], train_batch_sizes: [16], score_runtimes: [torch, onnx]}
    chosen_on: {epochs: "results/validation/livec-round1 (validation parts)"}   # listed in table.md
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qfm_iqm.experiments.baselines import BASELINES
from qfm_iqm.inference.runtime import RUNTIMES
from qfm_iqm.training.config import TrainConfig


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` applied, nested mappings merged key by key."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"benchmark config: {where} must be a mapping, got {type(value).__name__}")
    return value


def _check_keys(entry: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ValueError(f"benchmark config: unknown key(s) {', '.join(unknown)} in {where} (allowed: {', '.join(sorted(allowed))})")


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset, its folder (``None``: the registry's default), loader options and id."""

    name: str
    root: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    id: str = ""  # how results name it; defaults to ``name`` (set it to list one loader twice)

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", self.name)


PUBLISHED_METRICS = ("srcc", "plcc")


@dataclass(frozen=True)
class MethodSpec:
    """A trained method (``train`` holds its training options) or a feature baseline (``baseline``);
    ``published``: dataset id -> the method's published median SRCC and/or PLCC there."""

    name: str
    label: str
    train: dict[str, Any] | None = None
    baseline: str | None = None
    published: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def trained(self) -> bool:
        return self.train is not None

    def train_config(self, shared: dict[str, Any], overrides: list[str] | None = None) -> TrainConfig:
        """The method's complete training options: defaults < benchmark ``train`` < method < ``overrides``."""
        options = _merge(_merge(TrainConfig().to_dict(), shared), self.train or {})
        return TrainConfig.from_dict(options).with_overrides(overrides or [])


@dataclass(frozen=True)
class CrossSpec:
    """Train on all of dataset ``train``, test on all of dataset ``test``."""

    train: str
    test: str


@dataclass(frozen=True)
class SpeedSpec:
    """Throughput cells: scoring (images/s, end to end) in each of ``score_runtimes`` and training
    (crops/s), each with peak memory."""

    models: tuple[str, ...] = ("qfm_iqm_lite0",)
    score_batch_sizes: tuple[int, ...] = (16,)
    score_runtimes: tuple[str, ...] = ("torch",)
    train_batch_sizes: tuple[int, ...] = (16,)
    score_images: int = 64
    image_size: int = 500
    train_steps: int = 8
    device: str = "cpu"


@dataclass(frozen=True)
class BenchmarkConfig:
    """A whole benchmark; ``from_file`` validates it and names the offending entry on error."""

    name: str
    seeds: tuple[int, ...]
    datasets: tuple[DatasetSpec, ...]
    methods: tuple[MethodSpec, ...]
    train: dict[str, Any] = field(default_factory=dict)
    cross: tuple[CrossSpec, ...] = ()
    speed: SpeedSpec | None = None
    chosen_on: dict[str, str] = field(default_factory=dict)  # option -> the validation run that chose it
    published_source: str = ""  # where the methods' ``published`` numbers come from

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchmarkConfig:
        data = _mapping(data, "the file")
        _check_keys(data, {"name", "seeds", "datasets", "methods", "train", "cross", "speed", "chosen_on", "published_source"},
                    "the top level")
        for key in ("name", "datasets", "methods"):
            if key not in data:
                raise ValueError(f"benchmark config: '{key}' is required")
        seeds = data.get("seeds", list(range(10)))
        if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
            raise ValueError(f"benchmark config: 'seeds' must be a non-empty list of integers, got {seeds!r}")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"benchmark config: 'seeds' has duplicates: {seeds}")
        datasets = tuple(_dataset(entry, k) for k, entry in enumerate(data["datasets"] or []))
        methods = tuple(_method(entry, k) for k, entry in enumerate(data["methods"] or []))
        if not datasets or not methods:
            raise ValueError("benchmark config: 'datasets' and 'methods' must list at least one entry each")
        for what, names in (("dataset", [d.id for d in datasets]), ("method", [m.name for m in methods])):
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise ValueError(f"benchmark config: {what} name(s) listed twice: {', '.join(repeated)}")
        train = _mapping(data.get("train"), "'train'")
        unknown = sorted(set(train) - set(TrainConfig().to_dict()))
        if unknown:
            raise ValueError(f"benchmark config: unknown training option(s) under 'train': {', '.join(unknown)}")
        for method in methods:
            if method.trained:
                method.train_config(train)  # each method's options are checked here, early
            unknown = sorted(set(method.published) - {d.id for d in datasets})
            if unknown:
                raise ValueError(f"benchmark config: method {method.name!r} has published numbers for dataset(s) not listed "
                                 f"under 'datasets': {', '.join(unknown)}")
        cross = tuple(_cross(entry, k, {d.id for d in datasets}) for k, entry in enumerate(data.get("cross") or []))
        speed = _speed(data["speed"]) if data.get("speed") is not None else None
        chosen_on = _mapping(data.get("chosen_on"), "'chosen_on'")
        return cls(str(data["name"]), tuple(seeds), datasets, methods, train, cross, speed,
                   {str(k): str(v) for k, v in chosen_on.items()}, str(data.get("published_source") or ""))

    @classmethod
    def from_file(cls, path: str | Path) -> BenchmarkConfig:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as error:
            raise FileNotFoundError(f"{path}: cannot read the benchmark config ({error.strerror})") from None
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as error:
            raise ValueError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {error}") from None
        try:
            return cls.from_dict(data)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None


def _dataset(entry: Any, index: int) -> DatasetSpec:
    if isinstance(entry, str):
        entry = {"name": entry}
    entry = _mapping(entry, f"datasets[{index}]")
    _check_keys(entry, {"name", "root", "options", "id"}, f"datasets[{index}]")
    if "name" not in entry:
        raise ValueError(f"benchmark config: datasets[{index}] needs a 'name'")
    root = entry.get("root")
    options = _mapping(entry.get("options"), f"datasets[{index}].options")
    return DatasetSpec(str(entry["name"]), None if root is None else str(root), options, str(entry.get("id") or ""))


def _method(entry: Any, index: int) -> MethodSpec:
    entry = _mapping(entry, f"methods[{index}]")
    _check_keys(entry, {"name", "label", "train", "baseline", "published"}, f"methods[{index}]")
    name = entry.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(f"benchmark config: methods[{index}] needs a 'name' (a folder name: letters, digits, '.', '-', '_'), got {name!r}")
    if ("train" in entry) == ("baseline" in entry):
        raise ValueError(f"benchmark config: method {name!r} needs exactly one of 'train' (options) or 'baseline'")
    baseline = entry.get("baseline")
    if baseline is not None and baseline not in BASELINES:
        raise ValueError(f"benchmark config: method {name!r}: unknown baseline {baseline!r} (known: {', '.join(sorted(BASELINES))})")
    train = _mapping(entry["train"], f"method {name!r} 'train'") if "train" in entry else None
    return MethodSpec(str(name), str(entry.get("label", name)), train, baseline, _published(entry.get("published"), name))


def _published(entry: Any, method: str) -> dict[str, dict[str, float]]:
    """``{dataset id: {"srcc": x, "plcc": y}}`` (either metric may be absent), each value in [-1, 1]."""
    published = {}
    for dataset, metrics in _mapping(entry, f"method {method!r} 'published'").items():
        where = f"method {method!r} 'published' for {dataset!r}"
        metrics = _mapping(metrics, where)
        _check_keys(metrics, set(PUBLISHED_METRICS), where)
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1 <= value <= 1:
                raise ValueError(f"benchmark config: {where}: {key} must be a number in [-1, 1], got {value!r}")
        published[str(dataset)] = {key: float(value) for key, value in metrics.items()}
    return published


def _cross(entry: Any, index: int, dataset_names: set[str]) -> CrossSpec:
    entry = _mapping(entry, f"cross[{index}]")
    _check_keys(entry, {"train", "test"}, f"cross[{index}]")
    spec = CrossSpec(str(entry.get("train")), str(entry.get("test")))
    missing = sorted({spec.train, spec.test} - dataset_names)
    if missing:
        raise ValueError(f"benchmark config: cross[{index}] names dataset(s) not listed under 'datasets': {', '.join(missing)}")
    return spec


def _speed(entry: Any) -> SpeedSpec:
    entry = _mapping(entry, "'speed'")
    allowed = set(SpeedSpec.__dataclass_fields__)
    _check_keys(entry, allowed, "'speed'")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in entry.items()}
    unknown = sorted(map(str, set(values.get("score_runtimes", ())) - set(RUNTIMES)))
    if unknown:
        raise ValueError(f"benchmark config: unknown score_runtimes {', '.join(unknown)} (known: {', '.join(RUNTIMES)})")
    return SpeedSpec(**values)
