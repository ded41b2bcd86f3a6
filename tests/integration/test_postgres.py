"""PostgreSQL-specific behaviour: migrations, transactional enqueue, reconnects, wake-ups."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import psycopg
import pytest

import offload
from offload import App, Context, Message, SchemaError, Settings
from offload._options import MAX_OWNER_LENGTH
from offload.brokers.base import Change
from offload.brokers.postgres import PostgresBackend
from offload.brokers.postgres.backend import POOL_PATIENCE_S, Q
from offload.contract import JobFilter, JobState, KindLimits, Outcome, status_record
from offload.errors import BackendError, ConfigurationError
from offload.web import create_app, events
from offload.web.events import Hub, owner_stream
from offload.worker.runner import Worker

from ..contract._support import PATIENCE_S, claim, done, envelope, worker_info
from ..services import PG_URL, PgSchema, Relay, require_pg

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]
#: Where the offload these tests import lives: commands they run import that one too (a
#: source tree on PYTHONPATH included), not whichever one is installed.
SOURCE = str(Path(offload.__file__).resolve().parents[1])


class Ping(Message):
    n: int = 0


@pytest.fixture
async def app(schema: PgSchema) -> AsyncIterator[App]:
    app = App("pg-test", settings=Settings(url=schema.url, lease_s=2.0))
    app.message("pg.ping")(Ping)
    async with app:
        yield app


async def test_an_unmigrated_database_is_refused_until_offload_migrate() -> None:
    require_pg()
    empty = PgSchema(migrate=False)
    await empty.create()
    try:
        backend = PostgresBackend.from_url(empty.url)
        with pytest.raises(SchemaError, match="offload migrate"):
            await backend.open()
        env = {"OFFLOAD_URL": empty.url, "PATH": "/usr/bin:/bin", "PYTHONPATH": SOURCE}
        # (worker processes under a supervisor stop, exit 2, rather than restart for ever)
        workers = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "offload", "worker", "--app", "offload.demo.handlers:app",
             "--processes", "2"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )  # fmt: skip
        assert workers.returncode == 2, workers.stderr
        assert "offload migrate" in workers.stderr and "restarting" not in workers.stderr
        first = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "offload", "migrate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert first.returncode == 0, first.stderr
        applied = list(range(1, 14))
        assert f"applied schema migrations {applied}" in first.stdout
        again = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "offload", "migrate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "up to date" in again.stdout
        await backend.open()  # now accepted
        await backend.close()
    finally:
        await empty.drop()


async def test_calls_go_on_when_a_migration_adds_a_column_under_prepared_statements(
    app: App, schema: PgSchema
) -> None:
    # Given a process whose connections have run its reads often enough to prepare them
    # (psycopg prepares a statement run five times), on several connections at once,
    jobs = [await app.enqueue(Ping(n=i)) for i in range(3)]

    async def reads() -> None:
        for job in jobs:
            assert await app.get(job.id) is not None
        assert len(await app.list_jobs(owner=None)) == 3

    for _ in range(8):
        await asyncio.gather(*(reads() for _ in range(4)))
    # when a migration adds a column to the jobs (as migration 13 did, resent_at),
    async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as conn:
        await conn.execute(f"ALTER TABLE {schema.name}.offload_jobs ADD COLUMN later integer")
    # then its reads, cancels and listings answer as before (each connection forgets what
    # it prepared: the server refused those, "cached plan must not change result type").
    for _ in range(3):
        await asyncio.gather(*(reads() for _ in range(4)))
    assert (await app.cancel(jobs[0].id)).state.value == "cancelled"


@pytest.mark.parametrize(("option", "prepared"), [("", True), ("&prepare_threshold=none", False)])
async def test_prepare_threshold_none_prepares_nothing_as_a_transaction_pooler_needs(
    schema: PgSchema, option: str, prepared: bool
) -> None:
    # Behind PgBouncer in transaction mode, one server connection serves many clients in
    # turn: the statements one prepared there answered another's calls (a 202 for a job
    # never stored). `?prepare_threshold=none` prepares nothing.
    backend = PostgresBackend.from_url(schema.url + "&pool_size=1" + option)
    await backend.open()
    try:
        for _ in range(8):  # (psycopg prepares a statement on its fifth run)
            assert await backend.get(str(uuid.uuid4())) is None
        (row,) = await backend._fetch("SELECT count(*) AS n FROM pg_prepared_statements", {})
        assert (row["n"] > 0) is prepared
    finally:
        await backend.close()


@pytest.mark.parametrize("bad", ["-1", "1.5", "never"])
def test_a_prepare_threshold_that_is_no_number_is_refused(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="prepare_threshold must be a whole number"):
        PostgresBackend.from_url(f"postgresql://u@127.0.0.1/db?prepare_threshold={bad}")


async def test_migrating_a_schema_newer_than_this_offload_is_refused(schema: PgSchema) -> None:
    # Given a database a newer offload migrated (a rollback of the code, say),
    async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as conn:
        await conn.execute(f"INSERT INTO {schema.name}.offload_migrations (version) VALUES (99)")
    backend = PostgresBackend.from_url(schema.url)
    await backend.open(check_schema=False)
    try:
        # then offload migrate says so, where it said the schema was up to date.
        with pytest.raises(SchemaError, match="at version 99, newer than this offload"):
            await backend.migrate()
    finally:
        await backend.close()


async def test_a_migration_that_waits_for_a_lock_gives_way_and_tries_again(
    schema: PgSchema, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from offload.brokers.postgres import backend as pg

    monkeypatch.setattr(pg, "MIGRATE_LOCK_WAIT_S", 0.3)
    # Given a database one migration behind (13 adds a column to the jobs),
    async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as conn:
        await conn.execute(f"ALTER TABLE {schema.name}.offload_jobs DROP COLUMN resent_at")
        await conn.execute(f"DELETE FROM {schema.name}.offload_migrations WHERE version = 13")
    backend = PostgresBackend.from_url(schema.url)
    await backend.open(check_schema=False)
    holder = await psycopg.AsyncConnection.connect(schema.url)
    try:
        # and a transaction left open that read the jobs (a psql session, a report),
        await holder.execute("SELECT count(*) FROM offload_jobs")
        # when the migration runs, it gives way, saying which transaction is in the way,
        migrating = asyncio.create_task(backend.migrate())
        async with asyncio.timeout(30):
            while not [r for r in caplog.records if r.getMessage().startswith("migrating")]:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        said = next(r for r in caplog.records if r.getMessage().startswith("migrating"))
        assert f"pid {holder.info.backend_pid} (idle in transaction" in said.getMessage()
        assert "SELECT count(*) FROM offload_jobs" in said.getMessage()
        # so that calls go on meanwhile (each waited behind its lock, for as long as the
        # transaction stayed open),
        async with asyncio.timeout(10):
            assert await backend.get(str(uuid.uuid4())) is None
        assert not migrating.done()
        # and once the transaction ends, it applies.
        await holder.rollback()
        async with asyncio.timeout(60):
            assert await migrating == [13]
    finally:
        await holder.close()
        await backend.close()


async def test_feed_entries_written_under_schema_1_read_the_same_after_migration_2() -> None:
    require_pg()
    old = PgSchema(migrate=False)
    await old.create()
    try:
        app = App("pg-upgrade", settings=Settings(url=old.url))
        app.message("pg.ping")(Ping)
        before, after = app.envelope(Ping(n=1)), app.envelope(Ping(n=2))
        async with await psycopg.AsyncConnection.connect(old.url, autocommit=True) as conn:
            # Given a database at schema 1 holding a job and the feed entry schema 1 wrote,
            await conn.execute(Q["migration_1"].encode())
            await conn.execute(
                "CREATE TABLE offload_migrations (version integer PRIMARY KEY, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            )
            await conn.execute("INSERT INTO offload_migrations (version) VALUES (1)")
            schema_1_enqueue = Q["enqueue"].replace("offload_change(", "offload_record(")
            await conn.execute(schema_1_enqueue, {"batch": PostgresBackend._batch([before])})
        backend = PostgresBackend.from_url(old.url)
        with pytest.raises(SchemaError, match="offload migrate"):
            await backend.open()
        # when it is migrated and a job is enqueued under schema 2,
        await backend.open(check_schema=False)
        try:
            assert await backend.migrate() == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
            await backend.enqueue([after])
            changes = await backend.changes_since(0)
            # then both feed entries read as the status records of their jobs.
            assert [c.job_id for c in changes] == [before.id, after.id]
            for change in changes:
                row = await backend.get(change.job_id)
                assert row is not None
                assert status_record(change.row) == status_record(row)
        finally:
            await backend.close()
    finally:
        await old.drop()


async def test_a_schema_3_database_migrates_to_4_with_its_workers_and_jobs() -> None:
    require_pg()
    old = PgSchema(migrate=False)
    await old.create()
    try:
        app = App("pg-upgrade", settings=Settings(url=old.url))
        app.message("pg.ping", queue="pings")(Ping)
        job = app.envelope(Ping(n=1))
        async with await psycopg.AsyncConnection.connect(old.url, autocommit=True) as conn:
            # Given a database at schema 3 with a waiting job and a worker's entry as
            # schema 3 recorded it (its kinds only)
            await conn.execute(
                "CREATE TABLE offload_migrations (version integer PRIMARY KEY, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for version in (1, 2, 3):
                await conn.execute(Q[f"migration_{version}"].encode())
                await conn.execute(
                    "INSERT INTO offload_migrations (version) VALUES (%s)", (version,)
                )
            await conn.execute(Q["enqueue"], {"batch": PostgresBackend._batch([job])})
            await conn.execute(
                "INSERT INTO offload_workers (id, kinds, seen_at) VALUES ('old', %s, now())",
                ('{"pg.ping": [1]}',),
            )
        backend = PostgresBackend.from_url(old.url)
        with pytest.raises(SchemaError, match="offload migrate"):
            await backend.open()
        # When it is migrated
        await backend.open(check_schema=False)
        try:
            assert await backend.migrate() == [4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
            # Then the old entry still counts for the version check but has no registry
            # entry to show; a new worker's has; queues pause and resume; the job is claimed
            assert await backend.live_versions(within_s=30) == {"pg.ping": {1}}
            assert await backend.workers(lost_after_s=30) == []
            await backend.record_worker(worker_info("new", {"pg.ping": [1]}))
            assert [w.id for w in await backend.workers(lost_after_s=30)] == ["new"]
            assert await backend.pause("pings") is True
            assert await claim(backend, "pings") == []
            assert await backend.resume("pings") is True
            assert [lease.job_id for lease in await claim(backend, "pings")] == [job.id]
            assert await backend.migrate() == []
        finally:
            await backend.close()
    finally:
        await old.drop()


async def test_migration_12_drops_the_kind_and_creation_time_indexes() -> None:
    require_pg()
    old = PgSchema(migrate=False)
    await old.create()

    async def indexes(conn: psycopg.AsyncConnection) -> set[str]:
        cur = await conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'offload_jobs'"
            " AND schemaname = current_schema()"
        )
        return {r[0] for r in await cur.fetchall()}

    gone = {"offload_jobs_kind_id", "offload_jobs_created"}
    neighbour = PgSchema(migrate=False)
    await neighbour.create()
    try:
        async with await psycopg.AsyncConnection.connect(old.url, autocommit=True) as conn:
            # Given a database at schema 11, with the two indexes (one already dropped by
            # hand), and another schema later on its search_path with an index of that name
            await conn.execute(
                "CREATE TABLE offload_migrations (version integer PRIMARY KEY, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for version in range(1, 12):
                await conn.execute(Q[f"migration_{version}"].encode())
                await conn.execute(
                    "INSERT INTO offload_migrations (version) VALUES (%s)", (version,)
                )
            assert gone <= await indexes(conn)
            await conn.execute("DROP INDEX offload_jobs_created")
            other = f'"{neighbour.name}"'
            await conn.execute(f"CREATE TABLE {other}.offload_jobs (enqueued_at float8, id text)")
            await conn.execute(
                f"CREATE INDEX offload_jobs_created ON {other}.offload_jobs (enqueued_at, id)"
            )
            # When it is migrated with both schemas on its search_path
            path = old.url.replace(quote(old.name), quote(f"{old.name},{neighbour.name}"))
            assert path != old.url
            backend = PostgresBackend.from_url(path)
            await backend.open(check_schema=False)
            try:
                assert await backend.migrate() == [12, 13]
            finally:
                await backend.close()
            # Then its own are gone, the one a kind's page reads instead is there, and the
            # other schema's index is untouched
            left = await indexes(conn)
            assert not gone & left and "offload_jobs_state_kind_id" in left
            cur = await conn.execute(
                "SELECT 1 FROM pg_indexes WHERE schemaname = %s AND indexname = %s",
                (neighbour.name, "offload_jobs_created"),
            )
            assert await cur.fetchone() is not None
    finally:
        await old.drop()
        await neighbour.drop()


async def test_unreachable_server_is_a_clear_error_at_open() -> None:
    backend = PostgresBackend.from_url("postgresql://postgres@127.0.0.1:1/none?connect_timeout=1")
    with pytest.raises(Exception, match=r"cannot connect to PostgreSQL at 127\.0\.0\.1:1"):
        await backend.open()


async def test_a_call_while_the_server_is_down_fails_by_the_retry_deadline(
    schema: PgSchema,
) -> None:
    # Given a backend whose server goes away (a relay on loopback, then closed),
    proxy = Relay.to_pg()
    url = await proxy.start_for(schema.url)
    backend = PostgresBackend.from_url(url, connect_timeout_s=1.0, retry_deadline_s=1.0)
    await backend.open()
    try:
        assert await backend.stats() == {}
        await proxy.stop()
        # when a call is made, it fails by its deadline (each wait for a connection is
        # bounded by the longer of the connect timeout and the retry deadline), not after
        # the 30 s psycopg_pool waits by default.
        with pytest.raises(BackendError):
            async with asyncio.timeout(20):  # a TimeoutError here fails the test
                await backend.stats()
    finally:
        with contextlib.suppress(Exception):
            await proxy.stop()
        await backend.close()


#: Failed attempts of psycopg_pool to make its lost connection again, after which its next
#: one is a pause of 8 s away (1, 2, 4, then 8 s: it doubles, with 10% of jitter).
POOL_FAILURES = 4
#: How soon after the server's return a call is answered again: a second of waiting on the
#: pool before the server is asked directly, and the new pool's first connection.
BACK_WITHIN_S = 5.0  # (before the pool was renewed: 7.7 to 8.6 s; after: about 1)


async def test_calls_are_answered_soon_after_the_server_returns_from_a_long_outage(
    schema: PgSchema,
) -> None:
    # Given a backend of one pooled connection whose server goes away (a relay, then cut),
    proxy = Relay.to_pg()
    url = await proxy.start_for(schema.url)
    backend = PostgresBackend.from_url(
        url + "&pool_size=1", connect_timeout_s=1.0, retry_deadline_s=0.5
    )
    await backend.open()
    try:
        assert await backend.stats() == {}
        await proxy.stop()
        # and stays away while calls fail, until the pool's attempts to make its lost
        # connection again are a long pause apart (as after an outage of minutes),
        with pytest.raises(BackendError):
            await backend.stats()
        async with asyncio.timeout(30):
            while True:
                if backend.pool.get_stats().get("connections_errors", 0) >= POOL_FAILURES:
                    break
                await asyncio.sleep(0.05)
        # when the server is back,
        await proxy.resume()
        back = time.monotonic()
        # then a readiness ping (what /readyz asks), a claim that waits on the pool while the
        # ping finds the server back, and a read are answered within seconds, not at the
        # pool's next attempt (8 s or more away).
        async with asyncio.timeout(30):
            pinged = asyncio.create_task(backend.ping())
            await asyncio.sleep(POOL_PATIENCE_S / 2)
            assert await claim(backend, "default") == []
            await pinged
            assert await backend.stats() == {}
        took = time.monotonic() - back
        assert took < BACK_WITHIN_S, f"answered {took:.2f}s after the server's return"
    finally:
        await proxy.stop()
        await backend.close()


async def test_a_pool_whole_again_by_itself_is_not_renewed(schema: PgSchema) -> None:
    # Given a backend that noted the server did not answer, whose pool then reconnected by
    # itself (a call got a connection) before any probe found the server back,
    backend = PostgresBackend.from_url(schema.url, connect_timeout_s=1.0)
    await backend.open()
    try:
        backend._unanswered = True
        pool = backend.pool
        assert await backend.stats() == {}
        # when a later probe finds the server (a busy pool, hours later), the pool stays.
        await backend._ask_server()
        assert backend.pool is pool
    finally:
        await backend.close()


async def _two_held(backend: PostgresBackend) -> list[asyncio.Task[None]]:
    """Two pooled connections of `backend`, each held by a statement of 2.5 s (the tasks
    holding them, once both have theirs)."""
    entered = [asyncio.Event(), asyncio.Event()]

    async def hold(inside: asyncio.Event) -> None:
        async with backend._conn() as conn:
            inside.set()
            await conn.execute("SELECT pg_sleep(2.5)")

    holders = [asyncio.create_task(hold(inside)) for inside in entered]
    for inside in entered:
        await asyncio.wait_for(inside.wait(), 30)
    return holders


async def test_a_call_on_a_busy_pool_waits_its_turn_past_the_retry_deadline(
    schema: PgSchema,
) -> None:
    # Given a pool of two connections, both held by long statements,
    backend = PostgresBackend.from_url(
        schema.url + "&pool_size=2", connect_timeout_s=1.0, retry_deadline_s=1.0
    )
    await backend.open()
    try:
        holders = await _two_held(backend)
        # when a call needs one, it waits for its turn (the server answers: it is busy, not
        # gone), longer than the connect timeout and the retry deadline, and is answered.
        assert await backend.stats() == {}
        await asyncio.gather(*holders)
    finally:
        await backend.close()


def _as_role(url: str, role: str) -> str:
    """`url` with `role` as its user (the server's trust auth takes it without a password)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{role}@{parts.netloc.rpartition('@')[2]}"))


async def test_the_apps_role_runs_migrate_on_an_up_to_date_schema_and_its_calls(
    schema: PgSchema,
) -> None:
    # Given a role with the grants the README names (no CREATE in the schema),
    role = f"{schema.name}_app"
    async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as conn:
        await conn.execute(f"CREATE ROLE {role} LOGIN")
        await conn.execute(f"GRANT USAGE ON SCHEMA {schema.name} TO {role}")
        dml = "SELECT, INSERT, UPDATE, DELETE"
        await conn.execute(f"GRANT {dml} ON ALL TABLES IN SCHEMA {schema.name} TO {role}")
        await conn.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema.name} TO {role}")
    url = _as_role(schema.url, role)
    backend = PostgresBackend.from_url(url)
    try:
        await backend.open(check_schema=False)
        # `offload migrate` of an up-to-date schema creates nothing (it needed CREATE: a
        # deploy step run with the app's credentials failed), and the calls work
        assert await backend.migrate() == []
        # (and of a newer schema, a rolled-back deploy's, says so, not "permission denied")
        async with await psycopg.AsyncConnection.connect(schema.url, autocommit=True) as conn:
            await conn.execute("INSERT INTO offload_migrations (version) VALUES (99)")
        with pytest.raises(SchemaError, match="newer than this offload"):
            await backend.migrate()
        async with await psycopg.AsyncConnection.connect(schema.url, autocommit=True) as conn:
            await conn.execute("DELETE FROM offload_migrations WHERE version = 99")
        app = App("least", settings=Settings(url=url))
        app.message("least.ping")(Ping)
        job = await app.enqueue(Ping(n=1))
        assert (await app.get(job.id)) is not None
        await app.close()
    finally:
        await backend.close()
        async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as conn:
            await conn.execute(f"DROP OWNED BY {role}")
            await conn.execute(f"DROP ROLE {role}")


