"""`App.enqueue_sync` as a threaded WSGI server calls it, on every backend: once its first
call has opened the loop thread's backend, a backend with Capability.BLOCKING_ENQUEUE (an
SQLite file, Redis) stores in the calling thread with no hop to the loop thread; the others
hop as before. Either way each call is stored once and answered as `enqueue` would be."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import offload._sync
from offload import App, JobState, Message, Settings
from offload._sync import SyncRunner
from offload.brokers import Capability, open_backend
from offload.errors import BackendError

from .conftest import BackendParam

pytestmark = pytest.mark.anyio

#: Request threads calling at once, and the calls each makes.
THREADS, CALLS = 8, 20


class Item(Message):
    n: int


class Once(Message):
    name: str


class Big(Message):
    text: str


@pytest.fixture
def app(backend_url: str, tmp_path: Path) -> Iterator[App]:
    settings = Settings(
        url=backend_url,
        blobs_url=str(tmp_path / "blobs"),
        secret_key=b"k" * 32,
        claim_check_bytes=1024,
    )
    app = App("blocking", settings=settings)
    app.message("blocking.item", queue="items")(Item)
    app.message("blocking.once", queue="items", unique="queued")(Once)
    app.message("blocking.big", queue="items")(Big)
    try:
        yield app
    finally:
        asyncio.run(app.close())


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls that went to the loop thread (one entry per call)."""
    counted: list[int] = []
    call = SyncRunner.call

    def counting(self: SyncRunner[Any], fn: Callable[[Any], Any]) -> Any:
        counted.append(1)
        return call(self, fn)

    monkeypatch.setattr(SyncRunner, "call", counting)
    return counted


def blocking(url: str) -> bool:
    return Capability.BLOCKING_ENQUEUE in open_backend(url).capabilities


def test_many_threads_store_each_call_once(
    app: App, backend_url: str, backend_param: BackendParam, hops: list[int]
) -> None:
    # Given an App used only from synchronous code, opened by a first call
    first = app.enqueue_sync(Item(n=-1))
    assert len(hops) == 1
    start = threading.Barrier(THREADS)

    def request(t: int) -> list[tuple[str, bool, int]]:
        start.wait(timeout=30)
        out = []
        for c in range(CALLS):
            n = t * CALLS + c
            job = app.enqueue_sync(Item(n=n))
            out.append((job.id, job.created, n))
        return out

    # When THREADS threads enqueue at once
    with ThreadPoolExecutor(THREADS) as pool:
        answers = [a for part in pool.map(request, range(THREADS)) for a in part]

    # Then each call made its own job, stored once with its own payload and one feed entry
    assert len({job_id for job_id, _, _ in answers}) == THREADS * CALLS
    assert all(created for _, created, _ in answers)
    # in the calling threads where the backend can (no hop), else on the loop thread
    assert len(hops) == 1 + (0 if blocking(backend_url) else THREADS * CALLS)

    async def stored() -> None:
        async with App("reader", settings=app.settings) as reader:
            for job_id, _, n in answers:
                row = await reader.get(job_id)
                assert row is not None and row.payload == {"n": n}
                assert row.state is JobState.QUEUED
            entries: dict[str, int] = {}
            seq = 0
            while changes := await reader._require_backend().changes_since(seq, limit=500):
                for change in changes:
                    entries[change.job_id] = entries.get(change.job_id, 0) + 1
                seq = changes[-1].seq
            assert {job_id: entries.get(job_id) for job_id, _, _ in answers} == {
                job_id: 1 for job_id, _, _ in answers
            }
            assert entries[first.id] == 1

    if backend_param.cross_process:  # else the loop thread's backend holds the only copy
        asyncio.run(stored())


