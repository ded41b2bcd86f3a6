"""`App.enqueue_in_sync`: a job enqueued on the caller's synchronous PostgreSQL connection
exists if and only if the caller's transaction commits (Django's same-database path)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import psycopg
import pytest

from offload import App, ConfigurationError, Message, Settings
from offload.contract import UnstorableMessage
from offload.errors import BackendError

from ..services import PgSchema

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


class Note(Message):
    n: int = 0


class Single(Message):
    n: int = 0


@pytest.fixture
async def app(schema: PgSchema) -> AsyncIterator[App]:
    app = App("pg-sync", settings=Settings(url=schema.url))
    app.message("pg.note")(Note)
    app.message("pg.single", unique="queued")(Single)
    async with app:
        yield app


async def test_sync_enqueue_exists_only_if_the_transaction_commits(
    app: App, schema: PgSchema
) -> None:
    with psycopg.connect(schema.url) as conn:
        # Given the caller's own transaction that rolls back
        with conn.transaction(force_rollback=True):
            rolled_back = app.enqueue_in_sync(conn, Note(n=1))
            assert rolled_back.created
            assert await app.get(rolled_back.id) is None  # invisible until it commits
        # When another commits, with an idempotency key given twice
        with conn.transaction():
            kept = app.enqueue_in_sync(conn, Note(n=2), idempotency_key="k", owner="ann")
            again = app.enqueue_in_sync(conn, Note(n=3), idempotency_key="k", owner="ann")
    # Then only the committed job exists, once
    assert await app.get(rolled_back.id) is None
    row = await app.get(kept.id)
    assert row is not None and (row.state, row.owner, row.payload) == ("queued", "ann", {"n": 2})
    assert (again.id, again.created) == (kept.id, False)


class Odd(Message):
    text: str = ""
    ratio: float = 0.0
    n: int = 0


@pytest.mark.parametrize(
    ("message", "refused"),
    [
        (Odd(text="a\x00b"), "NUL character"),
        (Odd(ratio=math.nan), "NaN or infinity"),
        (Odd(n=2**64), "Integer exceeds 64-bit range"),
    ],
)
async def test_sync_enqueue_refuses_what_every_way_in_refuses_and_the_transaction_goes_on(
    app: App, schema: PgSchema, message: Odd, refused: str
) -> None:
    # It skipped the checks: a NaN stored as null (the job failed for good), a NUL the
    # driver's error, which aborted the caller's transaction.
    app.message("pg.odd")(Odd)
    with psycopg.connect(schema.url) as conn, conn.transaction():
        with pytest.raises(UnstorableMessage, match=refused):
            app.enqueue_in_sync(conn, message)
        kept = app.enqueue_in_sync(conn, Note(n=1))  # the transaction is still usable
    assert [r.id for r in await app.list_jobs(owner=None)] == [kept.id]


async def test_sync_enqueue_refuses_unique_kinds_and_engines_without_it(
    app: App, schema: PgSchema
) -> None:
    with psycopg.connect(schema.url) as conn:
        with pytest.raises(BackendError, match="unique kinds"):
            app.enqueue_in_sync(conn, Single())
        conn.rollback()
    sqlite = App("sqlite-sync", url="memory://")
    sqlite.message("pg.note")(Note)
    with pytest.raises(ConfigurationError, match="cannot enqueue inside a synchronous"):
        sqlite.enqueue_in_sync(object(), Note())


def test_sync_enqueue_before_offload_migrate_says_to_run_it() -> None:
    from offload import SchemaError
    from offload.brokers.postgres.backend import UNDEFINED_TABLE, _sqlstate

    # Given a database offload was never migrated in (Django's own, on its first deploy)
    empty = PgSchema(migrate=False)
    empty.create_sync()
    try:
        app = App("pg-sync-empty", settings=Settings(url=empty.url))
        app.message("pg.note")(Note)
        with psycopg.connect(empty.url) as conn:
            # when a view enqueues on its connection, then the error says what to do (it
            # was the driver's own: relation "offload_jobs" does not exist)
            with pytest.raises(SchemaError, match="run `offload migrate`") as raised:
                app.enqueue_in_sync(conn, Note(n=1))
            assert _sqlstate(raised.value.__cause__) == UNDEFINED_TABLE
    finally:
        empty.drop_sync()