async def test_a_call_waits_its_turn_on_a_pool_at_its_roles_connection_limit(
    schema: PgSchema,
) -> None:
    # Given a role that may hold two connections, and a pool of five of its,
    role = f"{schema.name}_r"
    async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as conn:
        await conn.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 2")
        await conn.execute(f"GRANT ALL ON SCHEMA {schema.name} TO {role}")
        for things in ("TABLES", "SEQUENCES", "FUNCTIONS"):
            await conn.execute(f"GRANT ALL ON ALL {things} IN SCHEMA {schema.name} TO {role}")
    url = _as_role(schema.url, role)
    backend = PostgresBackend.from_url(
        url + "&pool_size=5", connect_timeout_s=1.0, retry_deadline_s=1.0
    )
    try:
        await backend.open()
        # both held by long statements,
        holders = await _two_held(backend)
        # when a call needs a third, which the server refuses the role ("too many connections
        # for role"), it waits for its turn, past the retry deadline: the server answers.
        assert await backend.stats() == {}
        await asyncio.gather(*holders)
    finally:
        await backend.close()
        async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as conn:
            await conn.execute(f"DROP OWNED BY {role}")
            await conn.execute(f"DROP ROLE {role}")


async def test_a_call_under_way_when_the_backend_closes_ends_as_it_would_and_leaks_nothing(
    schema: PgSchema,
) -> None:
    # Given a call under way on a pooled connection,
    backend = PostgresBackend.from_url(schema.url)
    await backend.open()
    inside = asyncio.Event()

    async def call() -> int:
        async with backend._conn() as conn:
            inside.set()
            cur = await conn.execute("SELECT 42 FROM pg_sleep(0.3)")
            row = await cur.fetchone()
            assert row is not None
            return int(row[0])

    task = asyncio.create_task(call())
    await asyncio.wait_for(inside.wait(), 30)
    # when the backend closes meanwhile,
    await backend.close()
    # then the call ends with its own answer (not "not open"), and its connection goes back
    # to the pool it came from, which closes it: none of the backend's is left on the server.
    assert await task == 42
    async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as conn:
        async with asyncio.timeout(30):  # a closed session leaves the list a moment later
            while True:
                cur = await conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                    [schema.name],
                )
                if await cur.fetchone() == (0,):
                    break
                await asyncio.sleep(0.05)


