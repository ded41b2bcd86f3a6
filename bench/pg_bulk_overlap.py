"""A lead for issue 18's bulk target on PostgreSQL, measured: would a bulk enqueue be faster
if the client stamped its envelopes while the server inserts the ones already sent?

    .venv/bin/python bench/pg_bulk_overlap.py [--jobs 10000] [--rounds 4]

`app.enqueue_many` stamped every envelope (id, times, routing, the payload's JSON), then sent
one statement: the server waited for the client, then the client for the server. Each case
stores `--jobs` jobs the way it says (after one warm-up of each, not counted), on one
autocommit connection of its own (no App call: the same statement `PostgresBackend.enqueue_in`
sends, `Q["enqueue"]`), on an emptied database `offload_bulk_overlap` made anew beside
`OFFLOAD_TEST_PG_URL`'s (the suite's server, by default):

- "one statement": stamp all, then one statement (what `enqueue_many` did before);
- "chunks, stamped first": stamp all, then one statement per chunk of 1,000, sent
  together in one transaction (psycopg's pipeline mode): the chunking alone;
- "chunks, stamped as sent": the same transaction, each chunk stamped and sent before the
  next is stamped: the server inserts a chunk while the client stamps the next.

`enqueue_many` does the last since (`PostgresBackend.enqueue_stream`), for a batch of more
than one chunk without keys; this keeps the cases of the lead as they were measured (each
envelope stamped by `app.envelope`). Writes section "pg-bulk-overlap" of RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import psycopg
from _pg import fresh_database
from _results import rounds_rows, write_section
from per_call_against import _rates

from offload import App, Message, Settings
from offload.brokers.postgres.backend import PostgresBackend, Q

DATABASE = "offload_bulk_overlap"
CHUNK = 1000


class Noop(Message):
    i: int


Case = Callable[[App, psycopg.AsyncConnection, int], Awaitable[None]]


async def one_statement(app: App, conn: psycopg.AsyncConnection, jobs: int) -> None:
    envelopes = [app.envelope(Noop(i=i)) for i in range(jobs)]
    cursor = await conn.execute(Q["enqueue"], {"batch": PostgresBackend._batch(envelopes)})
    await cursor.fetchall()


async def _chunks(conn: psycopg.AsyncConnection, chunks: list[Callable[[], list[object]]]) -> None:
    """Each chunk's statement, made by calling its function as it is sent, in one
    transaction of pipelined statements."""
    async with conn.transaction(), conn.pipeline() as pipeline:
        cursors = []
        for make in chunks:
            cursor = conn.cursor()
            await cursor.execute(Q["enqueue"], {"batch": PostgresBackend._batch(make())})  # type: ignore[arg-type]
            cursors.append(cursor)
        await pipeline.sync()
        for cursor in cursors:
            await cursor.fetchall()


async def chunks_stamped_first(app: App, conn: psycopg.AsyncConnection, jobs: int) -> None:
    envelopes = [app.envelope(Noop(i=i)) for i in range(jobs)]
    slices = [envelopes[at : at + CHUNK] for at in range(0, jobs, CHUNK)]
    await _chunks(conn, [lambda s=s: s for s in slices])  # type: ignore[misc]


async def chunks_stamped_as_sent(app: App, conn: psycopg.AsyncConnection, jobs: int) -> None:
    def stamp(at: int) -> list[object]:
        return [app.envelope(Noop(i=i)) for i in range(at, min(jobs, at + CHUNK))]

    await _chunks(conn, [lambda at=at: stamp(at) for at in range(0, jobs, CHUNK)])  # type: ignore[misc]


CASES: dict[str, Case] = {
    "one statement (as `enqueue_many` was)": one_statement,
    f"chunks of {CHUNK:,}, stamped first": chunks_stamped_first,
    f"chunks of {CHUNK:,}, stamped as sent": chunks_stamped_as_sent,
}


async def _run(jobs: int, rounds: int) -> dict[str, list[tuple[float, ...]]]:
    url = await fresh_database(DATABASE)
    app = App("bulk-overlap", settings=Settings(url=url))
    app.message("bench.bulk_overlap", queue="bulk-overlap")(Noop)
    runs: dict[str, list[tuple[float, ...]]] = {name: [] for name in CASES}
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for case in CASES.values():  # a warm-up of each, not counted (a new table's first
            await conn.execute("TRUNCATE offload_jobs, offload_events")  # pages were slow)
            await case(app, conn, jobs)
        for r in range(rounds):
            for name, case in CASES.items():
                await conn.execute("TRUNCATE offload_jobs, offload_events")
                began, cpu = time.perf_counter(), time.process_time()
                await case(app, conn, jobs)
                runs[name].append(_rates(jobs, began, cpu))
                cur = await conn.execute("SELECT count(*) FROM offload_jobs")
                stored = await cur.fetchone()
                assert stored is not None and stored[0] == jobs, (name, stored)
                print(f"round {r + 1} {name}: {runs[name][-1][0]:,.0f} jobs/s", flush=True)
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    runs = asyncio.run(_run(args.jobs, args.rounds))
    rows = rounds_rows(runs, [(0, ",.0f"), (1, ".0f")])
    body = "\n".join(
        [
            "## PostgreSQL: a bulk enqueue stamped while the server inserts "
            "(`bench/pg_bulk_overlap.py`)",
            "",
            f"{args.jobs:,} jobs per case and round, cases in turn ({args.rounds} rounds), each "
            "on an emptied database, one connection. A lead for issue 18's bulk target: "
            "`enqueue_many` was the first case, and does the third since 2026-12-05.",
            "",
            "| case | jobs/s (rounds) | client CPU µs per job (rounds) |",
            "|---|---|---|",
            *rows,
        ]
    )
    print(body)
    write_section("pg-bulk-overlap", body)


if __name__ == "__main__":
    main()
