"""Enqueue throughput per engine: one producer, P concurrent producers, and bulk.

    python bench/enqueue.py [--backends sqlite,postgres,redis] [--jobs 5000]
                            [--producers 1,32] [--reps 3] [--profile] [--no-write]

One process, one App per measurement on a fresh backend (SQLite: a file in the temp folder;
PostgreSQL: a private schema in the test database; Redis: a private key prefix). "P
producers" are P asyncio tasks sharing the App, each awaiting its own `app.enqueue` calls one
at a time (a web process under load); "bulk" is one `app.enqueue_many` of all jobs. Figures
are jobs/s and CPU µs per job of this process. `--profile` prints a cProfile of one producer
instead of measuring.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import secrets
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

from _pg import PG_ADMIN
from _results import fmt, write_section

from offload import App, Message, Settings

REDIS_URL = os.environ.get("OFFLOAD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class Noop(Message):
    i: int


@asynccontextmanager
async def fresh_url(name: str) -> AsyncIterator[str]:
    """The URL of an empty backend of kind `name`, removed afterwards."""
    if name == "sqlite":
        path = Path(tempfile.gettempdir()) / f"offload-enq-{secrets.token_hex(4)}.db"
        try:
            yield f"sqlite:///{path}"
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
    elif name == "postgres":
        import psycopg

        from offload.brokers.postgres import PostgresBackend

        schema = f"offload_enq_{secrets.token_hex(4)}"
        sep = "&" if "?" in PG_ADMIN else "?"
        url = f"{PG_ADMIN}{sep}options={quote(f'-csearch_path={schema}')}"
        async with await psycopg.AsyncConnection.connect(PG_ADMIN, autocommit=True) as conn:
            await conn.execute(f'CREATE SCHEMA "{schema}"')
        try:
            backend = PostgresBackend.from_url(url)
            await backend.open(check_schema=False)
            await backend.migrate()
            await backend.close()
            yield url
        finally:
            async with await psycopg.AsyncConnection.connect(PG_ADMIN, autocommit=True) as conn:
                await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    else:
        import redis.asyncio as aredis

        prefix = f"offload-enq-{secrets.token_hex(4)}:"
        try:
            yield f"{REDIS_URL}?prefix={prefix}"
        finally:
            client = aredis.Redis.from_url(REDIS_URL)
            keys = [k async for k in client.scan_iter(match=f"{{{prefix}}}*", count=1000)]
            for i in range(0, len(keys), 500):
                await client.delete(*keys[i : i + 500])
            await client.aclose()


def make_app(url: str) -> App:
    app = App("bench", settings=Settings(url=url))
    app.message("bench.noop", queue="bench")(Noop)
    return app


async def produce(app: App, jobs: int, producers: int) -> None:
    """`jobs` enqueues, spread over `producers` tasks each awaiting one call at a time."""

    async def one(start: int) -> None:
        for i in range(start, jobs, producers):
            await app.enqueue(Noop(i=i))

    await asyncio.gather(*(one(p) for p in range(producers)))


async def measure(name: str, jobs: int, producers: int | None) -> tuple[float, float]:
    """(jobs/s, CPU µs/job) of one run; `producers` None is one bulk call."""
    async with fresh_url(name) as url:
        app = make_app(url)
        await app.open()
        try:
            await app.enqueue(Noop(i=-1))  # warm: connections, prepared statements
            c0, t0 = time.process_time(), time.perf_counter()
            if producers is None:
                await app.enqueue_many([Noop(i=i) for i in range(jobs)])
            else:
                await produce(app, jobs, producers)
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        finally:
            await app.close()
    return jobs / dt, cpu * 1e6 / jobs


async def profile(name: str, jobs: int) -> None:
    async with fresh_url(name) as url:
        app = make_app(url)
        await app.open()
        await app.enqueue(Noop(i=-1))
        prof = cProfile.Profile()
        prof.enable()
        await produce(app, jobs, 1)
        prof.disable()
        await app.close()
    print(f"== {name}: {jobs} sequential enqueues")
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backends", default="sqlite,postgres,redis")
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--producers", default="1,32")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    backends = args.backends.split(",")
    if args.profile:
        for name in backends:
            asyncio.run(profile(name, args.jobs))
        return
    modes: list[int | None] = [int(p) for p in args.producers.split(",")] + [None]
    results: dict[tuple[str, int | None], list[tuple[float, float]]] = {}
    for _ in range(args.reps):  # alternate engines and modes: a busy machine drifts
        for name in backends:
            for mode in modes:
                results.setdefault((name, mode), []).append(
                    asyncio.run(measure(name, args.jobs, mode))
                )
    rows = [
        "| engine | producers | jobs/s (median) | range | CPU µs/job |",
        "|---|---|---|---|---|",
    ]
    for (name, mode), runs in results.items():
        rates = [r for r, _ in runs]
        label = "bulk (`enqueue_many`)" if mode is None else str(mode)
        rows.append(
            f"| {name} | {label} | {fmt(statistics.median(rates))} "
            f"| {fmt(min(rates))}–{fmt(max(rates))} "
            f"| {fmt(statistics.median(c for _, c in runs))} |"
        )
    table = "\n".join(rows)
    print(table)
    if not args.no_write:
        note = (
            "## Enqueue throughput (`make bench-enqueue`)\n\n"
            f"{args.jobs} jobs per run, {args.reps} repetitions, engines and "
            "modes alternated. P producers = P asyncio tasks in one process, each awaiting its "
            "own `app.enqueue` (concurrent calls share one commit: group commit).\n\n"
        )
        write_section("enqueue", note + table)


if __name__ == "__main__":
    main()
