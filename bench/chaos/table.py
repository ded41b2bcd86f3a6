"""The reports as a Markdown table, printed and written into docs/guarantees.md."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from .checks import Report

BEGIN = "<!-- chaos:begin (written by `make chaos`; edit the prose around it, not this) -->"
END = "<!-- chaos:end -->"
#: Short names of the fault kinds, in the table's order.
FAULT_NAMES = {
    "worker_kill": "kill",
    "worker_term": "term",
    "worker_stop": "stop",
    "worker_skew": "skew",
    "web_kill": "web",
    "conn_kill": "conn",
    "engine_restart": "restart",
    "engine_crash": "crash",
}
COLUMNS = [
    "engine",
    "setting",
    "jobs accepted",
    "faults",
    "lost",
    "lost by the setting",
    "stuck",
    "wrong end",
    "stale settles",
    "unexplained dups",
    "explained dups",
    "results refused",
    "keys (split)",
    "5xx or refused in web restarts",
    "5xx or errors in engine restarts",
    "5xx outside",
    "other errors outside",
    "SIGTERM exits ≠ 0",
    "streams ok",
]


def _faults(r: Report) -> str:
    return ", ".join(f"{FAULT_NAMES[k]} {r.faults[k]}" for k in FAULT_NAMES if r.faults.get(k))


def row(r: Report) -> list[str]:
    fives = sum(1 for e in r.errors_outside if e.startswith("5xx"))
    return [
        r.engine,
        r.setting or "–",
        str(r.jobs),
        _faults(r),
        str(len(r.lost)),
        str(len(r.lost_by_setting)),
        str(len(r.stuck)),
        str(len(r.wrong)),
        str(len(r.stale)),
        str(len(r.duplicates_unexplained)),
        str(r.duplicates_explained),
        str(r.refused_results),
        f"{r.keys} ({len(r.keys_split)})",
        str(r.errors_in_web_restarts),
        str(r.errors_in_engine_restarts),
        f"{fives} ({r.errors_after_conn_kill} after a conn kill)" if fives else "0",
        str(len(r.errors_outside) - fives),
        f"{len(r.sigterm_bad)} of {r.sigterms}",
        f"{r.streams_ok} of {r.streams}",
    ]


def render(reports: Sequence[Report]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(r)) + " |" for r in reports]
    return "\n".join(lines)


def section(reports: Sequence[Report], command: str) -> str:
    """The table with when, how and with what seed it was measured, and what failed."""
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    seeds = ", ".join(sorted({str(r.seed) for r in reports}))
    out = [f"Last run: {when}, seed {seeds}: `{command}`", "", render(reports), ""]
    out += ["Explained duplicate executions, by the fault that explains them:", ""]
    for r in reports:
        causes = ", ".join(
            f"{FAULT_NAMES[k]} {r.explained_by[k]}" for k in FAULT_NAMES if r.explained_by.get(k)
        )
        out.append(f"- {' '.join(filter(None, [r.engine, r.setting]))}: {causes or 'none'}")
    out.append("")
    failed = [(r, p) for r in reports for p in r.problems()]
    if failed:
        out.append("Failures of that run:")
        out.append("")
        out += [f"- {r.engine} {r.setting}: {p}".replace("  ", " ") for r, p in failed]
    else:
        out.append("No failure in that run.")
    return "\n".join(out)


def write_docs(path: Path, reports: Sequence[Report], command: str) -> None:
    """Replace what is between the markers of `path` (or append them) with the section."""
    text = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n{section(reports, command)}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