async def test_an_event_stream_asked_for_while_the_server_is_down_is_a_503(
    schema: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (A read of the feed that succeeded within READ_FRESH_S answers for the server without
    # a new one: the hub's own read at the start would, this soon after it.)
    monkeypatch.setattr(events, "READ_FRESH_S", 0.0)
    # Given a web tier open on a server that then goes away,
    proxy = Relay.to_pg()
    url = await proxy.start_for(schema.url)
    app = App("pg-down", settings=Settings(url=url, connect_timeout_s=1.0, retry_deadline_s=1.0))
    app.message("t.ping")(Ping)
    api = create_app(app)
    try:
        async with api.router.lifespan_context(api):
            transport = httpx.ASGITransport(app=api)
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as web:
                assert (await web.get("/v1/jobs")).status_code == 200
                await proxy.stop()
                # when a client opens the stream of its jobs' changes, it is told at once
                # (a 200 could only end the stream: no retry advice, no problem document).
                async with asyncio.timeout(30):  # an open stream would never end here
                    answer = await web.get("/v1/events")
                assert answer.status_code == 503, answer.text
                assert answer.headers["retry-after"] == "5"
                assert answer.headers["content-type"] == "application/problem+json"
                # A submission's 503 says how to send it again safely (a stalled server
                # may still store it); a read's does not.
                submitted = await web.post("/v1/jobs/t.ping", json={"n": 1})
                assert submitted.status_code == 503, submitted.text
                assert "the same Idempotency-Key is stored once" in submitted.json()["detail"]
                read = await web.get("/v1/jobs")
                assert read.status_code == 503
                assert read.json()["detail"] == "the job backend is unavailable; try again shortly"
    finally:
        await proxy.stop()


async def test_transactional_enqueue_exists_only_if_the_transaction_commits(
    app: App, schema: PgSchema
) -> None:
    async with await psycopg.AsyncConnection.connect(schema.url) as conn:
        # Given the user's own transaction that also writes their data,
        async with conn.transaction(force_rollback=True):
            rolled_back = await app.enqueue_in(conn, Ping(n=1))
            # the job is invisible to everyone else until it commits,
            assert await app.get(rolled_back.id) is None
        # when it rolls back, no job is left behind;
        async with conn.transaction():
            committed = await app.enqueue_in(conn, Ping(n=2), idempotency_key="k")
            again = await app.enqueue_in(conn, Ping(n=3), idempotency_key="k")
            assert committed.created and not again.created and again.id == committed.id
    assert await app.get(rolled_back.id) is None
    # and when it commits, the job is there and claimable.
    row = await app.get(committed.id)
    assert row is not None and row.state == "queued"
    backend = app._require_backend()
    leases = await backend.claim(["default"], worker_id="w", lease_for=5, limit=10)
    assert [le.job_id for le in leases] == [committed.id]


class Once(Message):
    n: int = 0


async def test_a_unique_job_enqueued_in_a_rolled_back_transaction_holds_no_key(
    app: App, schema: PgSchema
) -> None:
    app.message("pg.once", unique="queued")(Once)
    async with await psycopg.AsyncConnection.connect(schema.url) as conn:
        # Given a unique job enqueued, and repeated, in the user's transaction that rolls back
        async with conn.transaction(force_rollback=True):
            first = await app.enqueue_in(conn, Once())
            again = await app.enqueue_in(conn, Once())
            assert first.created and (again.id, again.unique_repeat) == (first.id, True)
        # Then the key is free: a job enqueued in a committed transaction holds it
        async with conn.transaction():
            kept = await app.enqueue_in(conn, Once())
            assert kept.created and kept.id != first.id
    assert await app.get(first.id) is None
    assert (await app.enqueue(Once())).id == kept.id


async def _lease_ends(schema: PgSchema) -> dict[str, float]:
    """When each job's lease ends (read without a lock)."""
    async with await psycopg.AsyncConnection.connect(schema.url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT id::text, extract(epoch FROM lease_expires)::float8 FROM offload_jobs"
        )
        return {job_id: float(end) for job_id, end in await cur.fetchall()}


async def test_a_heartbeat_passes_over_a_row_another_transaction_locked(
    app: App, schema: PgSchema
) -> None:
    backend = app._require_backend()
    # Given three running jobs, one of whose rows another transaction holds locked (an
    # operator's SELECT ... FOR UPDATE, left open)
    await backend.enqueue([envelope() for _ in range(3)])
    leases = await claim(backend, limit=3)
    locked, *others = leases
    async with await psycopg.AsyncConnection.connect(schema.url) as conn:
        async with conn.transaction():
            await conn.execute(
                "SELECT id FROM offload_jobs WHERE id = %s FOR UPDATE", (locked.job_id,)
            )
            before = await _lease_ends(schema)
            # When the worker's heartbeat renews them, it does not wait for that row (it
            # waited, and every lease of the heartbeat lapsed while the row stayed locked)
            async with asyncio.timeout(PATIENCE_S):
                answers = await backend.extend(leases, lease_for=60.0)
        # Then the others are renewed, and the locked one is still held, not renewed
        by_id = {a.job_id: a for a in answers}
        assert (by_id[locked.job_id].held, by_id[locked.job_id].renewed) == (True, False)
        after = await _lease_ends(schema)
        for lease in others:
            assert (by_id[lease.job_id].held, by_id[lease.job_id].renewed) == (True, True)
            assert after[lease.job_id] > before[lease.job_id]
        assert after[locked.job_id] == before[locked.job_id]
    # and once the lock is gone, the next heartbeat renews it too
    (again,) = await backend.extend([locked], lease_for=60.0)
    assert (again.held, again.renewed) == (True, True)


async def test_a_heartbeat_waits_a_moment_for_a_row_offload_itself_holds(
    app: App, schema: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A job's own progress writes lock its row for a moment, often: passed over, a job
    # that reports progress in a loop missed most heartbeats, and lapsed (it ran again)
    from offload.brokers.postgres import backend as pg_backend

    monkeypatch.setattr(pg_backend, "EXTEND_LOCK_WAIT_MS", 30_000)  # (a loaded machine)
    backend = app._require_backend()
    await backend.enqueue([envelope() for _ in range(2)])
    busy, idle = await claim(backend, limit=2)
    async with await psycopg.AsyncConnection.connect(schema.url) as conn:
        await conn.execute("BEGIN")
        await conn.execute("SELECT id FROM offload_jobs WHERE id = %s FOR UPDATE", (busy.job_id,))
        beat = asyncio.ensure_future(backend.extend([busy, idle], lease_for=60.0))
        # (once the heartbeat waits for that row, the write holding it ends)
        async with asyncio.timeout(PATIENCE_S):
            while not await _waiting_for_a_lock(schema):  # noqa: ASYNC110 (a server state)
                await asyncio.sleep(0.02)
        await conn.execute("COMMIT")
        answers = await asyncio.wait_for(beat, PATIENCE_S)
    assert [(a.held, a.renewed) for a in answers] == [(True, True), (True, True)]


#: How long the waits below wait for work. Each test ends its wait well within it, by a
#: wake-up: it asserts that it was woken, never how soon (on a loaded machine, any bound in
#: seconds may be missed), and a wait has nothing else that ends it early (no poll).
WAIT_S = 60.0


async def woken(*waits: asyncio.Future[None]) -> None:
    """Return once every wait has returned, well before any could have run out."""
    await asyncio.wait_for(asyncio.gather(*waits), WAIT_S / 2)


async def woken_by_an_enqueue(app: App, schema: PgSchema, wait: Awaitable[None]) -> None:
    """An enqueue by another process's backend ends `wait` (`woken`)."""
    waiter = asyncio.ensure_future(wait)
    other = PostgresBackend.from_url(schema.url)
    await other.open()
    try:
        await other.enqueue([app.envelope(Ping())])
        await woken(waiter)
    finally:
        waiter.cancel()
        await other.close()


async def test_a_settle_and_a_heartbeat_of_shared_jobs_in_opposite_orders_never_deadlock(
    schema: PgSchema,
) -> None:
    from ..contract._support import done

    backend = PostgresBackend.from_url(schema.url)
    await backend.open()
    try:
        for _ in range(25):
            # Given a worker's 40 running jobs, and its settle of them racing its heartbeat
            # of them on another connection, each sent in the order the worker holds them
            # (opposite orders here: the worse case),
            await backend.enqueue([envelope() for _ in range(40)])
            leases = await claim(backend, limit=40)
            assert len(leases) == 40
            outcomes = [done(lease) for lease in reversed(leases)]
            beat = backend.extend(leases, lease_for=30.0)
            # when both run at once, then neither is chosen as a deadlock's victim (each
            # cost a second and an error now and then: a worker's settle was retried)
            await asyncio.gather(beat, backend.settle(outcomes))
    finally:
        await backend.close()


async def test_a_result_with_a_nul_character_fails_its_job_alone(app: App) -> None:
    from offload import Cancel, Job, JobState

    # Given a handler that returns a NUL character for one of the jobs settled together
    # (PostgreSQL's jsonb refuses it: the whole batch's settle failed, again and again),
    # or cancels one, or fails one, with a NUL in what it says,
    @app.handles(Ping, max_attempts=1)
    async def ping(msg: Ping, ctx: Context) -> str:
        if msg.n == 4:
            raise Cancel("bad input a\x00b")  # (a cancel's reason, an error's message too)
        if msg.n == 5:
            raise ValueError("a\x00b")
        return "a\x00b" if msg.n == 0 else "fine"

    jobs = [await app.enqueue(Ping(n=n)) for n in range(6)]
    worker = Worker(app, concurrency=4)
    task = asyncio.create_task(worker.run())
    try:
        done = [await Job(j.id, True, app).wait(30) for j in jobs]
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 30)
    # then that job failed for good, saying why, the others succeeded, and the cancel's
    # reason and the error's message are stored with the NUL written out
    states = [d.state for d in done]
    assert states[:4] == [JobState.FAILED] + [JobState.SUCCEEDED] * 3
    assert done[0].error is not None and "NUL" in done[0].error.message
    assert states[4:] == [JobState.CANCELLED, JobState.DEAD]
    assert done[4].error is not None and done[4].error.message == "bad input a\\x00b"


async def test_listen_notify_wakes_a_waiting_claimer(app: App, schema: PgSchema) -> None:
    backend = app._require_backend()
    assert await backend.claim(["default"], worker_id="w", lease_for=5, limit=1) == []
    await woken_by_an_enqueue(app, schema, backend.wait(["default"], WAIT_S))


async def _sessions(schema: PgSchema, where: str) -> int:
    """Server connections of `schema`'s processes (its application name) matching `where`."""
    async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as conn:
        cur = await conn.execute(
            f"SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND {where}",
            (schema.name,),
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def _listeners(schema: PgSchema) -> int:
    """Server connections of `schema`'s processes whose last statement was a LISTEN."""
    return await _sessions(schema, "query LIKE 'LISTEN %%'")


async def _waiting_for_a_lock(schema: PgSchema) -> bool:
    return await _sessions(schema, "wait_event_type = 'Lock'") > 0


async def test_a_process_that_only_enqueues_listens_to_nothing(schema: PgSchema) -> None:
    # Given a process's backend that has only enqueued
    backend = PostgresBackend.from_url(schema.url)
    await backend.open()
    try:
        for _ in range(3):
            await backend.enqueue([envelope()])
        # Then it holds no LISTEN connection (it would receive a notification per job)
        assert await _listeners(schema) == 0
        # When it claims for the first time, its LISTEN is in place when the claim returns
        assert await claim(backend, "reports") == []
        assert await _listeners(schema) == 1
        # and an enqueue by another process wakes its wait at once
        other = PostgresBackend.from_url(schema.url)
        await other.open()
        try:
            waiter = asyncio.ensure_future(backend.wait(["reports"], WAIT_S))
            await other.enqueue([dataclasses.replace(envelope(), queue="reports")])
            await woken(waiter)
        finally:
            waiter.cancel()
            await other.close()
    finally:
        await backend.close()


async def _listener_pids(schema: PgSchema) -> list[int]:
    async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT pid FROM pg_stat_activity "
            "WHERE application_name = %s AND query LIKE 'LISTEN %%'",
            (schema.name,),
        )
        return [int(row[0]) for row in await cur.fetchall()]


async def test_a_listen_connection_killed_again_and_again_is_a_warning_once_a_minute(
    schema: PgSchema, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="offload.postgres")
    backend = PostgresBackend.from_url(schema.url)
    await backend.open()
    try:
        assert await claim(backend, "reports") == []  # its LISTEN is in place

        def returns() -> int:
            return sum(getattr(r, "action", "") == "pg_listen_back" for r in caplog.records)

        # Given its LISTEN connection killed three times in a row, each time it was back,
        for n in range(3):
            (pid,) = await _listener_pids(schema)
            async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as conn:
                await conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            async with asyncio.timeout(30):
                while returns() <= n or len(await _listener_pids(schema)) != 1:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
    finally:
        await backend.close()
    # then the loss was a warning once (within the minute), the others and the returns
    # debug lines, each loss said all the same.
    said = [r for r in caplog.records if getattr(r, "action", "").startswith("pg_listen")]
    lost = [r.levelno for r in said if r.action == "pg_listen"]  # type: ignore[attr-defined]
    assert lost == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    back = [r.levelno for r in said if r.action == "pg_listen_back"]  # type: ignore[attr-defined]
    assert back[:3] == [logging.INFO, logging.DEBUG, logging.DEBUG]


async def test_a_waiting_claimer_sleeps_through_work_on_other_queues(
    app: App, schema: PgSchema
) -> None:
    # Given a claimer of queue "reports" that found nothing and waits
    backend = app._require_backend()
    assert await backend.claim(["reports"], worker_id="w", lease_for=5, limit=1) == []
    waiter = asyncio.ensure_future(backend.wait(["reports"], WAIT_S))
    other = PostgresBackend.from_url(schema.url)
    await other.open()
    try:
        # When another process enqueues on queue "default", then on "reports"
        await asyncio.sleep(0.2)
        await other.enqueue([app.envelope(Ping())])
        done, _ = await asyncio.wait({waiter}, timeout=0.5)
        assert not done  # not woken by the other queue's NOTIFY
        await other.enqueue([dataclasses.replace(app.envelope(Ping()), queue="reports")])
        # Then only the second wakes it
        await woken(waiter)
    finally:
        waiter.cancel()
        await other.close()


async def test_wake_ups_of_another_schema_in_the_database_wake_nobody_here() -> None:
    # Given two offload schemas in one database, their names quoted ones, the second's
    # the first's and ":default" (a naive split of its wake-ups would name the first's
    # queue "default"), and a process of the first waiting for work on "default" and for
    # changes in its feed
    require_pg()
    here = PgSchema(name=f"Offload_A_{secrets.token_hex(4)}")
    there = PgSchema(name=f"{here.name}:default")
    await here.create()
    await there.create()
    mine = PostgresBackend.from_url(here.url)
    theirs = PostgresBackend.from_url(there.url)
    await mine.open()
    await theirs.open()
    waits: list[asyncio.Future[None]] = []
    try:
        # (the first wait has the listener follow the feed too; once it listens again it
        # wakes everything, as anything may have happened, and a claim and a read of the
        # feed take that in)
        before = mine._versions["feed"]
        await mine.wait_changes(0.01)
        async with asyncio.timeout(5):
            while mine._versions["feed"] == before:  # noqa: ASYNC110 (no event to wait on)
                await asyncio.sleep(0.01)
        assert await claim(mine, "default") == []
        await mine.changes_since(0)  # (an empty claim wakes no feed reader)
        work = asyncio.ensure_future(mine.wait(["default"], WAIT_S))
        feed = asyncio.ensure_future(mine.wait_changes(WAIT_S))
        waits += [work, feed]
        # When the other schema stores jobs on "default" (its feed moves too)
        for _ in range(3):
            await theirs.enqueue([dataclasses.replace(envelope(), queue="default")])
            await asyncio.sleep(0.1)
        # Then neither wait ends; one job in this schema ends both
        assert not work.done() and not feed.done()
        await mine.enqueue([dataclasses.replace(envelope(), queue="default")])
        await woken(work, feed)
    finally:
        for wait in waits:
            wait.cancel()
        await mine.close()
        await theirs.close()
        await there.drop()
        await here.drop()


async def test_the_feed_is_followed_from_the_first_wait_and_wakes_it(
    app: App, schema: PgSchema
) -> None:
    backend = app._require_backend()
    assert isinstance(backend, PostgresBackend)
    assert not backend._feed_wanted  # a worker-only process does not LISTEN to the feed
    # The first wait switches the listener over; once it listens again it bumps the feed's
    # version, so a waiter re-reads (a change made meanwhile would otherwise be missed).
    before = backend._versions["feed"]
    await backend.wait_changes(10.0)
    assert backend._feed_wanted
    async with asyncio.timeout(5):
        while backend._versions["feed"] == before:  # noqa: ASYNC110 (no event to wait on)
            await asyncio.sleep(0.01)
    backend._seen["feed"] = backend._versions["feed"]
    await woken_by_an_enqueue(app, schema, backend.wait_changes(WAIT_S))


async def test_feed_holds_back_changes_behind_an_uncommitted_position(
    app: App, schema: PgSchema
) -> None:
    backend = app._require_backend()
    assert isinstance(backend, PostgresBackend)
    start = await backend.last_seq()
    slow = app.envelope(Ping(n=1))
    async with await psycopg.AsyncConnection.connect(schema.url) as conn:
        # Given a transaction that took a feed position but has not committed,
        async with conn.transaction():
            await backend.enqueue_in(conn, [slow])
            # when a later position commits first,
            fast = (await app.enqueue(Ping(n=2))).id
            # then the feed does not run past the gap, nor does a reader skipping it all,
            assert await backend.changes_since(start) == []
            assert await backend.feed_head(start) == start
        # and once the gap fills, both arrive in position order (and the head is past both).
        changes: list[Change] = await backend.changes_since(start)
    assert [c.job_id for c in changes] == [slow.id, fast]
    assert await backend.feed_head(start) == changes[-1].seq


async def test_an_owner_stream_replaying_past_an_uncommitted_position_loses_no_change(
    app: App, schema: PgSchema
) -> None:
    backend = app._require_backend()
    assert isinstance(backend, PostgresBackend)
    backend.gap_wait_s = 60.0  # no reader takes the open position as rolled back meanwhile
    hub = Hub(app, app.last_seq)
    await hub.start()
    start = await backend.last_seq()
    slow = app.envelope(Ping(n=1), owner="alice")
    stream = owner_stream(hub, app, "alice", start, lambda row: {"id": row.id})

    async def next_event() -> bytes:
        while (chunk := await stream.__anext__()).startswith((b"retry:", b":")):
            pass
        return chunk

    pending: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    try:
        async with await psycopg.AsyncConnection.connect(schema.url) as conn:
            # Given alice's job that took a feed position but has not committed, and her
            # next job, committed at the position after it,
            async with conn.transaction():
                await backend.enqueue_in(conn, [slow])
                fast = (await app.enqueue(Ping(n=2), owner="alice")).id
                # when her stream resumes from before both (its replay reads the store now),
                pending = asyncio.ensure_future(next_event())
                done, _ = await asyncio.wait({pending}, timeout=1.0)
                # then it does not replay the later change past the gap,
                assert not done, pending.result()
            # and once the first commits, both arrive, in position order.
            async with asyncio.timeout(10):
                events = [await pending, await next_event()]
    finally:
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
            await pending
        await stream.aclose()  # type: ignore[attr-defined]
        await hub.stop()
    assert [json.loads(e.split(b"data: ")[1])["id"] for e in events] == [slow.id, fast]


async def test_workers_survive_terminated_connections_and_lose_no_job(
    app: App, schema: PgSchema
) -> None:
    ran: list[int] = []

    @app.handles(Ping)
    async def handle(msg: Ping, ctx: Context) -> int:
        await asyncio.sleep(0.002)
        ran.append(msg.n)
        return msg.n

    jobs = await app.enqueue_many([Ping(n=i) for i in range(600)])
    worker = Worker(app, concurrency=8, lease_s=2.0)
    task = asyncio.create_task(worker.run())
    killer = await psycopg.AsyncConnection.connect(PG_URL, autocommit=True)
    killed = 0
    try:
        # While the worker runs, kill every server connection of this app, three times.
        for _ in range(3):
            await asyncio.sleep(0.3)
            cur = await killer.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (schema.name,),
            )
            killed += sum(1 for (ok,) in await cur.fetchall() if ok)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            stats = await app.stats()
            left = stats.get("default", {"queued": 0, "running": 0, "scheduled": 0})
            if left["queued"] + left["running"] + left["scheduled"] == 0:
                break
            await asyncio.sleep(0.2)
    finally:
        await killer.close()
        worker.request_stop()
        await asyncio.wait_for(task, 30)
    assert killed >= 3
    assert sum(ran.count(n) > 0 for n in range(600)) == 600
    states = [getattr(await app.get(j.id), "state", None) for j in jobs]
    assert states.count("succeeded") == 600
    assert set(ran) == set(range(600))  # at least once each; a lost reply may repeat one


async def test_prune_deletes_a_long_history_in_chunks(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A million finished jobs were one DELETE holding every row (and back vacuum) for
    # minutes: chunks of PRUNE_CHUNK_ROWS, each its own transaction, until one is short
    from offload.brokers.postgres import backend as backend_module

    monkeypatch.setattr(backend_module, "PRUNE_CHUNK_ROWS", 3)
    backend = app._require_backend()
    envelopes = [app.envelope(Ping(n=n)) for n in range(7)]
    await backend.enqueue(envelopes)
    leases = await backend.claim(["default"], worker_id="w", lease_for=5, limit=7)
    await backend.settle([Outcome(lease=le, state=JobState.SUCCEEDED, result=1) for le in leases])
    statements: list[str] = []
    fetch = backend._fetch

    async def counted(query: str, params: Any) -> Any:
        statements.append(query)
        return await fetch(query, params)

    monkeypatch.setattr(backend, "_fetch", counted)
    await asyncio.sleep(0.05)
    assert await backend.prune(0.01) == 7
    assert len(statements) == 3  # 3 + 3 + 1
    for e in envelopes:
        assert await backend.get(e.id) is None
        assert await backend.changes_since(0, job_id=e.id) == []


async def test_prune_removes_old_finished_jobs_but_keeps_dead_ones(app: App) -> None:
    backend = app._require_backend()
    done, dead = app.envelope(Ping(n=1)), app.envelope(Ping(n=2))
    await backend.enqueue([done, dead])
    leases = {
        le.job_id: le
        for le in await backend.claim(["default"], worker_id="w", lease_for=5, limit=2)
    }
    await backend.settle(
        [
            Outcome(lease=leases[done.id], state=JobState.SUCCEEDED, result=1),
            Outcome(lease=leases[dead.id], state=JobState.DEAD, error={}),
        ]
    )
    assert await backend.prune(3600) == 0  # too young
    await asyncio.sleep(0.05)
    assert await backend.prune(0.01) == 1
    assert await backend.get(done.id) is None
    assert await backend.changes_since(0, job_id=done.id) == []
    assert getattr(await backend.get(dead.id), "state", None) == "dead"


async def test_a_float_stored_as_a_long_integer_before_reads_as_a_float(
    app: App, schema: PgSchema
) -> None:
    # Given a result jsonb wrote as a 79-bit integer (a float, 6.02e+23, stored before
    # offload wrote such floats out in full),
    job = await app.enqueue(Ping(n=1))
    async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as conn:
        await conn.execute(
            f"UPDATE {schema.name}.offload_jobs SET state = 'succeeded', finished_at = now(),"
            " result = '{\"avogadro\": 602214076000000000000000}' WHERE id = %s",
            (job.id,),
        )
    # then it reads back as the float it was, and the API can answer with it.
    assert (await job.status()).result == {"avogadro": 6.02214076e23}
    api = create_app(app)
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as web:
        answer = await web.get(f"/v1/jobs/{job.id}")
    assert answer.status_code == 200, answer.text
    assert answer.json()["result"] == {"avogadro": 6.02214076e23}


async def test_a_cancel_that_a_settle_overtakes_between_its_two_statements_still_cancels(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a running job whose failed attempt settles `retrying` just as the cancel's first
    # statement found it running (here: its second statement lands the settle itself),
    job = await app.enqueue(Ping(n=1))
    backend = app._require_backend()
    (lease,) = await backend.claim(["default"], worker_id="w", lease_for=30, limit=1)
    overtaken = (
        "WITH moved AS (UPDATE offload_jobs SET state = 'retrying', lease_token = NULL"
        " WHERE id = %(id)s AND state = 'running' RETURNING id)"
        " SELECT * FROM offload_jobs WHERE false AND %(now)s::timestamptz IS NULL"
    )
    monkeypatch.setitem(Q, "cancel_running", overtaken)
    # the cancel reads the job again and cancels it where it now waits (it answered 409
    # "already retrying", and the job ran again).
    row = await backend.cancel(job.id)
    assert row.state == "cancelled"
    assert (await job.status()).state == "cancelled"
    assert lease.envelope.id == job.id


async def test_a_bulk_cancel_that_a_settle_overtakes_between_its_statements_still_cancels(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As for one job's cancel: the job settles `retrying` after the first statement found
    # it running (here: the second statement lands the settle itself, flagging nothing).
    job = await app.enqueue(Ping(n=1))
    backend = app._require_backend()
    await backend.claim(["default"], worker_id="w", lease_for=30, limit=1)
    moving = (
        "UPDATE offload_jobs SET state = 'retrying', lease_token = NULL"
        " WHERE id = ANY(%(ids)s::uuid[]) AND state = 'running'"
        " AND (%(now)s::timestamptz IS NULL OR true)"
    )
    monkeypatch.setitem(Q, "cancel_many_running", moving)
    # The job ends cancelled (it stayed retrying, and ran again).
    assert await app.cancel_jobs(offload.JobFilter(queue="default")) >= 1
    assert (await job.status()).state == "cancelled"


async def test_a_host_whose_clock_runs_ahead_waits_out_a_rate_by_the_servers_clock(
    schema: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = PostgresBackend.from_url(schema.url)
    await backend.open()
    try:
        # Given a worker on a host whose clock runs 30 s ahead of the server's, and a kind
        # started once a minute that has started now
        monkeypatch.setattr(backend, "_clock_now", lambda: time.time() + 30.0)
        await backend.declare_limits(
            [KindLimits(kind="pg.rated", queue="q", max_running=None, rate=1, per_s=60.0)]
        )
        await backend.enqueue([envelope(kind="pg.rated") for _ in range(2)])
        claimed = await backend.claim_gated(["q"], worker_id="w", lease_for=60.0, limit=10)
        assert len(claimed) == 1
        assert await backend.claim_gated(["q"], worker_id="w", lease_for=60.0, limit=10) == []
        # then its wait for the next start is a minute by the server's clock, as the claim
        # counts it (by its own, the start was due in 30 s: it claimed again and again)
        held, due = backend._held_back
        assert held and due is not None
        assert 55.0 < due - backend._clock_now() <= 60.0
    finally:
        await backend.close()


async def test_the_longest_owner_and_key_are_stored_and_a_longer_owner_refused(app: App) -> None:
    # An owner of a thousand characters failed the enqueue on PostgreSQL alone (its index of
    # owners takes 2,704 bytes a row), as the backend's error: a 503 over HTTP.
    widest = "".join(chr(0x20000 + i) for i in range(MAX_OWNER_LENGTH))  # 4 bytes each
    key = "".join(chr(0x21000 + i) for i in range(255))  # (random: none compresses)
    job = await app.enqueue(Ping(n=1), owner=widest, idempotency_key=key)
    assert job.created
    again = await app.enqueue(Ping(n=1), owner=widest, idempotency_key=key)
    assert again.id == job.id and not again.created
    assert [r.id for r in await app.list_jobs(owner=widest)] == [job.id]
    with pytest.raises(ValueError, match=f"at most {MAX_OWNER_LENGTH}"):
        await app.enqueue(Ping(n=1), owner=widest + "x")
    assert len(await app.list_jobs(owner=None)) == 1


async def test_a_nul_character_in_a_filter_is_a_422_not_a_backend_outage(app: App) -> None:
    # PostgreSQL cannot hold a NUL character: a filter holding one failed its query, and
    # was answered as the backend out of reach (503, Retry-After), counted as a server
    # error on the alerts' metric, at any caller's request.
    api = create_app(app)
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as web:
        answer = await web.get("/v1/jobs", params={"kind": "a\x00b"})
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    # and from Python, a filter or a queue holding one is refused before any query
    with pytest.raises(ValueError, match="NUL"):
        JobFilter(kind="a\x00b")
    with pytest.raises(ConfigurationError, match="NUL"):
        await app.resume("a\x00b")
    for name in ("a\x00b", " sp", "x" * 5000, "a\nb"):  # (nor any name no queue may have)
        with pytest.raises(ConfigurationError):
            await app.pause(name)
    assert set(await app.stats()) <= {"default", "offload.notify"}
    with pytest.raises(ConfigurationError, match="NUL"):
        await app.purge("a\x00b")
    with pytest.raises(ValueError, match="NUL"):
        await app.enqueue(Ping(n=1), idempotency_key="a\x00b")
    with pytest.raises(ValueError, match="at most 255"):  # (nor a few thousand characters)
        await app.enqueue(Ping(n=1), idempotency_key="k" * 3000)
    assert await app.deliveries("a\x00b") == []
    assert await app.changes_since(0, owner="a\x00b") == []


async def test_a_record_written_while_its_job_is_deleted_is_not_kept(schema: PgSchema) -> None:
    from offload.brokers import open_backend

    backend = open_backend(schema.url)
    await backend.open()
    try:
        env = envelope()
        await backend.enqueue([env])
        (lease,) = await claim(backend)
        await backend.settle([done(lease, 1)])
        # Given an operator's delete of a finished job, under way in its transaction,
        async with await psycopg.AsyncConnection.connect(schema.url) as conn:
            await conn.execute("DELETE FROM offload_jobs WHERE id = %s::uuid", (env.id,))
            # when a delivery of that job records its attempt meanwhile,
            record = asyncio.ensure_future(
                backend.remember(env.id, "offload.deliveries.email", [{"target": "a@b.example"}])
            )
            await asyncio.sleep(0.3)
            # it waits for the delete (it went through at once, and was kept after it),
            assert not record.done()
            await conn.commit()
        await asyncio.wait_for(record, 30)
        # then nothing of it is kept once the delete has committed
        assert await backend.recall(env.id, "offload.deliveries.email") == (False, None)
        # (and an id no job can have is kept nowhere, as on the other backends)
        await backend.remember("not-a-uuid", "step", 1)
        assert await backend.recall("not-a-uuid", "step") == (False, None)
    finally:
        await backend.close()
