"""A large `enqueue_many` on PostgreSQL, sent chunk by chunk as it is stamped (one
transaction of pipelined statements): stored whole or not at all, each job once, even when
the connection is lost between chunks, with its claim checks and its producer span."""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import psycopg
import pytest

from offload import App, Message, Settings
from offload.app import STREAM_CHUNK
from offload.brokers.base import Capability
from offload.brokers.postgres import PostgresBackend
from offload.contract import Envelope
from offload.errors import BackendError
from offload.stores.blobs import FileBlobStore

from ..contract._support import envelope
from ..services import PG_URL, PgSchema
from ..tracing_support import in_memory

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


class Note(Message):
    text: str = ""


@pytest.fixture
async def app(schema: PgSchema, tmp_path: Path) -> AsyncIterator[App]:
    settings = Settings(url=schema.url, blobs_url=str(tmp_path / "blobs"), claim_check_bytes=256)
    app = App("pg-streamed", settings=settings)
    app.message("pg.note", queue="notes")(Note)
    async with app:
        yield app


async def _counts(schema: PgSchema) -> tuple[int, int]:
    """Jobs and feed entries stored in the schema."""
    async with await psycopg.AsyncConnection.connect(schema.url) as conn:
        cur = await conn.execute(
            "SELECT (SELECT count(*) FROM offload_jobs), (SELECT count(*) FROM offload_events)"
        )
        row = await cur.fetchone()
    assert row is not None
    return row[0], row[1]


class Counted:
    """The backend's `enqueue_stream`, counting the chunks it is given."""

    def __init__(self, backend: PostgresBackend) -> None:
        self.backend, self.chunks = backend, 0
        self.real = backend.enqueue_stream

    async def __call__(self, chunks: AsyncIterator[Sequence[Envelope]]) -> object:
        async def counted() -> AsyncIterator[Sequence[Envelope]]:
            async for chunk in chunks:
                self.chunks += 1
                yield chunk

        return await self.real(counted())


async def test_a_large_batch_is_stored_whole_in_chunks_of_one_moment(
    app: App, schema: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = app._require_backend()
    assert Capability.STREAMED_ENQUEUE in backend.capabilities
    counted = Counted(backend)  # type: ignore[arg-type]
    monkeypatch.setattr(backend, "enqueue_stream", counted)
    n = 2 * STREAM_CHUNK + 500
    # Given a batch of two and a half chunks, one of them a payload over the threshold,
    messages = [Note(text=str(i)) for i in range(n)]
    messages[STREAM_CHUNK + 7] = Note(text="x" * 1000)
    # when it is enqueued,
    jobs = await app.enqueue_many(messages, priority=2)
    # then it went in three chunks, and every job is stored once, with its feed entry, in
    # the order of the messages and at one moment;
    assert counted.chunks == 3
    assert all(job.created for job in jobs) and len({job.id for job in jobs}) == n
    assert [job.id for job in jobs] == sorted(job.id for job in jobs)
    assert await _counts(schema) == (n, n)
    async with await psycopg.AsyncConnection.connect(schema.url) as conn:
        cur = await conn.execute("SELECT job_id::text FROM offload_events ORDER BY seq")
        assert [r[0] for r in await cur.fetchall()] == [job.id for job in jobs]
    first, big, last = [await app.get(jobs[i].id) for i in (0, STREAM_CHUNK + 7, n - 1)]
    assert first is not None and big is not None and last is not None
    assert first.enqueued_at == last.enqueued_at and last.priority == 2
    assert last.payload == {"text": str(n - 1)}
    # the large payload went to the blob store, as a single enqueue's would.
    keys = getattr(app.blobs, "keys")  # noqa: B009 - the folder store lists its keys
    assert [k async for k, _ in keys("payloads")] == [f"payloads/{big.id}.json"]


class Filling(FileBlobStore):
    """A folder blob store with room for `room` more blobs: then the disk is full."""

    def __init__(self, root: Path, room: int) -> None:
        super().__init__(root)
        self.room = room

    async def put(self, key: str, data: bytes, content_type: str | None = None) -> str:
        if self.room == 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= 1
        return await super().put(key, data, content_type)


async def test_a_failure_in_a_later_chunk_stores_nothing_and_leaves_no_payload(
    app: App, schema: PgSchema, tmp_path: Path
) -> None:
    blobs = Filling(tmp_path / "blobs", room=1)
    app._blobs = blobs
    # Given a batch whose first chunk checks in a payload and whose third cannot (the blob
    # store is full by then),
    messages = [Note(text=str(i)) for i in range(3 * STREAM_CHUNK)]
    messages[3] = messages[2 * STREAM_CHUNK + 3] = Note(text="x" * 1000)
    # when it is enqueued, the error is the caller's,
    with pytest.raises(OSError, match="No space left"):
        await app.enqueue_many(messages)
    # and nothing is stored: no job, no feed entry, and the first chunk's payload is gone.
    assert await _counts(schema) == (0, 0)
    assert [k async for k, _ in blobs.keys("payloads")] == []


async def _chunks(
    batches: Sequence[list[Envelope]], between: AsyncIterator[None]
) -> AsyncIterator[Sequence[Envelope]]:
    """Each batch in turn, running the next step of `between` after each but the last."""
    for i, batch in enumerate(batches):
        yield batch
        if i < len(batches) - 1:
            await anext(between)


async def test_a_connection_lost_between_chunks_stores_each_job_once(
    schema: PgSchema, caplog: pytest.LogCaptureFixture
) -> None:
    backend = PostgresBackend.from_url(schema.url)
    await backend.open()
    killed: list[bool] = []

    async def kill_once() -> AsyncIterator[None]:
        # After the first chunk went out, the server ends every connection of this
        # backend (a failover, an administrator's pg_terminate_backend).
        async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as killer:
            cur = await killer.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (schema.name,),
            )
            killed.extend(ok for (ok,) in await cur.fetchall())
        yield
        while True:
            yield

    try:
        batches = [[envelope() for _ in range(500)] for _ in range(3)]
        results = await backend.enqueue_stream(_chunks(batches, kill_once()))
    finally:
        await backend.close()
    # The attempt was lost with its connection; the resend sent the first chunk again and
    # then the rest: every job is stored once, as created, with one feed entry.
    assert any(killed)
    assert [r for r in caplog.records if getattr(r, "action", None) == "backend_retry"]
    ids = [e.id for batch in batches for e in batch]
    assert [(r.id, r.created) for r in results] == [(i, True) for i in ids]
    assert await _counts(schema) == (1500, 1500)


