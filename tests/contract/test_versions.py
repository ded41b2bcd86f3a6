"""Versions contract: the worker registry (record_worker, live_versions) and the count of jobs
that wait for a newer worker, on every backend."""

from __future__ import annotations

import pytest

from offload import JobState
from offload.brokers import Backend
from offload.brokers.base import FORGET_WORKER_AFTER_S, NEWER_VERSION
from offload.contract import Outcome

from ._support import ShiftClock, claim, done, envelope, status

pytestmark = pytest.mark.anyio

KIND = "greet"
QUEUE = "greetings"
#: Long enough for any answer asked of a live worker; never a wait that must be long enough.
PATIENCE_S = 20.0


# -- the backend's part ---------------------------------------------------------------------


async def test_live_versions_are_those_of_workers_recorded_within_the_window(
    backend: Backend, clock: ShiftClock
) -> None:
    # Given two workers that recorded what they run
    assert await backend.live_versions(within_s=30) == {}
    await backend.record_worker("w1", {"a": [1, 2]})
    await backend.record_worker("w2", {"a": [3], "b": [1]})
    # Then the live versions are the union of theirs, per kind
    assert await backend.live_versions(within_s=30) == {"a": {1, 2, 3}, "b": {1}}
    # When one records again, its entry is replaced, not merged
    await backend.record_worker("w1", {"a": [2]})
    assert await backend.live_versions(within_s=30) == {"a": {2, 3}, "b": {1}}
    # When time passes and only w2 records again, w1 is no longer live
    clock.advance(20)
    await backend.record_worker("w2", {"b": [1, 2]})
    assert await backend.live_versions(within_s=10) == {"b": {1, 2}}
    assert await backend.live_versions(within_s=30) == {"a": {2}, "b": {1, 2}}


async def test_an_empty_record_deletes_the_entry_and_dead_workers_are_forgotten(
    backend: Backend, clock: ShiftClock
) -> None:
    forever = 100 * FORGET_WORKER_AFTER_S
    await backend.record_worker("stopping", {"a": [1]})
    await backend.record_worker("dead", {"b": [1]})
    # When a worker stops cleanly, its entry goes
    await backend.record_worker("stopping", {})
    await backend.record_worker("stopping", {})  # idempotent
    assert await backend.live_versions(within_s=forever) == {"b": {1}}
    # When a worker has not recorded for longer than the forget horizon, the next record of
    # any worker deletes its entry
    clock.advance(FORGET_WORKER_AFTER_S + 1)
    assert await backend.live_versions(within_s=forever) == {"b": {1}}
    await backend.record_worker("new", {"c": [2]})
    assert await backend.live_versions(within_s=forever) == {"c": {2}}


async def test_stats_count_the_jobs_given_back_for_a_newer_worker(
    backend: Backend, clock: ShiftClock
) -> None:
    # Given two jobs a worker gave back (unspent, 30 s later) because they are too new for
    # it, and a third that failed an attempt for another reason
    newer = {"type": NEWER_VERSION, "message": "version 2 waits for a worker that runs it"}
    envs = [envelope(QUEUE) for _ in range(3)]
    await backend.enqueue(envs)
    leases = await claim(backend, QUEUE, limit=3)
    assert [le.job_id for le in leases] == [e.id for e in envs]
    later = clock.now() + 30
    given_back = [
        Outcome(lease=le, state=JobState.QUEUED, refund=True, run_at=later, error=newer)
        for le in leases[:2]
    ]
    other = {"type": "RuntimeError", "message": "boom"}
    retried = Outcome(lease=leases[2], state=JobState.RETRYING, run_at=later, error=other)
    assert await backend.settle([*given_back, retried]) == [True, True, True]
    # Then they wait unspent, and the queue's stats count the two
    record = await status(backend, envs[0].id)
    assert record["state"] == "queued" and record["attempt"] == 0
    assert record["error"]["type"] == NEWER_VERSION
    s = (await backend.stats())[QUEUE]
    assert (s["queued"], s["scheduled"], s["awaiting_newer_worker"]) == (0, 3, 2)
    assert (await backend.stats())[QUEUE]["awaiting_newer_worker"] == 2  # reading changes none
    # When their delay passes, they are ready and still counted
    clock.advance(31)
    s = (await backend.stats())[QUEUE]
    assert (s["queued"], s["awaiting_newer_worker"]) == (3, 2)
    # When a worker that knows the version claims one and it succeeds, and the other is
    # cancelled, neither waits for a newer worker any more
    (lease,) = await claim(backend, QUEUE, limit=1)
    assert lease.job_id == envs[0].id
    assert (await backend.stats())[QUEUE]["awaiting_newer_worker"] == 1
    assert await backend.settle([done(lease)]) == [True]
    await backend.cancel(envs[1].id)
    assert (await backend.stats())[QUEUE]["awaiting_newer_worker"] == 0


async def test_a_job_claimed_while_it_waits_for_a_newer_worker_counts_again_if_given_back(
    backend: Backend, clock: ShiftClock
) -> None:
    newer = {"type": NEWER_VERSION, "message": "too new"}
    env = envelope(QUEUE)
    await backend.enqueue([env])
    for _ in range(2):  # two old workers in a row give it back
        (lease,) = await claim(backend, QUEUE, limit=1)
        assert (await backend.stats())[QUEUE]["awaiting_newer_worker"] == 0
        back = Outcome(lease=lease, state=JobState.QUEUED, refund=True, error=newer)
        assert await backend.settle([back]) == [True]
        assert (await backend.stats())[QUEUE]["awaiting_newer_worker"] == 1
    assert (await status(backend, env.id))["attempt"] == 0
