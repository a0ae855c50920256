"""What a benchmark run produced: the runner fills it, the report and the plots read it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BenchmarkOutcome:
    """Per-cell results (``None`` where a cell failed) and the failures, as messages."""

    cells: dict[tuple[str, str], dict | None] = field(default_factory=dict)
    cross: dict[tuple[str, str, str], dict | None] = field(default_factory=dict)
    speed: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
