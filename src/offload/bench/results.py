"""Write one section of a RESULTS.md, keeping the sections other benchmarks wrote."""

from __future__ import annotations

import os
import platform
import re
from datetime import UTC, datetime
from pathlib import Path

HEADER = """# offload benchmark results

Every figure here is printed by a benchmark (`bench/` scripts, `offload bench`) and written
into its own section by it. Compare figures within one section only: each section comes from
one run, and this kind of machine (2 shared cores) moves by up to 2x between runs. Ratios are
to a reference measured in the same run.
"""


def machine() -> str:
    return f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.system()}"


def write_section(path: Path, name: str, body: str) -> None:
    """Replace (or append) the section `name` of the Markdown file `path` with `body`."""
    text = path.read_text() if path.exists() else HEADER
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    block = (
        f"<!-- section:{name} -->\n{body.rstrip()}\n\n_Written {stamp} on {machine()}._\n"
        f"<!-- /section:{name} -->"
    )
    pattern = re.compile(
        rf"<!-- section:{re.escape(name)} -->.*?<!-- /section:{re.escape(name)} -->", re.S
    )
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def fmt(value: float | None, digits: int = 0) -> str:
    """A figure with thousands separators; `n/a` for None."""
    return "n/a" if value is None else f"{value:,.{digits}f}"


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank; NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
