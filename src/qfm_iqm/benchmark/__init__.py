"""The benchmark harness: methods x datasets x seeded splits, cross-dataset pairs, speed, report."""

from qfm_iqm.benchmark.config import BenchmarkConfig, CrossSpec, DatasetSpec, MethodSpec, SpeedSpec
from qfm_iqm.benchmark.runner import BenchmarkOutcome, run_benchmark

__all__ = ["BenchmarkConfig", "BenchmarkOutcome", "CrossSpec", "DatasetSpec", "MethodSpec", "SpeedSpec", "run_benchmark"]
