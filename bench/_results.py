"""Write one section of bench/RESULTS.md, keeping the sections other benchmarks wrote."""

from __future__ import annotations

import platform
import re
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = """# offload benchmark results

Every figure here is printed by a script under `bench/` and written into its own section by
that script. Compare figures within one section only: each section comes from one run, and
this machine (2 shared cores) moves by up to 2x between runs. Ratios are to a reference
measured in the same run.
"""


def machine() -> str:
    import os

    return f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.system()}"


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section `name` of RESULTS.md with `body`."""
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    block = (f"<!-- section:{name} -->\n{body.rstrip()}\n\n_Written {stamp} on {machine()}._\n"
             f"<!-- /section:{name} -->")
    pattern = re.compile(rf"<!-- section:{name} -->.*?<!-- /section:{name} -->", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"
