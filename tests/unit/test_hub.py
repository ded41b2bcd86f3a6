"""The change-feed hub outlives backend errors: every stream of a web process depends on it;
and a job's stream ends with its final change, whenever that lands."""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from offload._ids import uuid7
from offload.brokers.base import Change
from offload.brokers.sqlite import SQLiteBackend
from offload.contract import Envelope, JobRow, JobState
from offload.errors import BackendError
from offload.web.events import Hub, job_stream

from ..feed_support import Through

pytestmark = pytest.mark.anyio


def _job(owner: str) -> Envelope:
    now = time.time()
    return Envelope(
        id=uuid7(), kind="k", version=1, payload={}, queue="q", run_at=now, enqueued_at=now,
        owner=owner,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def running_hub(
    tmp_path: Path, wrap: Callable[[SQLiteBackend], Any] | None = None, **options: Any
) -> AsyncIterator[tuple[Hub, Any, SQLiteBackend]]:
    """A started hub of a real SQLite store, seen through `wrap` where one is given (the hub,
    what it reads, the store); stopped, and the store closed, at the end."""
    store = SQLiteBackend(str(tmp_path / "jobs.db"))
    await store.open()
    feed = store if wrap is None else wrap(store)
    hub = Hub(feed, feed.last_seq, **options)
    await hub.start()
    try:
        yield hub, feed, store
    finally:
        await hub.stop()
        await store.close()


async def test_the_hub_survives_a_backend_outage_and_goes_on_fanning_out(
    tmp_path: Path,
) -> None:
    # Given a hub watching a real SQLite store, with a subscriber,
    async with running_hub(tmp_path) as (hub, _, store):
        with hub.subscribe(owner="alice") as sub:
            # when the store goes away under it while it waits (reads fail) and comes back,
            await asyncio.sleep(0.1)
            await store.close()
            await asyncio.sleep(0.1)
            await store.open()
            job = _job("alice")
            await store.enqueue([job, _job("bob")])
            # then the watcher is still alive and the subscriber gets alice's change only.
            change = await asyncio.wait_for(sub.queue.get(), 5)
            assert change.job_id == job.id and sub.queue.empty()


class Reads(Through):
    """A real store, with a count of the hub's reads of the whole feed."""

    def __init__(self, store: SQLiteBackend) -> None:
        super().__init__(store)
        self.whole_feed_reads = 0

    async def changes_since(
        self, seq: int, *, job_id: str | None = None, owner: str | None = None, limit: int = 500
    ) -> list[Change]:
        if job_id is None and owner is None:
            self.whole_feed_reads += 1
        return await super().changes_since(seq, job_id=job_id, owner=owner, limit=limit)


async def test_a_hub_nobody_listens_to_reads_no_change_and_keeps_up_with_the_feed(
    tmp_path: Path,
) -> None:
    # Given a hub of a real store that nobody subscribes to
    async with running_hub(tmp_path, Reads, idle_s=0.01) as (hub, feed, store):
        # when 50 jobs are stored (a web process that only takes jobs in),
        await store.enqueue([_job("alice") for _ in range(50)])
        head = await store.last_seq()
        async with asyncio.timeout(5):
            while hub.position != head:  # noqa: ASYNC110 (the hub's position: no event)
                await asyncio.sleep(0.01)
        # then it moved past them without reading one;
        assert feed.whole_feed_reads == 0
        # and a subscriber that comes later gets the changes after it, at once.
        with hub.subscribe(owner="alice") as sub:
            job = _job("alice")
            await store.enqueue([job])
            change = await asyncio.wait_for(sub.queue.get(), 5)
            assert change.job_id == job.id and sub.queue.empty()
        assert feed.whole_feed_reads > 0


async def test_a_stream_from_now_on_starts_at_the_head_when_the_hub_was_idle(
    tmp_path: Path,
) -> None:
    # Given a hub nobody listened to while 20 jobs were stored (it moves once a minute)
    async with running_hub(tmp_path, idle_s=60) as (hub, _, store):
        await store.enqueue([_job("alice") for _ in range(20)])
        head = await store.last_seq()
        # when a stream subscribes and asks where "now" is,
        with hub.subscribe(owner="alice") as sub:
            now = await asyncio.wait_for(hub.now(), 5)
            # then it is the feed's head, not the hub's old position: none of the 20 jobs
            # is news to it, and the next one is.
            assert now == head
            job = _job("alice")
            await store.enqueue([job])
            while (change := await asyncio.wait_for(sub.queue.get(), 5)).seq <= now:
                pass
            assert change.job_id == job.id


class InFlight(Through):
    """A real store whose feed reads each take a moment (a busy server), counting the most
    that ran at once: each would hold a pooled connection of its own."""

    def __init__(self, store: SQLiteBackend) -> None:
        super().__init__(store)
        self.running = self.most = self.reads = 0

    async def _timed(self, read: Any) -> Any:
        self.running += 1
        self.reads += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(0.005)
            return await read
        finally:
            self.running -= 1

    async def changes_since(
        self, seq: int, *, job_id: str | None = None, owner: str | None = None, limit: int = 500
    ) -> list[Change]:
        return await self._timed(
            super().changes_since(seq, job_id=job_id, owner=owner, limit=limit)
        )

    async def feed_head(self, seq: int) -> int:
        return await self._timed(super().feed_head(seq))

    async def last_seq(self) -> int:
        return await self._timed(super().last_seq())


async def test_the_streams_check_and_the_hubs_reads_hold_one_connection_between_them(
    tmp_path: Path,
) -> None:
    # Given a hub following a real store's feed while jobs are stored, with no read of its
    # own for a while (so the streams' check must read: nothing fresh answers for it),
    async with running_hub(tmp_path, InFlight, idle_s=0.01) as (hub, feed, store):
        with hub.subscribe(owner="alice"):
            # when 300 streams open in waves and each checks the feed answers, some asking
            # "now" too, while the hub reads what the jobs change,
            async def opens() -> None:
                for wave in range(30):
                    hub._read_at = -math.inf
                    checks = [hub.answering(5.0) for _ in range(10)]
                    await asyncio.gather(*checks, *(hub._shared_head() for _ in range(wave % 2)))

            await asyncio.gather(opens(), store.enqueue([_job("alice") for _ in range(50)]))
    # then no two of those reads ever ran at once (one pooled connection serves them all),
    # and the checks shared theirs: far fewer reads than checks.
    assert feed.most == 1
    assert feed.reads < 300 // 2


class Hangs(Through):
    """A real store whose head reads hang once `hanging` is set (a server that stopped
    answering without closing its connections)."""

    def __init__(self, store: SQLiteBackend) -> None:
        super().__init__(store)
        self.hanging = False

    async def feed_head(self, seq: int) -> int:
        if self.hanging:
            await asyncio.Event().wait()
        return await super().feed_head(seq)


async def test_the_streams_check_answers_within_its_bound_when_reads_hang(
    tmp_path: Path,
) -> None:
    # Given a hub whose store answered, then stopped answering (nobody listens: it reads heads),
    async with running_hub(tmp_path, Hangs, idle_s=0.01) as (hub, feed, _):
        await hub.answering(5.0)  # answers while the store does
        feed.hanging = True
        hub._read_at = -math.inf  # no read of late answers for it
        # when a stream checks, then it is told the backend does not answer, within the bound
        # (not after the backend's retry deadline), whether its read or the hub's hangs.
        started = time.monotonic()
        with pytest.raises(BackendError, match=r"did not answer within 0\.2s"):
            await hub.answering(0.2)
        assert time.monotonic() - started < 5


class Stuck(Through):
    """A real store whose reads of the whole feed block while `holding` is set."""

    def __init__(self, store: SQLiteBackend) -> None:
        super().__init__(store)
        self.holding, self.stuck, self.release = (threading.Event() for _ in range(3))

    async def changes_since(
        self, seq: int, *, job_id: str | None = None, owner: str | None = None, limit: int = 500
    ) -> list[Change]:
        if self.holding.is_set() and job_id is None and owner is None:
            self.stuck.set()
            await asyncio.to_thread(self.release.wait, 30)
        return await super().changes_since(seq, job_id=job_id, owner=owner, limit=limit)


def test_a_check_from_another_event_loop_does_not_wait_for_the_hubs_turn(
    tmp_path: Path,
) -> None:
    # Given a hub running in an event loop of its own (a test client serves each connection
    # in a loop of its own), following the feed for a subscriber, its read stuck (it holds
    # the hub's turn), long enough after a read that a stream's check must read,
    hubs_loop = asyncio.new_event_loop()
    thread = threading.Thread(target=hubs_loop.run_forever, daemon=True)
    thread.start()
    store = SQLiteBackend(str(tmp_path / "jobs.db"))
    feed = Stuck(store)
    hub = Hub(feed, feed.last_seq)
    unsubscribe = threading.Event()

    def in_hubs_loop(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, hubs_loop).result(30)

    async def subscribed() -> None:
        with hub.subscribe(owner="alice"):
            await asyncio.to_thread(unsubscribe.wait, 30)

    in_hubs_loop(store.open())
    in_hubs_loop(hub.start())
    following = asyncio.run_coroutine_threadsafe(subscribed(), hubs_loop)
    try:
        feed.holding.set()
        assert feed.stuck.wait(30), "the hub did not read the feed"
        hub._read_at = -math.inf
        # when a stream checks from another loop, it reads the feed itself and is answered
        # (it waited for the hub's turn: the hub's loop never woke it, a 503 after the bound).
        asyncio.run(asyncio.wait_for(hub.answering(5.0), 10))
    finally:
        feed.holding.clear()
        feed.release.set()
        unsubscribe.set()
        following.result(30)
        in_hubs_loop(hub.stop())
        in_hubs_loop(store.close())
        hubs_loop.call_soon_threadsafe(hubs_loop.stop)
        thread.join(30)
        hubs_loop.close()


def _change(seq: int, state: JobState) -> Change:
    row = JobRow(
        id="j1", kind="k", version=1, queue="q", state=state, priority=0, attempt=1,
        max_attempts=3, run_at=0.0, enqueued_at=0.0, owner="alice",
    )  # fmt: skip
    return Change(seq=seq, job_id="j1", owner="alice", row=row)


class EndsDuringTheReplay:
    """A feed whose job ends between the stream's replay and its look at the job: the
    final change is in the feed only from the second read on."""

    def __init__(self) -> None:
        self.feed = [_change(1, JobState.QUEUED), _change(2, JobState.RUNNING)]
        self.final = _change(3, JobState.SUCCEEDED)
        self.reads = 0

    async def changes_since(
        self, seq: int, *, job_id: str | None = None, owner: str | None = None, limit: int = 500
    ) -> list[Change]:
        self.reads += 1
        feed = self.feed if self.reads == 1 else [*self.feed, self.final]
        return [change for change in feed if change.seq > seq]

    async def get(self, job_id: str) -> JobRow | None:
        return self.final.row

    async def last_seq(self) -> int:
        return 0

    async def feed_head(self, seq: int) -> int:
        return seq

    async def wait_changes(self, timeout: float) -> None:
        await asyncio.sleep(timeout)


@pytest.mark.parametrize(("since", "expected"), [(0, [1, 2, 3]), (1, [2, 3]), (3, [])])
async def test_a_job_stream_ends_with_the_final_change_even_when_it_lands_during_the_replay(
    since: int, expected: list[int]
) -> None:
    feed = EndsDuringTheReplay()
    hub = Hub(feed, feed.last_seq)  # not started: the stream reads the feed itself first
    stream = job_stream(hub, feed, "j1", since, lambda row: {"state": row.state.value})
    async with asyncio.timeout(5):  # a stream that waits for more hangs here
        chunks = [chunk async for chunk in stream]
    assert [int(c.split(b"\n")[0].removeprefix(b"id: ")) for c in chunks] == expected


class DeletedWhileWatched:
    """A feed of a job that waits, then is deleted (purged): no change ever comes."""

    def __init__(self) -> None:
        self.gone = False

    async def changes_since(
        self, seq: int, *, job_id: str | None = None, owner: str | None = None, limit: int = 500
    ) -> list[Change]:
        return [c for c in [_change(1, JobState.QUEUED)] if c.seq > seq and not self.gone]

    async def get(self, job_id: str) -> JobRow | None:
        return None if self.gone else _change(1, JobState.QUEUED).row

    async def last_seq(self) -> int:
        return 1

    async def feed_head(self, seq: int) -> int:
        return seq

    async def wait_changes(self, timeout: float) -> None:
        await asyncio.sleep(timeout)


async def test_a_job_stream_ends_once_its_job_is_deleted() -> None:
    # A purged job's stream sent keep-alives for ever (a reconnect is answered 404, which
    # ends an EventSource for good)
    feed = DeletedWhileWatched()
    hub = Hub(feed, feed.last_seq)
    stream = job_stream(hub, feed, "j1", 0, lambda row: {}, keepalive_s=0.01)
    chunks = [await anext(stream), await anext(stream), await anext(stream)]
    assert chunks[0].startswith(b"id: 1") and chunks[1] == b"retry: 1000\n\n"
    assert chunks[2] == b": keep-alive\n\n"
    feed.gone = True
    async with asyncio.timeout(5):
        rest = [chunk async for chunk in stream]
    assert rest == []


class Unreachable(DeletedWhileWatched):
    """The same job's feed, whose backend stops answering as the stream waits."""

    down = False

    async def get(self, job_id: str) -> JobRow | None:
        if self.down:
            raise BackendError("no answer within 10s")
        return await super().get(job_id)


async def test_a_backend_that_does_not_answer_the_deletion_check_ends_no_stream() -> None:
    # An outage ended the stream, and its reconnect was answered 503, which ends an
    # EventSource for good
    feed = Unreachable()
    hub = Hub(feed, feed.last_seq)
    stream = job_stream(hub, feed, "j1", 0, lambda row: {}, keepalive_s=0.01)
    assert (await anext(stream)).startswith(b"id: 1") and await anext(stream)
    feed.down = True
    assert [await anext(stream) for _ in range(3)] == [b": keep-alive\n\n"] * 3


class FailsOnce:
    """A feed whose first read fails with a surprise (not a BackendError), then holds one
    change of alice's."""

    def __init__(self) -> None:
        self.reads = 0

    async def changes_since(
        self, seq: int, *, job_id: str | None = None, owner: str | None = None, limit: int = 500
    ) -> list[Change]:
        self.reads += 1
        if self.reads == 1:
            raise RuntimeError("a bug in a backend")
        return [c for c in [_change(1, JobState.QUEUED)] if c.seq > seq]

    async def get(self, job_id: str) -> JobRow | None:
        return None

    async def last_seq(self) -> int:
        return 0

    async def feed_head(self, seq: int) -> int:
        return seq

    async def wait_changes(self, timeout: float) -> None:
        await asyncio.sleep(min(timeout, 0.05))


async def test_the_hub_outlives_a_surprise_error_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a hub whose first read of the feed fails with an unexpected error
    feed = FailsOnce()
    hub = Hub(feed, feed.last_seq)
    with hub.subscribe(owner="alice") as sub:
        await hub.start()
        try:
            # Then the error is logged, and the watcher goes on to pass the change on.
            change = await asyncio.wait_for(sub.queue.get(), 10)
        finally:
            await hub.stop()
    assert change.seq == 1
    assert "change feed watcher failed" in caplog.text


async def test_deleting_the_newest_jobs_is_no_feed_that_starts_anew(tmp_path: Path) -> None:
    # On SQL engines a job's feed entries go with it (deleted, pruned): the newest position
    # left may fall below the hub's, and that was taken for a backend that lost its data
    # (every open stream ended). Their positions never go back: only Redis is watched.
    from offload import App, Settings
    from offload.web.runtime import runtime_of

    app = App("hub", settings=Settings(url=f"sqlite:///{tmp_path / 'jobs.db'}"))
    runtime = runtime_of(app)
    await runtime.ensure()
    try:
        hub, store = runtime.hub, app._require_backend()
        assert hub.restarts is False  # (the web tier's hub, as the backend says)
        with hub.subscribe(owner="alice") as sub:
            kept, newest = _job("alice"), _job("alice")
            await store.enqueue([kept])
            await store.enqueue([newest])
            await store.cancel(newest.id)  # (a final job: what deletes and prunes take)
            for _ in range(3):
                await asyncio.wait_for(sub.queue.get(), 5)
            assert await store.delete_many([newest.id]) == 1
            assert await store.last_seq() < hub.position
            later = _job("alice")
            await store.enqueue([later])
            change = await asyncio.wait_for(sub.queue.get(), 5)
            assert change.job_id == later.id and not sub.ended
    finally:
        await runtime.exit()
