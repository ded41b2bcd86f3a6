"""The floor under one enqueue at a time on PostgreSQL: the durable commit, and what each
layer above it adds.

Alternates, in one process on one fresh database (offload's schema), N one-at-a-time calls of
- a psycopg asyncio `INSERT` of one short row into a two-column table, on a kept
  connection in autocommit: one statement, one durable commit (the floor a queue that
  loses nothing stands on);
- the same with `synchronous_commit` off on its connection (how much of the floor is the
  wait for the WAL to reach the disk; offload never enqueues so);
- offload's enqueue statement for one envelope, on a kept connection, and the same without
  the new job's feed entry (the statement `enqueue_stream` sends per chunk);
- `PostgresBackend.enqueue([envelope])` (the pool, the retry guard);
- `App.enqueue(message)` (validation, the envelope, group commit, tracing, metrics);
and prints calls/s and CPU µs per call of each; writes the `pg-per-call-floor` section.

    .venv/bin/python bench/pg_per_call_floor.py [N]
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from _pg import fresh_database
from per_call_floor import ROUNDS, alternate, report

from offload import App, Message, Settings
from offload.brokers.postgres.backend import _ENQUEUE_JOBS, Q


class Noop(Message):
    i: int


async def main(n: int) -> None:
    url = await fresh_database("offload_bench_floor")
    app = App("floor", settings=Settings(url=url))
    app.message("floor.noop", queue="floor")(Noop)
    await app.open()
    backend: Any = app._require_backend()
    durable = await psycopg.AsyncConnection.connect(url, autocommit=True)
    lax = await psycopg.AsyncConnection.connect(url, autocommit=True)
    await durable.execute("CREATE TABLE floor (id bigserial PRIMARY KEY, v text NOT NULL)")
    await lax.execute("SET synchronous_commit = off")
    kept = await psycopg.AsyncConnection.connect(url, autocommit=True)

    def insert(conn: psycopg.AsyncConnection[Any]) -> Callable[[int], Awaitable[object]]:
        return lambda i: conn.execute("INSERT INTO floor (v) VALUES (%s)", ("x",))

    def statement(sql: str) -> Callable[[int], Awaitable[object]]:
        async def call(i: int) -> object:
            batch = backend._batch([app.envelope(Noop(i=i))])
            async with kept.cursor() as cur:
                await cur.execute(sql, {"batch": batch})
                return await cur.fetchall()

        return call

    cases: dict[str, Callable[[int], Awaitable[object]]] = {
        "INSERT of one row, durable commit (floor)": insert(durable),
        "INSERT of one row, `synchronous_commit` off": insert(lax),
        "enqueue statement, kept connection": statement(Q["enqueue"]),
        "enqueue statement without the feed entry": statement(_ENQUEUE_JOBS),
        "PostgresBackend.enqueue": lambda i: backend.enqueue([app.envelope(Noop(i=i))]),
        "App.enqueue": lambda i: app.enqueue(Noop(i=i)),
    }
    try:
        runs = await alternate(cases, n)
    finally:
        for conn in (durable, lax, kept):
            await conn.close()
        await app.close()
    intro = (
        f"One call at a time, {n:,} calls per case, {ROUNDS} rounds alternating, one "
        "process, asyncio (no uvloop), PostgreSQL on loopback (`fsync` and "
        "`synchronous_commit` on, unless the case says so), a fresh database with offload's "
        "schema. The two INSERT cases write a two-column table of their own."
    )
    report("pg-per-call-floor", "One enqueue at a time on PostgreSQL: the floor", intro, runs)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000))
