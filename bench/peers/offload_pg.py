"""offload on PostgreSQL: its own database `offload_bench` on the harness's server."""

from __future__ import annotations

import _offload_common as c
from common import ensure_pg_database, pg_dsn, pg_exec  # type: ignore[import-not-found]

NAME = "offload-pg"
PACKAGES = c.PACKAGES
BACKEND = "postgres"
WORKER_VARIANTS = c.WORKER_VARIANTS
BULK_API = c.BULK_API
DBNAME = "offload_bench"
URL = pg_dsn(DBNAME)
app = c.make_app(URL)
noop, lat = app.handlers["bench.noop"].fn, app.handlers["bench.lat"].fn


async def setup() -> None:
    from offload.brokers.postgres import PostgresBackend

    ensure_pg_database(DBNAME)
    backend = PostgresBackend.from_url(URL)
    await backend.open(check_schema=False)
    try:
        await backend.migrate()
    finally:
        await backend.close()


def reset() -> None:
    pg_exec(DBNAME, "TRUNCATE offload_jobs, offload_events, offload_effects")


async def open_producer():  # type: ignore[no-untyped-def]
    return await c.open_producer(c.make_app(URL))


close_producer, enqueue, enqueue_latency = c.close_producer, c.enqueue, c.enqueue_latency
enqueue_bulk = c.enqueue_bulk


def worker_cmd(variant: str) -> list[str]:
    return c.worker_cmd("offload_pg", variant)
