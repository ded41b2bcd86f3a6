"""How big SQLite's WAL grows against its database under a sustained load with readers.

    python bench/sqlite_wal.py [--seconds 30] [--workers 3] [--readers 2] [--rate 5000]
                               [--cap-mib 16] [--trace] [--save FILE]
    python bench/sqlite_wal.py --table LABEL=FILE [LABEL=FILE ...]

Worker processes (`offload worker`) drain no-op jobs that a producer thread enqueues in
batches (at `--rate` jobs/s at most), while reader threads, each with its own connection,
read what the dashboard reads (queue stats, the newest jobs, a capped count) again and
again. The WAL and database files are sampled every 50 ms. `--save` keeps the figures as
JSON; `--table` writes saved runs (of several trees) into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _results import fmt, write_section

from offload import App, Message, Settings
from offload._bulk import DEFAULT_COUNT_CAP
from offload.contract import JobFilter

HERE = Path(__file__).parent
MIB = 1 << 20
APP = """
from offload import App, Context, Message

app = App("wal")


@app.message("bench.wal", queue="wal")
class Tick(Message):
    i: int
    pad: str = ""


@app.handles(Tick)
async def tick(msg: Tick, ctx: Context) -> dict[str, int]:
    return {"i": msg.i}
"""


class Tick(Message):
    i: int
    pad: str = ""


def produce(url: str, rate: float, halt: threading.Event) -> None:
    app = App("wal-producer", settings=Settings(url=url))
    app.message("bench.wal", queue="wal")(Tick)

    async def run() -> None:
        async with app:
            i = 0
            began = time.monotonic()
            while not halt.is_set():
                ahead = i / rate - (time.monotonic() - began)
                if ahead > 0:  # at `rate` jobs/s at most
                    await asyncio.sleep(ahead)
                    continue
                waiting = (await app.stats()).get("wal", {}).get("queued", 0)
                if waiting > 2000:  # as fast as the workers go, no faster
                    await asyncio.sleep(0.02)
                    continue
                await app.enqueue_many([Tick(i=i + k, pad="x" * 200) for k in range(200)])
                i += 200

    asyncio.run(run())


def read(url: str, halt: threading.Event) -> None:
    """What the dashboard reads, as often as it can: queue stats, the newest jobs, a count."""
    app = App("wal-reader", settings=Settings(url=url))

    async def run() -> None:
        async with app:
            while not halt.is_set():
                await app.stats()
                await app.search_jobs(JobFilter(), limit=50)
                await app.count_jobs(JobFilter(state="succeeded"), cap=DEFAULT_COUNT_CAP)

    asyncio.run(run())


def sizes(path: Path) -> tuple[int, int]:
    def size(p: str) -> int:
        try:
            return os.path.getsize(p)
        except FileNotFoundError:
            return 0

    return size(str(path)), size(f"{path}-wal")


def run(
    seconds: float, workers: int, readers: int, rate: float, url_options: str, trace: bool
) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "walapp.py").write_text(APP)
        path = root / "jobs.db"
        url = f"sqlite:///{path}{url_options}"
        cap = float(url_options.partition("=")[2]) * MIB
        env = {**os.environ, "OFFLOAD_URL": url}
        env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "offload", "worker", "--app", "walapp:app"],
                cwd=root,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(workers)
        ]
        halt = threading.Event()
        threads = [threading.Thread(target=produce, args=(url, rate, halt))]
        deadline = time.monotonic() + 30
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        threads += [threading.Thread(target=read, args=(url, halt)) for _ in range(readers)]
        for t in threads:
            t.start()
        worst_wal, worst_ratio, samples = 0, 0.0, []
        began = time.monotonic()
        end = began + seconds
        while time.monotonic() < end:
            db, wal = sizes(path)
            worst_wal = max(worst_wal, wal)
            worst_ratio = max(worst_ratio, wal / max(2 * db, cap))
            samples.append((db, wal))
            if trace and len(samples) % 20 == 0:
                print(
                    f"{time.monotonic() - began:5.1f} s  db {db / MIB:7.1f}  wal {wal / MIB:7.1f}"
                )
            time.sleep(0.05)
        halt.set()
        for t in threads:
            t.join()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(30)
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            done = conn.execute("SELECT count(*) FROM offload_jobs WHERE state = 'succeeded'")
            succeeded = done.fetchone()[0]
        db, wal = samples[-1]
    return {
        "db_mib": db / MIB,
        "wal_mib": wal / MIB,
        "worst_wal_mib": worst_wal / MIB,
        "worst_of_bound": worst_ratio,
        "jobs": succeeded,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=5000, help="jobs/s enqueued at most")
    parser.add_argument("--cap-mib", type=float, default=16, help="as ?wal_cap_mib= (bound)")
    parser.add_argument("--trace", action="store_true")
    parser.add_argument("--save", type=Path)
    parser.add_argument(
        "--table",
        nargs="+",
        metavar="LABEL=FILE",
        help="write the section of bench/RESULTS.md from saved runs (and run nothing)",
    )
    args = parser.parse_args()
    if args.table:
        rows = {}
        for item in args.table:
            label, _, name = item.partition("=")
            rows[label] = json.loads(Path(name).read_text())
        write_section("sqlite-wal", _section(rows))
        return
    options = f"?wal_cap_mib={args.cap_mib:g}"
    figures = run(args.seconds, args.workers, args.readers, args.rate, options, args.trace)
    figures.update(workers=args.workers, readers=args.readers, rate=args.rate, cap=args.cap_mib)
    print(json.dumps(figures), flush=True)
    if args.save:
        args.save.write_text(json.dumps(figures, indent=1))


def _section(rows: dict[str, dict[str, float]]) -> str:
    after = list(rows.values())[-1]
    lines = [
        "## SQLite: the WAL against its database under load",
        "",
        f"{after['workers']:g} worker processes drain no-op jobs that a producer enqueues as "
        f"fast as they go (at most {after['rate']:,.0f}/s), while {after['readers']:g} readers "
        "read what the dashboard reads (stats, a page, a capped count); the files sampled "
        f"every 50 ms for {after['seconds']:g} s (`python bench/sqlite_wal.py --cap-mib "
        f"{after['cap']:g}`). Bound: the larger of twice the database and the cap "
        f"({after['cap']:g} MiB here, 64 MiB by default). The checkpointers compared, as each "
        "row's label names them: PASSIVE checkpoints only (before 2026-12-02); TRUNCATE past "
        "a quarter of the bound (2026-12-02); RESTART past a quarter, the file kept for the "
        "next frames (2026-12-03). bench/sqlite_wal.py, run on each tree with `--save`, then "
        "`--table`.",
        "",
        "| tree | jobs done | database MiB (end) | WAL MiB (end) | largest WAL MiB "
        "| largest WAL / bound |",
        "|---|---|---|---|---|---|",
    ]
    for label, f in rows.items():
        lines.append(
            f"| {label} | {fmt(f['jobs'])} | {fmt(f['db_mib'], 1)} | {fmt(f['wal_mib'], 1)} "
            f"| {fmt(f['worst_wal_mib'], 1)} | {fmt(f['worst_of_bound'], 2)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
