"""``qfm-iqm benchmark``: run a benchmark config (see ``qfm_iqm.experiments.benchmark.config``) into a folder."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

BENCHMARK_HELP = """Run a benchmark: every method on every dataset over the same seeded 80/20 splits,
cross-dataset pairs and speed cells, as described by a YAML/JSON config (example:
benchmarks/livec_lite0.yaml). Writes results.csv, summary.csv, benchmark.json, table.md and plots/
into --output. Runs under torchrun as train does (docs/distributed.md; the paper's table on GPUs: docs/gpu.md). Re-running the same command resumes: finished splits and cells are not redone; a
folder holding results of different options for a cell is refused rather than mixed.
Exit status: 0 all cells finished, 1 some cells failed (the rest are still written), 2 bad config,
130/143 stopped by Ctrl-C/SIGTERM (the training state is saved: the same command continues)."""


def _benchmark(args: argparse.Namespace) -> int:
    """Under ``torchrun`` every training and test pass is shared by the processes; rank 0 writes."""
    from qfm_iqm.experiments.benchmark import BenchmarkConfig, run_benchmark
    from qfm_iqm.utils.distributed import distributed_session, is_main
    from qfm_iqm.training.interrupt import TrainingInterrupted

    config = BenchmarkConfig.from_file(args.config)
    output = args.output or Path("runs") / "benchmark" / config.name
    devices = [method.train_config(config.train, args.set).device for method in config.methods if method.trained]
    with distributed_session(devices[0] if devices else "cpu"):
        try:
            outcome = run_benchmark(config, output, args.set, speed=not args.no_speed, progress=not args.quiet,
                                    command=args.command_line)
        except TrainingInterrupted as stop:
            if is_main():
                name = signal.Signals(stop.exit_code - 128).name
                print(f"benchmark stopped by {name}, the training state saved; run the same command again to continue",
                      file=sys.stderr)
            return stop.exit_code
        if not is_main():
            return 1 if outcome.failures else 0
        print((output / "table.md").read_text())
        for failure in outcome.failures:
            print(f"failed: {failure}", file=sys.stderr)
    return 1 if outcome.failures else 0


def add_benchmark_command(commands: argparse._SubParsersAction) -> None:
    """Register ``qfm-iqm benchmark`` on the CLI's sub-command parser."""
    parser = commands.add_parser("benchmark", help="run a benchmark config (methods x datasets x splits)",
                                 description=BENCHMARK_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="benchmark YAML or JSON file")
    parser.add_argument("--output", type=Path, help="results folder (default: runs/benchmark/<name>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="training option for every trained method, e.g. device=cuda (repeatable)")
    parser.add_argument("--no-speed", dest="no_speed", action="store_true", help="skip the speed cells")
    parser.set_defaults(func=_benchmark)
