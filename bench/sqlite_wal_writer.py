"""SQLite: the WAL under one writer that never stops, this checkout against another commit.

    .venv/bin/python bench/sqlite_wal_writer.py --against REV [--calls 10000] [--rounds 3]

One process enqueues `--calls` jobs one at a time (`await app.enqueue`, after a warm-up of
500), as fast as it goes, on a fresh file with the default WAL cap (64 MiB); a thread of its
own samples the WAL's file every millisecond. Each round runs a process that imports offload
from REV's source (a temporary git worktree) and one that imports it from this checkout's,
in alternating order. Reports calls/s, the largest WAL file against its bound (the larger of
twice the database and the cap), and, where the code counts them, the times writes waited
for a rewind and for how long. Writes section "sqlite-wal-writer" of RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _results import write_section
from worker_cost import checkout

HERE = Path(__file__).parent
TOP = HERE.parent


async def child(calls: int) -> dict[str, float]:
    """In the child: calls/s, the largest WAL / bound, and the pauses (if counted)."""
    from offload import App, Message, Settings
    from offload.brokers.sqlite.checkpoint import DEFAULT_WAL_CAP_BYTES, wal_bound

    class Noop(Message):
        i: int

    with tempfile.TemporaryDirectory(prefix="offload-wal-writer-") as tmp:
        db = Path(tmp) / "jobs.db"
        app = App("wal-writer", settings=Settings(url=f"sqlite:///{db}"))
        app.message("bench.wal_writer", queue="wal-writer")(Noop)
        worst = [0.0]
        halt = threading.Event()

        def sample() -> None:
            while not halt.wait(0.001):
                try:
                    wal, size = os.path.getsize(f"{db}-wal"), os.path.getsize(db)
                except FileNotFoundError:
                    continue
                worst[0] = max(worst[0], wal / wal_bound(size, DEFAULT_WAL_CAP_BYTES))

        async with app:
            for i in range(500):
                await app.enqueue(Noop(i=i))
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            began = time.perf_counter()
            for i in range(calls):
                await app.enqueue(Noop(i=i))
            rate = calls / (time.perf_counter() - began)
            halt.set()
            sampler.join()
            reading = getattr(app._require_backend(), "wal_reading", lambda: None)()
        figures = {"rate": rate, "worst": worst[0]}
        if reading is not None:
            figures |= {"pauses": reading.pauses, "paused_s": reading.paused_s}
        return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--against", help="the commit to compare with (required)")
    ap.add_argument("--calls", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(asyncio.run(child(args.child))))
        return
    if not args.against:
        ap.error("--against REV is required")
    runs: dict[str, list[dict[str, float]]] = {}
    with checkout(args.against) as other:
        sources = {args.against: other, "this checkout": TOP / "src"}
        for r in range(args.rounds):
            for name in list(sources) if r % 2 == 0 else list(sources)[::-1]:
                env = {**os.environ, "PYTHONPATH": f"{sources[name]}{os.pathsep}{HERE}"}
                done = subprocess.run(
                    [sys.executable, __file__, "--child", str(args.calls)],
                    env=env, check=True, capture_output=True, text=True,
                )  # fmt: skip
                runs.setdefault(name, []).append(json.loads(done.stdout.splitlines()[-1]))
                print(f"round {r + 1} {name}: {runs[name][-1]}", file=sys.stderr)

    def each(figures: list[dict[str, float]], key: str, spec: str) -> str:
        return " / ".join(format(f[key], spec) if key in f else "n/a" for f in figures)

    body = "\n".join(
        [
            "## SQLite: the WAL under one writer that never stops (`bench/sqlite_wal_writer.py`)",
            "",
            f"One process, {args.calls:,} `await app.enqueue` calls one at a time on a fresh "
            "file (the default 64 MiB cap), the WAL's file sampled every millisecond; "
            f"{args.rounds} rounds, the two trees alternating. n/a: that tree reports no "
            "pauses.",
            "",
            "| code | calls/s (rounds) | largest WAL / bound | write pauses | seconds paused |",
            "|---|---|---|---|---|",
            *(
                f"| {name} | {each(f, 'rate', ',.0f')} | {each(f, 'worst', '.2f')} "
                f"| {each(f, 'pauses', 'd')} | {each(f, 'paused_s', '.2f')} |"
                for name, f in runs.items()
            ),
        ]
    )
    print(body)
    write_section("sqlite-wal-writer", body)


if __name__ == "__main__":
    main()
