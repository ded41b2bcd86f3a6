"""How long other writers wait for SQLite's write lock while a worker reports progress
from handler threads that keep the GIL busy (the demo's PDF rendering, in miniature).

    python bench/sqlite_progress.py [--seconds 10] [--concurrency 4] [--every-ms 5]

An `offload worker` runs jobs whose handler computes in a thread (pure Python, as a PDF
renderer does) and reports progress every `--every-ms` of it. Meanwhile this process, as
another program on the same file would (a web process storing a click), takes the write
lock again and again, with no busy handler: it tries BEGIN IMMEDIATE every 0.1 ms until it
gets the lock, and times how long that took. The figures are that wait's percentiles and
how many progress reports the worker stored meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import fmt, percentile, write_section

from offload import App, Message, Settings

APP = """
import asyncio, time
from offload import App, Context, Message

app = App("progress")


@app.message("bench.progress", queue="progress")
class Render(Message):
    every_ms: float


@app.handles(Render)
async def render(msg: Render, ctx: Context) -> None:
    def compute() -> None:  # a renderer's loop: pure Python, the GIL busy
        for step in range(1, 101):
            end = time.perf_counter() + msg.every_ms / 1000
            x = 0
            while time.perf_counter() < end:
                for i in range(500):
                    x += i * i
            ctx.progress(step / 100, f"page {step}")

    await asyncio.to_thread(compute)
"""


class Render(Message):
    every_ms: float


def probe(path: Path, seconds: float) -> list[float]:
    """Take the write lock and let it go, again and again: each wait for it, in seconds."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    waits: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        began = time.perf_counter()
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                time.sleep(0.0001)
        waits.append(time.perf_counter() - began)
        conn.execute("ROLLBACK")
        time.sleep(0.002)
    conn.close()
    return waits


def reports(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        (n,) = conn.execute(
            "SELECT count(*) FROM offload_events WHERE json_extract(record, '$.state') = 'running'"
            " AND json_extract(record, '$.progress_fraction') IS NOT NULL"
        ).fetchone()
        return int(n)
    finally:
        conn.close()


def run(seconds: float, concurrency: int, every_ms: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "progressapp.py").write_text(APP)
        path = root / "jobs.db"
        url = f"sqlite:///{path}"
        app = App("progress-producer", settings=Settings(url=url))
        app.message("bench.progress", queue="progress")(Render)

        async def produce() -> None:
            async with app:
                await app.enqueue_many([Render(every_ms=every_ms) for _ in range(1000)])

        asyncio.run(produce())
        env = {**os.environ, "OFFLOAD_URL": url}
        env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "offload",
                "worker",
                "--app",
                "progressapp:app",
                "--concurrency",
                str(concurrency),
            ],
            cwd=root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while reports(path) == 0:  # the worker has started rendering
                if time.monotonic() > deadline or worker.poll() is not None:
                    raise SystemExit("the worker did not start")
                time.sleep(0.05)
            first = reports(path)
            waits = probe(path, seconds)
            stored = reports(path) - first
        finally:
            worker.terminate()
            worker.wait(30)
    return {
        "takes": len(waits),
        "p50": percentile(waits, 0.5) * 1000,
        "p99": percentile(waits, 0.99) * 1000,
        "max": max(waits) * 1000,
        "over_1ms": sum(w > 0.001 for w in waits),
        "reports_s": stored / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--every-ms", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for n in range(args.rounds):
        r = run(args.seconds, args.concurrency, args.every_ms)
        print(
            f"round {n + 1}: {r['takes']:.0f} lock takes, wait p50 {r['p50']:.2f} ms, "
            f"p99 {r['p99']:.2f} ms, max {r['max']:.1f} ms, {r['over_1ms']:.0f} over 1 ms; "
            f"{r['reports_s']:.0f} progress reports/s stored"
        )
        rows.append(
            f"| {n + 1} | {fmt(r['takes'])} | {r['p50']:.2f} | {r['p99']:.2f} | "
            f"{r['max']:.1f} | {fmt(r['over_1ms'])} | {fmt(r['reports_s'])} |"
        )
    body = "\n".join(
        [
            "## SQLite: other writers' wait while a worker reports progress",
            "",
            f"`python bench/sqlite_progress.py --seconds {args.seconds:g} --concurrency "
            f"{args.concurrency} --every-ms {args.every_ms:g}`: an `offload worker` runs "
            f"{args.concurrency} jobs at a time, each computing in a thread (pure Python) and "
            f"reporting progress every {args.every_ms:g} ms of it; another connection takes "
            "the write lock again and again (BEGIN IMMEDIATE tried every 0.1 ms) and times "
            "each wait.",
            "",
            "| round | lock takes | wait p50 ms | wait p99 ms | max ms | over 1 ms | "
            "reports/s stored |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    write_section("sqlite-progress", body)


if __name__ == "__main__":
    main()
