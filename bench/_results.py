"""bench/ scripts write into bench/RESULTS.md through offload's own section writer."""

from __future__ import annotations

from pathlib import Path

from offload.bench.results import fmt, percentile
from offload.bench.results import write_section as _write

RESULTS = Path(__file__).with_name("RESULTS.md")


def write_section(name: str, body: str) -> None:
    _write(RESULTS, name, body)


__all__ = ["RESULTS", "fmt", "percentile", "write_section"]
