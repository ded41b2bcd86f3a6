"""Unique jobs contract: which states hold a key, every transition that frees it, batches,
idempotency keys beside unique keys, and enqueues racing for one key."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from offload.brokers import Backend, open_backend
from offload.contract import EnqueueResult, Envelope, JobState, Lease, Outcome
from offload.errors import BackendError

from ._support import ShiftClock, claim, done, envelope, rescue, status
from .conftest import BackendParam

pytestmark = pytest.mark.anyio

KEY = "k-0123456789abcdef"
#: Keys of each of the two batches racing in opposite orders.
KEYS = 300


def unique(
    mode: str = "queued", *, ukey: str = KEY, idem: str | None = None, **kw: Any
) -> Envelope:
    """An envelope of a unique kind holding `ukey` in `mode` (`idem`: its idempotency key)."""
    return dataclasses.replace(envelope(key=idem, **kw), unique_key=ukey, unique=mode)


async def enqueue_one(backend: Backend, e: Envelope) -> EnqueueResult:
    (result,) = await backend.enqueue([e])
    return result


async def assert_held_by(backend: Backend, job_id: str, mode: str = "queued") -> None:
    """A new job with the key is not stored: the answer names `job_id`."""
    again = unique(mode)
    result = await enqueue_one(backend, again)
    assert result == EnqueueResult(id=job_id, created=False, unique_repeat=True)
    assert await backend.get(again.id) is None


async def assert_free(backend: Backend, mode: str = "queued") -> str:
    """A new job with the key is stored; returns its id."""
    fresh = unique(mode)
    assert await enqueue_one(backend, fresh) == EnqueueResult(id=fresh.id, created=True)
    return fresh.id


def retry_at_once(lease: Lease, at: float) -> Outcome:
    error = {"type": "IOError", "message": "blip"}
    return Outcome(lease=lease, state=JobState.RETRYING, error=error, run_at=at)


@pytest.mark.parametrize("mode", ["queued", "active"])
async def test_a_waiting_job_holds_its_key(backend: Backend, mode: str) -> None:
    # Given a unique job waiting in its queue
    first = unique(mode)
    assert await enqueue_one(backend, first) == EnqueueResult(id=first.id, created=True)
    # Then a second enqueue with the key answers the first job and stores nothing
    await assert_held_by(backend, first.id, mode)
    # While other keys, and jobs without one, are stored
    other = unique(mode, ukey="another")
    assert (await enqueue_one(backend, other)).created
    assert (await enqueue_one(backend, envelope())).created
    assert len(await claim(backend)) == 3


@pytest.mark.parametrize("mode", ["queued", "active"])
async def test_a_delayed_job_holds_its_key(backend: Backend, mode: str) -> None:
    first = unique(mode, delay=3600)
    await backend.enqueue([first])
    await assert_held_by(backend, first.id, mode)


async def test_queued_key_is_freed_when_a_worker_starts_the_job(backend: Backend) -> None:
    # Given a job of a unique="queued" kind, claimed by a worker
    first = unique("queued")
    await backend.enqueue([first])
    assert len(await claim(backend)) == 1
    # Then a new job with the key is stored while the first runs
    second = await assert_free(backend)
    # And it holds the key in turn
    await assert_held_by(backend, second)
    assert (await status(backend, first.id))["state"] == "running"


async def test_queued_key_is_not_taken_back_by_a_retry_or_a_release(
    backend: Backend, clock: ShiftClock
) -> None:
    # Given a started unique="queued" job, and a second one holding the key meanwhile
    first, retried = unique("queued"), unique("queued", ukey="k2")
    await backend.enqueue([first, retried])
    a, b = await claim(backend)
    second = await assert_free(backend)
    # When the first is released and the other retried: no conflict, both are waiting
    released = Outcome(lease=a, state=JobState.QUEUED, refund=True)
    assert await backend.settle([released, retry_at_once(b, clock.now())]) == [True, True]
    assert (await status(backend, first.id))["state"] == "queued"
    assert (await status(backend, retried.id))["state"] == "retrying"
    # Then the key stays with the job that never started, and k2 is free
    await assert_held_by(backend, second)
    fresh = unique("queued", ukey="k2")
    assert (await enqueue_one(backend, fresh)).created


async def test_queued_key_is_not_taken_back_by_a_rescued_job(
    backend: Backend, clock: ShiftClock
) -> None:
    # Given a started unique="queued" job whose lease lapses, and a new job holding the key
    first = unique("queued")
    await backend.enqueue([first])
    await claim(backend, lease_for=1.0)
    second = await assert_free(backend)
    # When the lapsed job is rescued to a retry (no conflict with the holder)
    clock.advance(5)
    assert len(await rescue(backend, clock)) == 1
    assert (await status(backend, first.id))["state"] == "retrying"
    # Then the key stays with the job that never started
    await assert_held_by(backend, second)


async def test_active_key_is_held_while_running_retrying_and_released(
    backend: Backend, clock: ShiftClock
) -> None:
    # Given a job of a unique="active" kind
    first = unique("active")
    await backend.enqueue([first])
    # Then the key is held while it runs
    (lease,) = await claim(backend)
    await assert_held_by(backend, first.id, "active")
    # And while it waits for a retry
    assert await backend.settle([retry_at_once(lease, clock.now())]) == [True]
    await assert_held_by(backend, first.id, "active")
    # And after a worker gave it back at shutdown
    (lease,) = await claim(backend)
    assert await backend.settle([Outcome(lease=lease, state=JobState.QUEUED, refund=True)])
    await assert_held_by(backend, first.id, "active")
    # And after a lapsed lease was rescued to a retry
    (lease,) = await claim(backend, lease_for=1.0)
    clock.advance(5)
    assert len(await rescue(backend, clock)) == 1
    assert (await status(backend, first.id))["state"] == "retrying"
    await assert_held_by(backend, first.id, "active")


@pytest.mark.parametrize(
    "ending",
    [JobState.SUCCEEDED, JobState.FAILED, JobState.DEAD, JobState.CANCELLED],
)
async def test_active_key_is_freed_when_the_job_ends(backend: Backend, ending: JobState) -> None:
    first = unique("active")
    await backend.enqueue([first])
    (lease,) = await claim(backend)
    error = None if ending is JobState.SUCCEEDED else {"type": "E", "message": "no"}
    assert await backend.settle([Outcome(lease=lease, state=ending, error=error)]) == [True]
    assert (await status(backend, first.id))["state"] == ending.value
    await assert_free(backend, "active")


async def test_active_key_is_freed_when_a_rescue_ends_the_job_dead(
    backend: Backend, clock: ShiftClock
) -> None:
    first = unique("active", max_attempts=1)
    await backend.enqueue([first])
    await claim(backend, lease_for=1.0)
    clock.advance(5)
    assert len(await rescue(backend, clock)) == 1
    assert (await status(backend, first.id))["state"] == "dead"
    await assert_free(backend, "active")


@pytest.mark.parametrize("mode", ["queued", "active"])
async def test_cancelling_a_waiting_job_frees_its_key(backend: Backend, mode: str) -> None:
    first = unique(mode)
    await backend.enqueue([first])
    assert (await backend.cancel(first.id)).state is JobState.CANCELLED
    await assert_free(backend, mode)


@pytest.mark.parametrize("mode", ["queued", "active"])
async def test_bulk_cancel_frees_the_keys(backend: Backend, mode: str) -> None:
    first = unique(mode)
    await backend.enqueue([first])
    assert await backend.cancel_many([first.id], {}) == 1
    await assert_free(backend, mode)


async def test_a_running_job_flagged_for_cancel_holds_its_active_key_until_it_ends(
    backend: Backend,
) -> None:
    first = unique("active")
    await backend.enqueue([first])
    (lease,) = await claim(backend)
    await backend.cancel(first.id)
    await assert_held_by(backend, first.id, "active")
    assert await backend.settle([Outcome(lease=lease, state=JobState.CANCELLED)]) == [True]
    await assert_free(backend, "active")


@pytest.mark.parametrize("mode", ["queued", "active"])
async def test_purge_frees_the_keys_of_the_purged_jobs(backend: Backend, mode: str) -> None:
    await backend.enqueue([unique(mode)])
    assert await backend.purge("q") == 1
    await assert_free(backend, mode)


@pytest.mark.parametrize("bulk", [False, True])
@pytest.mark.parametrize("mode", ["queued", "active"])
async def test_a_requeued_job_holds_no_key(backend: Backend, mode: str, bulk: bool) -> None:
    # Given a unique job that ended dead, and a new job holding its key since
    first = unique(mode, max_attempts=1)
    await backend.enqueue([first])
    (lease,) = await claim(backend)
    dead = Outcome(lease=lease, state=JobState.DEAD, error={"type": "E", "message": "no"})
    assert await backend.settle([dead]) == [True]
    second = await assert_free(backend, mode)
    # When an operator requeues the dead job (no conflict with the holder)
    if bulk:
        assert await backend.requeue_many([first.id]) == 1
    else:
        assert (await backend.requeue(first.id)).state is JobState.QUEUED
    # Then the holder keeps the key, and once it ends the requeued job does not take it
    await assert_held_by(backend, second, mode)
    await backend.cancel(second)
    assert (await status(backend, first.id))["state"] == "queued"
    await assert_free(backend, mode)


async def test_deleted_and_pruned_jobs_leave_their_keys_free(
    backend: Backend, clock: ShiftClock
) -> None:
    # Given two unique jobs that ended (one deleted, one pruned)
    deleted, pruned = unique("active"), unique("active", ukey="k2")
    await backend.enqueue([deleted, pruned])
    leases = await claim(backend)
    assert await backend.settle([done(le) for le in leases]) == [True, True]
    assert await backend.delete_many([deleted.id]) == 1
    clock.advance(10)
    assert await backend.prune(5) == 1
    # Then both keys are free
    await assert_free(backend, "active")
    assert (await enqueue_one(backend, unique("active", ukey="k2"))).created


@pytest.mark.parametrize("mode", ["queued", "active"])
async def test_a_batch_repeating_a_key_stores_the_first_job_only(
    backend: Backend, mode: str
) -> None:
    a, b, c = unique(mode), unique(mode), unique(mode, ukey="other")
    results = await backend.enqueue([a, b, c])
    assert results == [
        EnqueueResult(id=a.id, created=True),
        EnqueueResult(id=a.id, created=False, unique_repeat=True),
        EnqueueResult(id=c.id, created=True),
    ]
    assert await backend.get(b.id) is None
    # And a later batch with the key answers the first job for each
    d, e = unique(mode), unique(mode)
    assert [r.id for r in await backend.enqueue([d, e])] == [a.id, a.id]


async def test_a_batch_with_unique_jobs_is_still_all_or_nothing(backend: Backend) -> None:
    a, b = unique("queued"), unique("queued", ukey="k2")
    with pytest.raises(BackendError):
        await backend.enqueue([a, b, envelope(id=a.id)])
    assert await backend.get(a.id) is None and await backend.get(b.id) is None
    await assert_free(backend)


async def test_an_idempotency_key_answers_before_the_unique_key(backend: Backend) -> None:
    # Given a waiting unique job enqueued with an idempotency key
    first = unique("queued", idem="req-1")
    await backend.enqueue([first])
    # When the same request is repeated while the job waits
    replay = unique("queued", idem="req-1")
    # Then it is an idempotent repeat, not a unique one
    assert await enqueue_one(backend, replay) == EnqueueResult(id=first.id, created=False)
    # And a new request with the key (another idempotency key) is a unique repeat
    other = unique("queued", idem="req-2")
    assert await enqueue_one(backend, other) == EnqueueResult(
        id=first.id, created=False, unique_repeat=True
    )


async def test_enqueues_racing_for_one_key_store_one_job(
    backend: Backend, backend_url: str, backend_param: BackendParam, clock: ShiftClock
) -> None:
    # Given several connections (one backend object each where the backend is shared)
    others = []
    if backend_param.cross_process:
        others = [open_backend(backend_url, clock=clock) for _ in range(5)]
        for other in others:
            await other.open()
    racers = [backend, *others]
    try:
        # When 24 enqueues of one key race, several rounds (the key freed in between)
        for _ in range(3):
            envelopes = [unique("active") for _ in range(24)]
            results = await asyncio.gather(
                *(enqueue_one(racers[i % len(racers)], e) for i, e in enumerate(envelopes))
            )
            # Then exactly one job is stored, and every answer names it
            created = [r for r in results if r.created]
            assert len(created) == 1
            assert {r.id for r in results} == {created[0].id}
            assert all(r.unique_repeat for r in results if not r.created)
            (lease,) = await claim(backend)
            assert await backend.settle([done(lease)]) == [True]
    finally:
        for other in others:
            await other.close()


async def test_a_periodic_tick_of_a_unique_kind_is_the_waiting_job(backend: Backend) -> None:
    # Given a unique job waiting (a previous tick's, or enqueued by hand)
    first = unique("queued")
    await backend.enqueue([first])
    # When a schedule fires a tick of the same key
    tick = unique("queued", idem="s@1")
    (result,) = await backend.fire_schedule("s", spec={"every_s": 1.0}, fires=[(1.0, tick)])
    # Then no job is stored, the tick is recorded, and its job is the waiting one
    assert result == EnqueueResult(id=first.id, created=False, unique_repeat=True)
    assert await backend.get(tick.id) is None
    (state,) = await backend.schedule_states()
    assert (state.last_tick, state.last_job_id) == (1.0, first.id)


async def test_batches_holding_the_same_keys_in_opposite_orders_race_without_error(
    backend: Backend, backend_url: str, backend_param: BackendParam, clock: ShiftClock
) -> None:
    # Given two connections (one backend object where it cannot be shared)
    other = backend
    if backend_param.cross_process:
        other = open_backend(backend_url, clock=clock)
        await other.open()
    try:
        for n in range(5):
            # When each enqueues one batch of the same keys, one of them reversed
            keys = [f"r{n}-{i}" for i in range(KEYS)]
            forward = [unique("queued", ukey=k) for k in keys]
            backward = [unique("queued", ukey=k) for k in reversed(keys)]
            a, b = await asyncio.gather(backend.enqueue(forward), other.enqueue(backward))
            # Then each key is stored once, and both answers name the same job for it
            by_key_a = {k: r.id for k, r in zip(keys, a, strict=True)}
            by_key_b = {k: r.id for k, r in zip(reversed(keys), b, strict=True)}
            assert by_key_a == by_key_b
            assert sum(r.created for r in a + b) == KEYS
    finally:
        if other is not backend:
            await other.close()


async def test_enqueues_racing_with_claims_never_leave_two_jobs_waiting_on_one_key(
    backend: Backend, backend_url: str, backend_param: BackendParam, clock: ShiftClock
) -> None:
    # Given enqueuers and claimers on their own connections where the backend is shared
    racers = [backend]
    if backend_param.cross_process:
        racers += [open_backend(backend_url, clock=clock) for _ in range(3)]
        for other in racers[1:]:
            await other.open()
    try:
        for _ in range(5):
            # When enqueues of one "queued" key race with claims that free it
            enqueues = [enqueue_one(racers[i % len(racers)], unique("queued")) for i in range(20)]
            claims = [claim(racers[i % len(racers)], limit=1) for i in range(6)]
            results = await asyncio.gather(*enqueues, *claims)
            answers = [r for r in results if isinstance(r, EnqueueResult)]
            # Then every enqueue answered a job that exists, and at most one job waits
            assert None not in [await backend.get(r.id) for r in answers]
            assert (await backend.stats())["q"]["queued"] <= 1
    finally:
        for other in racers[1:]:
            await other.close()
