"""SQLite: the prune of a long history behind a pile of dead jobs.

Makes a SQLite file (offload's schema) with D dead jobs that finished first and N succeeded
ones after them, all past the retention, by SQL; copies it for each round and times
`SQLiteBackend.prune` of the whole history (500 rows a transaction, the write lock left free
between them). Prints the figures; writes the `sqlite-prune-history` section of RESULTS.md
unless --no-write.

    .venv/bin/python bench/sqlite_prune_history.py [N] [D] [--no-write]
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from _results import write_section

from offload.brokers.sqlite import SQLiteBackend

ROUNDS = 3

FILL = """
WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < ?)
INSERT INTO offload_jobs (id, kind, version, queue, priority, payload, state, attempt,
    max_attempts, run_at, enqueued_at, owner, cancel_requested, finished_at)
SELECT printf('%08d-0000-7000-8000-000000000000', n), 'k', 1, 'q', 0, '{}',
    CASE WHEN n <= ? THEN 'dead' ELSE 'succeeded' END, 1, 5, 1000.0, 1000.0, 'o', 0, 1000.0 + n
FROM g
"""


async def prune_once(path: Path) -> tuple[int, float]:
    backend = SQLiteBackend(str(path))
    await backend.open()
    try:
        began = time.perf_counter()
        pruned = await backend.prune(60)
        return pruned, time.perf_counter() - began
    finally:
        await backend.close()


async def main(n: int, dead: int, write: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder) / "base.db"
        backend = SQLiteBackend(str(base))
        await backend.open()
        await backend.close()
        with contextlib.closing(sqlite3.connect(base)) as conn, conn:
            conn.execute(FILL, (n + dead, dead))
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        times = []
        for _ in range(ROUNDS):
            run = Path(folder) / "run.db"
            shutil.copy(base, run)
            pruned, took = await prune_once(run)
            assert pruned == n, (pruned, n)
            times.append(took)
            for extra in ("", "-wal", "-shm"):
                Path(f"{run}{extra}").unlink(missing_ok=True)
    body = "\n".join(
        [
            f"{n:,} succeeded jobs behind {dead:,} dead ones that finished first (kept), all "
            "past the retention, in one SQLite file made by SQL; one process prunes them "
            "all (500 a transaction, the write lock left free between transactions).",
            "",
            "| rounds | seconds | jobs/s |",
            "|---|---|---|",
            *(f"| {i + 1} | {t:.1f} | {n / t:,.0f} |" for i, t in enumerate(times)),
        ]
    )
    print(body)
    if write:
        write_section("sqlite-prune-history", body)


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:] if not a.startswith("--")]
    n, dead = (args + [200_000, 100_000][len(args) :])[:2]
    asyncio.run(main(n, dead, "--no-write" not in sys.argv))
