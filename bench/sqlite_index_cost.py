"""What the jobs table's secondary indexes, and the file's page size, cost one enqueue at a
time on SQLite.

    .venv/bin/python bench/sqlite_index_cost.py [--calls 20000] [--rounds 2]

Each round runs every case in turn, each on a fresh database file: an App opens it, makes
500 `app.enqueue_sync` calls (so the thread's connection is open), drops the case's indexes
from a connection of its own (the App's open makes the schema, indexes included, so they go
after it), then times `--calls` more, one at a time. The cases: every index as shipped; without
the three the operators' jobs page reads (`search_indexes` in the SQLite queries); and without
every secondary index a new job's row is written to but the claim's (`offload_jobs_ready`)
and the unique ones; and every index on a file made with 2 KiB and with 1 KiB pages (a commit
writes each page it changed to the WAL whole). Dropping them is an experiment only: the
claim, the jobs page and the fair queues need them. Writes section "sqlite-index-cost" of
RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path

from _results import rounds_rows, write_section
from per_call_against import _rates

from offload import App, Message, Settings

#: The operators' jobs page's indexes (queries.sql, `search_indexes`; two more, on
#: (kind, id) and (enqueued_at, id), until 2026-12-05).
JOBS_PAGE = (
    "offload_jobs_state_id",
    "offload_jobs_state_kind_id",
    "offload_jobs_queue_id",
)
#: The other secondary indexes a queued job's row is written to, but the claim's.
OTHERS = ("offload_jobs_state", "offload_jobs_owner", "offload_jobs_fair")
#: Case: (indexes dropped, page size of the new file or None for SQLite's default).
CASES: dict[str, tuple[tuple[str, ...], int | None]] = {
    "every index (as shipped)": ((), None),
    "without the jobs page's three": (JOBS_PAGE, None),
    "without those and state, owner, fair": (JOBS_PAGE + OTHERS, None),
    "every index, 2 KiB pages": ((), 2048),
    "every index, 1 KiB pages": ((), 1024),
}


class Noop(Message):
    i: int


async def _case(drop: tuple[str, ...], page: int | None, calls: int) -> tuple[float, float]:
    """(calls/s, CPU µs per call) of `app.enqueue_sync` with the indexes `drop` dropped, on
    a file made with pages of `page` bytes (None: as the App makes it)."""
    with tempfile.TemporaryDirectory(prefix="offload-index-cost-") as tmp:
        db = Path(tmp) / "jobs.db"
        if page is not None:  # a page size holds from a file's first write on
            made = sqlite3.connect(db)
            made.execute(f"PRAGMA page_size = {page}")
            made.execute("PRAGMA journal_mode = WAL")
            made.close()
        app = App("index-cost", settings=Settings(url=f"sqlite:///{db}"))
        app.message("bench.index_cost", queue="index-cost")(Noop)
        async with app:

            def run() -> tuple[float, float]:
                for i in range(500):
                    app.enqueue_sync(Noop(i=i))
                side = sqlite3.connect(db)
                try:
                    for name in drop:
                        side.execute(f"DROP INDEX {name}")
                    side.commit()
                finally:
                    side.close()
                began, cpu = time.perf_counter(), time.process_time()
                for i in range(calls):
                    app.enqueue_sync(Noop(i=i))
                return _rates(calls, began, cpu)

            return await asyncio.to_thread(run)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    runs: dict[str, list[tuple[float, ...]]] = {name: [] for name in CASES}
    for r in range(args.rounds):
        for name, (drop, page) in CASES.items():
            runs[name].append(asyncio.run(_case(drop, page, args.calls)))
            print(f"round {r + 1} {name}: {runs[name][-1][0]:,.0f} calls/s", flush=True)
    rows = rounds_rows(runs, [(0, ",.0f"), (1, ".0f")])
    body = "\n".join(
        [
            "## SQLite: what the secondary indexes and the page size cost one enqueue "
            "(`bench/sqlite_index_cost.py`)",
            "",
            f"`app.enqueue_sync`, {args.calls:,} calls one at a time per case and round, each "
            f"case on a fresh file, cases in turn ({args.rounds} rounds). Indexes dropped after "
            "the App opened the file: an experiment, not a setting (the claim, the jobs page "
            "and fair queues need them). The page-size cases make the file with that page "
            "size before the App opens it (SQLite's default, and the App's, is 4 KiB).",
            "",
            "| indexes | calls/s (rounds) | CPU µs per call (rounds) |",
            "|---|---|---|",
            *rows,
        ]
    )
    print(body)
    write_section("sqlite-index-cost", body)


if __name__ == "__main__":
    main()