async def test_a_chunk_that_conflicts_undoes_the_chunks_before_it(schema: PgSchema) -> None:
    backend = PostgresBackend.from_url(schema.url)
    await backend.open()
    try:
        stored = envelope()
        await backend.enqueue([stored])
        # Given chunks of which the last carries an id already stored,
        batches = [[envelope() for _ in range(300)] for _ in range(2)] + [[envelope(), stored]]

        async def nothing() -> AsyncIterator[None]:
            while True:
                yield

        # then the stream fails and stores none of its jobs.
        with pytest.raises(BackendError, match="duplicate key"):
            await backend.enqueue_stream(_chunks(batches, nothing()))
    finally:
        await backend.close()
    assert await _counts(schema) == (1, 1)


async def test_an_error_of_the_chunks_is_raised_as_it_is_and_stores_nothing(
    schema: PgSchema,
) -> None:
    backend = PostgresBackend.from_url(schema.url)
    await backend.open()
    # Given chunks whose maker fails after two were sent, with an error that looks like a
    # lost connection (a blob store of the caller's own on PostgreSQL, say),
    lost = psycopg.OperationalError("the caller's own connection was lost")

    async def failing() -> AsyncIterator[Sequence[Envelope]]:
        yield [envelope() for _ in range(10)]
        yield [envelope() for _ in range(10)]
        raise lost

    try:
        # then that very error is the caller's, not tried again as the backend's own,
        with pytest.raises(psycopg.OperationalError) as raised:
            await backend.enqueue_stream(failing())
    finally:
        await backend.close()
    assert raised.value is lost
    # and nothing of the batch is stored.
    assert await _counts(schema) == (0, 0)


async def test_a_streamed_batch_has_one_producer_span_that_every_job_carries(app: App) -> None:
    with in_memory() as spans:
        jobs = await app.enqueue_many([Note(text=str(i)) for i in range(STREAM_CHUNK + 1)])
        rows = [await app.get(jobs[0].id), await app.get(jobs[-1].id)]
    (send,) = [s for s in spans.get_finished_spans() if s.name.startswith("send")]
    assert send.name == "send notes" and send.attributes is not None
    assert send.attributes["messaging.batch.message_count"] == STREAM_CHUNK + 1
    assert send.attributes["offload.job.kind"] == "pg.note"
    ctx = send.get_span_context()
    assert ctx is not None
    for row in rows:
        assert row is not None and row.trace is not None
        assert row.trace["traceparent"].split("-")[2] == format(ctx.span_id, "016x")