def test_a_replayed_key_and_a_unique_repeat_answer_the_first_job(app: App) -> None:
    app.enqueue_sync(Item(n=0))  # opens the loop thread's backend
    keyed = app.enqueue_sync(Item(n=1), idempotency_key="k-1")
    again = app.enqueue_sync(Item(n=2), idempotency_key="k-1")
    assert keyed.created and not again.created and again.id == keyed.id
    once = app.enqueue_sync(Once(name="nightly"))
    repeat = app.enqueue_sync(Once(name="nightly"))
    assert once.created and not repeat.created and repeat.id == once.id
    assert repeat.unique_repeat
    assert keyed.status_sync().state is JobState.QUEUED


def test_a_large_payload_is_checked_in_through_the_loop_thread(
    app: App, backend_param: BackendParam, hops: list[int]
) -> None:
    app.enqueue_sync(Item(n=0))
    before = len(hops)
    job = app.enqueue_sync(Big(text="x" * 4096))  # over claim_check_bytes: the blob store
    assert job.created and len(hops) == before + 1
    if not backend_param.cross_process:
        return

    async def payload() -> dict[str, Any]:
        async with App("reader", settings=app.settings) as reader:
            reader.message("blocking.big", queue="items")(Big)
            row = await reader.get(job.id)
            assert row is not None
            return row.payload

    assert "text" not in asyncio.run(payload())  # a claim check in its place


#: The backends with Capability.BLOCKING_ENQUEUE, for the tests of the backend call itself.
on_blocking_backends = pytest.mark.parametrize(
    "backend_name",
    [
        pytest.param("sqlite", id="sqlite"),
        pytest.param("redis", marks=pytest.mark.redis, id="redis"),
    ],
    indirect=True,
)


@pytest.fixture
async def blocking_backend(backend_url: str) -> AsyncIterator[tuple[Any, App]]:
    """An open backend with Capability.BLOCKING_ENQUEUE, and an App that makes envelopes."""
    assert blocking(backend_url)
    backend = open_backend(backend_url)
    await backend.open()
    app = App("envelopes", settings=Settings(url=backend_url))
    app.message("blocking.item", queue="items")(Item)
    try:
        yield backend, app
    finally:
        await backend.close()


@on_blocking_backends
async def test_a_closed_backend_refuses_a_blocking_enqueue(
    blocking_backend: tuple[Any, App],
) -> None:
    backend, app = blocking_backend
    (result,) = await asyncio.to_thread(backend.enqueue_sync, [app.envelope(Item(n=1))])
    assert result.created
    await backend.close()
    with pytest.raises(BackendError, match="not open"):
        await asyncio.to_thread(backend.enqueue_sync, [app.envelope(Item(n=2))])


def test_close_waits_for_calls_not_for_the_backends_own_tasks(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an App a synchronous caller opened (PostgreSQL's pool workers and listener run
    # on the loop thread), and a grace for calls in flight longer than any test
    monkeypatch.setattr(offload._sync, "DEFAULT_STOP_GRACE_S", 3600.0)
    job = app.enqueue_sync(Item(n=1))
    assert job.status_sync().state is JobState.QUEUED
    # When it closes, with no call in flight
    closing = ThreadPoolExecutor(1)
    try:
        # Then the close neither waits out the grace on the backend's own tasks nor fails
        # (their cancellation used to break the backend's close)
        closing.submit(asyncio.run, app.close()).result(timeout=60)
    finally:
        closing.shutdown(wait=False)


@on_blocking_backends
async def test_threads_that_come_and_go_share_connections(
    blocking_backend: tuple[Any, App], backend_url: str
) -> None:
    # A server with a thread per request (Flask's development server): its threads end,
    # their connections do not pile up.
    backend, app = blocking_backend
    for n in range(20):
        envelope = app.envelope(Item(n=n))
        (result,) = await asyncio.to_thread(_in_new_thread, backend.enqueue_sync, [envelope])
        assert result.created
    if backend_url.startswith("sqlite"):
        assert len(backend._blocking_idle) == 1
    else:  # one blocking client, its pool holding one connection
        client, _ = backend._blocking_client()
        assert len(client.connection_pool._connections) == 1


def _in_new_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` on a thread started for it alone, which then ends."""
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn(*args)))
    thread.start()
    thread.join(timeout=60)
    return out[0]
