"""``qfm-iqm benchmark``: run a benchmark config (see ``qfm_iqm.benchmark.config``) into a folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

BENCHMARK_HELP = """Run a benchmark: every method on every dataset over the same seeded 80/20 splits,
cross-dataset pairs and speed cells, as described by a YAML/JSON config (example:
benchmarks/livec_lite0.yaml). Writes results.csv, summary.csv, benchmark.json, table.md and plots/
into --output. Re-running the same command resumes: finished splits and cells are not redone; a
folder holding results of different options for a cell is refused rather than mixed.
Exit status: 0 all cells finished, 1 some cells failed (the rest are still written), 2 bad config."""


def _benchmark(args: argparse.Namespace) -> int:
    from qfm_iqm.benchmark import BenchmarkConfig, run_benchmark

    config = BenchmarkConfig.from_file(args.config)
    output = args.output or Path("runs") / "benchmark" / config.name
    outcome = run_benchmark(config, output, args.set, speed=not args.no_speed, progress=not args.quiet,
                            command=args.command_line)
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
