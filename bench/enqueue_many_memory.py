"""The memory one `enqueue_many` of N jobs takes, this checkout against another commit.

    .venv/bin/python bench/enqueue_many_memory.py --against REV [--backends sqlite,redis]
                                                 [--jobs 100000] [--rounds 2]

Each run is a process of its own (its peak resident size is its own): it makes N small
messages, then enqueues them in one call, and reports the call's seconds, the peak of
Python's allocations during it (tracemalloc) and how much the process's peak resident size
grew. REV is checked out in a temporary git worktree, imported in alternating order as
bench/per_call_against.py does. Prints the table and writes the section
"enqueue-many-memory" of bench/RESULTS.md (`--no-write`: prints only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
import tracemalloc

from _results import write_section
from worker_cost import children_against


async def one_call(url: str, n: int) -> tuple[float, float, float]:
    """In the child: seconds, peak traced MB and resident MB grown of one enqueue_many."""
    from offload import App, Message, Settings

    class Row(Message):
        user_id: str
        period: str
        n: int

    app = App("memory", settings=Settings(url=url))
    app.message("bench.row", queue="memory")(Row)
    async with app:
        messages = [Row(user_id=f"user-{i}", period="2026-10", n=i) for i in range(n)]
        resident = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tracemalloc.start()
        began = time.perf_counter()
        await app.enqueue_many(messages)
        took = time.perf_counter() - began
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - resident
    return took, peak / 1e6, grown / 1e3  # (ru_maxrss is in KiB on Linux)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--against", help="the commit to compare with (required)")
    ap.add_argument("--backends", default="sqlite,redis")
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--child", nargs=2, metavar=("URL", "JOBS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        url, n = args.child
        print(json.dumps(asyncio.run(one_call(url, int(n)))))
        return
    if not args.against:
        ap.error("--against REV is required")
    figures: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    runs = children_against(args.against, args.backends, args.rounds, __file__, str(args.jobs))
    for backend, name, line in runs:
        took, peak, grown = json.loads(line)
        figures.setdefault((backend, name), []).append((took, peak, grown))
    lines = [
        "## The memory of one large `enqueue_many` (`bench/enqueue_many_memory.py`)",
        "",
        f"One `enqueue_many` of {args.jobs:,} small messages, {args.rounds} rounds alternating,"
        f" against {args.against}:",
        "",
        "| backend | code | seconds | traced peak, MB | resident grown, MB |",
        "|---|---|---|---|---|",
    ]
    for (backend, name), runs in sorted(figures.items()):
        cells = [" / ".join(format(run[i], spec) for run in runs) for i, spec in
                 ((0, ".2f"), (1, ".0f"), (2, ".0f"))]  # fmt: skip
        lines.append(f"| {backend} | {name} | {' | '.join(cells)} |")
    print("\n".join(lines))
    if not args.no_write:
        write_section("enqueue-many-memory", "\n".join(lines))


if __name__ == "__main__":
    main()
