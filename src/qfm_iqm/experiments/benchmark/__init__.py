"""The benchmark harness: methods x datasets x seeded splits, cross-dataset pairs, speed, report."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["BenchmarkConfig", "BenchmarkOutcome", "CrossSpec", "DatasetSpec", "MethodSpec", "SpeedSpec", "run_benchmark"]

if TYPE_CHECKING:
    from qfm_iqm.experiments.benchmark.config import BenchmarkConfig, CrossSpec, DatasetSpec, MethodSpec, SpeedSpec
    from qfm_iqm.experiments.benchmark.outcome import BenchmarkOutcome
    from qfm_iqm.experiments.benchmark.runner import run_benchmark

_LAZY = {"BenchmarkOutcome": "outcome", "run_benchmark": "runner"}


def __getattr__(name: str) -> Any:
    """Import on first use, so that a speed cell (``python -m qfm_iqm.experiments.benchmark.speed``) holds only the
    code its measurement needs."""
    if name in __all__:
        from importlib import import_module

        return getattr(import_module(f"qfm_iqm.experiments.benchmark.{_LAZY.get(name, 'config')}"), name)
    raise AttributeError(f"module 'qfm_iqm.experiments.benchmark' has no attribute {name!r}")
