"""bench/ scripts write into bench/RESULTS.md through offload's own section writer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from offload.bench.results import fmt, percentile
from offload.bench.results import write_section as _write

RESULTS = Path(__file__).with_name("RESULTS.md")


def write_section(name: str, body: str) -> None:
    _write(RESULTS, name, body)


def rounds_rows(
    runs: Mapping[str, Sequence[tuple[float, ...]]], columns: Sequence[tuple[int, str]]
) -> list[str]:
    """A table row per case: its name, then per column (the index of a figure in each
    round's tuple, and its format spec) that figure in every round, as "a / b / c"."""
    return [
        "| "
        + " | ".join(
            [name, *(" / ".join(format(r[i], spec) for r in figures) for i, spec in columns)]
        )
        + " |"
        for name, figures in runs.items()
    ]


__all__ = ["RESULTS", "fmt", "percentile", "rounds_rows", "write_section"]
