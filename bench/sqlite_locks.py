"""How long offload's long SQLite writes hold the write lock, on a big database.

    python bench/sqlite_locks.py [--jobs 200000] [--save FILE] [--before FILE] [--only NAME]

Each operation (purge, prune, and the bulk delete, re-queue and cancel of every job by id)
runs on a fresh copy of one database of `--jobs` jobs, while a probe thread on its own
connection tries `BEGIN IMMEDIATE` (no wait) every half millisecond: the longest stretch
between two of its successes is the longest time the operation kept every other writer
out. `--save` keeps the figures as JSON; `--before` adds such a file (from another tree,
e.g. the code before chunking) as a column and writes the section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _results import fmt, write_section

from offload import App, Message, Settings
from offload.brokers.sqlite import SQLiteBackend

#: Days back the finished jobs ended (older than any retention).
OLD_S = 30 * 86400.0


class Noop(Message):
    n: int


def build(path: Path, n: int) -> None:
    app = App("locks", settings=Settings(url=f"sqlite:///{path}"))
    app.message("bench.noop", queue="bulk")(Noop)

    async def load() -> None:
        async with app:
            for start in range(0, n, 10_000):
                await app.enqueue_many([Noop(n=i) for i in range(start, min(n, start + 10_000))])

    asyncio.run(load())


class Probe(threading.Thread):
    """Takes and drops the write lock as often as it can; keeps the longest gap."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.longest_s = 0.0
        self.halt = threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=0)
        last = time.monotonic()
        while not self.halt.is_set():
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
            except sqlite3.OperationalError:
                pass
            else:
                now = time.monotonic()
                self.longest_s = max(self.longest_s, now - last)
                last = now
            time.sleep(0.0005)
        conn.close()


def _set_all(path: Path, state: str) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "UPDATE offload_jobs SET state = ?, finished_at = ?", (state, time.time() - OLD_S)
        )


def _ids(path: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        return [r[0] for r in conn.execute("SELECT id FROM offload_jobs")]


Operation = Callable[[SQLiteBackend, list[str]], Awaitable[int]]
#: name -> (the state every job is put in first, the operation).
OPERATIONS: dict[str, tuple[str | None, Operation]] = {
    "purge (queued)": (None, lambda b, _ids: b.purge("bulk")),
    "prune (succeeded)": ("succeeded", lambda b, _ids: b.prune(7 * 86400.0)),
    "delete_many (succeeded)": ("succeeded", lambda b, ids: b.delete_many(ids)),
    "requeue_many (dead)": ("dead", lambda b, ids: b.requeue_many(ids)),
    "cancel_many (queued)": (None, lambda b, ids: b.cancel_many(ids, {})),
}


def measure(
    base: Path, work: Path, state: str | None, op: Operation, options: dict[str, int]
) -> dict[str, float]:
    path = work / "run.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.copy(base, path)
    if state is not None:
        _set_all(path, state)
    ids = _ids(path)

    async def run() -> tuple[int, float]:
        backend = SQLiteBackend(str(path), **options)
        await backend.open()
        try:
            began = time.monotonic()
            changed = await op(backend, ids)
            return changed, time.monotonic() - began
        finally:
            await backend.close()

    probe = Probe(path)
    probe.start()
    changed, wall = asyncio.run(run())
    probe.halt.set()
    probe.join()
    return {"rows": changed, "wall_s": wall, "longest_hold_s": probe.longest_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=200_000)
    parser.add_argument("--save", type=Path)
    parser.add_argument("--before", type=Path)
    parser.add_argument("--after", type=Path, help="saved figures to write, instead of a run")
    parser.add_argument("--note", default="", help="a sentence under the table")
    parser.add_argument("--only", help="one operation's name (its first word)")
    parser.add_argument("--wal-cap-mib", type=int, help="the WAL's cap (a big one: no rewinds)")
    args = parser.parse_args()
    if args.after:
        figures = json.loads(args.after.read_text())
    else:
        figures = run_all(args)
    if args.save:
        args.save.write_text(json.dumps(figures, indent=1))
    if args.before:
        write_section("sqlite-locks", _section(args, json.loads(args.before.read_text()), figures))


def run_all(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = work / "base.db"
        build(base, args.jobs)
        with contextlib.closing(sqlite3.connect(base)) as conn, conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        figures = {}
        for name, (state, op) in OPERATIONS.items():
            if args.only and name.split()[0] != args.only:
                continue
            options = {"wal_cap_bytes": args.wal_cap_mib << 20} if args.wal_cap_mib else {}
            figures[name] = measure(base, work, state, op, options)
            print(name, figures[name], flush=True)
    return figures


def _section(
    args: argparse.Namespace, before: dict[str, dict[str, float]], figures: dict[str, Any]
) -> str:
    lines = [
        "## SQLite: the longest write-lock hold",
        "",
        f"Longest hold of the write lock (as a probe connection saw it) by one call on a "
        f"database of {args.jobs:,} jobs (`python bench/sqlite_locks.py --jobs "
        f"{args.jobs}`), before chunking (one transaction per call) and after.",
        "",
        "| operation | rows | before: longest hold ms | after: longest hold ms "
        "| before: call s | after: call s |",
        "|---|---|---|---|---|---|",
    ]
    for name, after in figures.items():
        old = before[name]
        lines.append(
            f"| {name} | {fmt(after['rows'])} | {fmt(old['longest_hold_s'] * 1000)} "
            f"| {fmt(after['longest_hold_s'] * 1000)} | {fmt(old['wall_s'], 2)} "
            f"| {fmt(after['wall_s'], 2)} |"
        )
    if args.note:
        lines += ["", args.note]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
