"""bench/ scripts' PostgreSQL databases: each script's own, on the test server, made anew."""

from __future__ import annotations

import os

#: A database on the server the benchmarks use (the suite's): new databases go beside it.
PG_ADMIN = os.environ.get("OFFLOAD_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def fresh_database(name: str) -> str:
    """The database `name` on PG_ADMIN's server, dropped if there and made anew with
    offload's schema: its URL."""
    import psycopg

    from offload.brokers.postgres import PostgresBackend

    async with await psycopg.AsyncConnection.connect(PG_ADMIN, autocommit=True) as conn:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {name}")
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    backend = PostgresBackend.from_url(url)
    await backend.open(check_schema=False)
    try:
        await backend.migrate()
    finally:
        await backend.close()
    return url
