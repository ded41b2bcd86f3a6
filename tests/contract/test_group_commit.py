"""Group commit contract: concurrent `App.enqueue` calls share backend calls, yet every call
is stored and answered on its own (its own job, its own error), and a lone call goes at once,
on every backend."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from offload import App, Message, Settings
from offload._group import DEFAULT_GROUP_MAX_JOBS, GroupCommit
from offload.errors import BackendError, StorageFull

from ._support import PATIENCE_S, ShiftClock, until

pytestmark = pytest.mark.anyio

#: Concurrent callers in the tests below: more than one group holds.
CALLERS = 100


class Item(Message):
    n: int


class Once(Message):
    name: str


@pytest.fixture
async def app(backend_url: str, clock: ShiftClock, tmp_path: Path) -> AsyncIterator[App]:
    settings = Settings(url=backend_url, blobs_url=str(tmp_path / "blobs"), secret_key=b"k" * 32)
    app = App("group", settings=settings, clock=clock)
    app.message("group.item", queue="items")(Item)
    app.message("group.once", queue="items", unique="queued")(Once)
    await app.open()
    try:
        yield app
    finally:
        await app.close()


def group_of(app: App) -> GroupCommit:
    group = app._group
    assert group is not None
    return group


async def test_concurrent_enqueues_are_all_stored_and_each_answered(app: App) -> None:
    # Given CALLERS callers enqueueing at once
    jobs = await asyncio.gather(*(app.enqueue(Item(n=n)) for n in range(CALLERS)))
    # Then each got its own created job, stored with its own payload
    assert len({j.id for j in jobs}) == CALLERS and all(j.created for j in jobs)
    for n, job in enumerate(jobs):
        row = await app.get(job.id)
        assert row is not None and row.payload == {"n": n}
    # And they shared backend calls: the first took those made in the same turn of the
    # loop (all of them), in groups of at most DEFAULT_GROUP_MAX_JOBS
    assert group_of(app).flushes == -(-CALLERS // DEFAULT_GROUP_MAX_JOBS)


async def test_a_lone_call_is_sent_at_once_by_itself(app: App) -> None:
    # When calls come one after another, none waiting for another
    for n in range(5):
        job = await app.enqueue(Item(n=n))
        # Then each is one backend call of its own, stored when it returns
        assert group_of(app).flushes == n + 1
        assert await app.get(job.id) is not None
    assert group_of(app)._drainer is None


async def test_a_first_caller_that_gives_up_drops_none_of_the_calls_it_carries(app: App) -> None:
    # Given a first call, and calls made in the same turn of the loop (they go with it)
    stamped = app.envelope(Item(n=0))
    first = asyncio.ensure_future(app.submit(stamped))
    others = [asyncio.ensure_future(app.enqueue(Item(n=n))) for n in range(1, 6)]
    async with asyncio.timeout(PATIENCE_S):  # the first call has handed the group on
        while app._group is None or app._group._drainer is None:  # noqa: ASYNC110
            await asyncio.sleep(0)
    # When the first caller gives up before the group is sent
    first.cancel()
    # Then every other call is stored and answered with its own job
    jobs = await asyncio.gather(*others)
    for n, job in enumerate(jobs, start=1):
        row = await app.get(job.id)
        assert row is not None and row.payload == {"n": n}
    # And the one that gave up is not stored
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await app.get(stamped.id) is None


async def test_a_failing_job_in_a_group_fails_only_its_caller(app: App) -> None:
    # Given a stored job, and a second envelope that reuses its id (the backend refuses it)
    first = app.envelope(Item(n=0))
    await app.submit(first)
    clash = dataclasses.replace(app.envelope(Item(n=-1)), id=first.id)
    # When it is sent among good calls that wait for one in flight (one group)
    before = [app.enqueue(Item(n=n)) for n in range(1, 6)]
    after = [app.enqueue(Item(n=n)) for n in range(6, 11)]
    *ahead, failed, rest = await asyncio.gather(
        asyncio.gather(*before), app.submit(clash), asyncio.gather(*after), return_exceptions=True
    )
    # Then only that caller fails; every other call's job is stored
    assert isinstance(failed, BackendError)
    assert not isinstance(ahead[0], BaseException) and not isinstance(rest, BaseException)
    for n, job in enumerate([*ahead[0], *rest], start=1):
        row = await app.get(job.id)
        assert row is not None and row.payload == {"n": n}
    row = await app.get(first.id)
    assert row is not None and row.payload == {"n": 0}


async def test_a_group_out_of_reach_fails_each_caller_once_not_alone_again(app: App) -> None:
    # Given a backend out of reach for the whole retry deadline as a group is sent (a
    # stall that ran the group's write, say: whether it was stored is not known)
    await app.enqueue(Item(n=-1))  # (the group is made with the first call)
    calls: list[int] = []
    stored = group_of(app)._store

    async def out_of_reach(envelopes: Any) -> Any:
        calls.append(len(envelopes))
        if len(calls) == 1:
            await stored(envelopes)  # the write ran, its answer never came
        error = BackendError("no answer")
        error.out_of_reach = True
        raise error

    group_of(app)._store = out_of_reach
    # When callers share that group
    results = await asyncio.gather(
        *(app.enqueue(Item(n=n)) for n in range(5)), return_exceptions=True
    )
    # Then each is told the backend was out of reach (what it is told alone), and none
    # is sent again as a first attempt: that read the stored group as "already exists:
    # nothing was stored", after another whole deadline
    assert calls == [5]
    assert all(isinstance(r, BackendError) and r.out_of_reach for r in results)


async def test_a_group_refused_for_want_of_storage_is_not_sent_again_alone(app: App) -> None:
    # Storage full (a full disk, a Redis over its maxmemory) refuses every caller alike
    await app.enqueue(Item(n=-1))  # (the group is made with the first call)
    calls: list[int] = []

    async def full(envelopes: Any) -> Any:
        calls.append(len(envelopes))
        raise StorageFull("no room")

    group_of(app)._store = full
    results = await asyncio.gather(
        *(app.enqueue(Item(n=n)) for n in range(5)), return_exceptions=True
    )
    assert calls == [5] and all(isinstance(r, StorageFull) for r in results)


async def test_repeats_within_one_group_are_resolved_per_job(app: App) -> None:
    # When many callers at once send one idempotency key, and one unique job
    keyed = [app.enqueue(Item(n=n), idempotency_key="k") for n in range(20)]
    unique = [app.enqueue(Once(name="x")) for _ in range(20)]
    jobs = await asyncio.gather(*keyed, *unique)
    # Then each key stored one job, which every caller of that key was answered
    by_key, by_unique = jobs[:20], jobs[20:]
    assert len({j.id for j in by_key}) == 1 and sum(j.created for j in by_key) == 1
    assert len({j.id for j in by_unique}) == 1 and sum(j.created for j in by_unique) == 1
    assert sum(j.unique_repeat for j in by_unique) == 19
    assert group_of(app).flushes < 40


async def test_a_caller_cancelled_while_waiting_is_not_stored(app: App) -> None:
    # Given a call in flight, and a second call waiting for it
    first = asyncio.ensure_future(app.enqueue(Item(n=1)))
    stamped = app.envelope(Item(n=2))
    second = asyncio.ensure_future(app.submit(stamped))
    # (no pause in this wait: the first flush lasts one round trip)
    async with asyncio.timeout(PATIENCE_S):  # the second call waits behind the first
        while app._group is None or not app._group._pending:  # noqa: ASYNC110
            await asyncio.sleep(0)
    # When the waiting caller gives up before its group is sent
    second.cancel()
    job = await first
    with pytest.raises(asyncio.CancelledError):
        await second
    # Then the first job is stored and the given-up one never is
    assert await app.get(job.id) is not None

    async def idle() -> bool:
        return not group_of(app)._busy

    await until(idle, "no flush in flight")
    assert await app.get(stamped.id) is None
