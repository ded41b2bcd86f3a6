"""Broker contract: ordering, delays, leases, fencing, retries, dead letters, batches, stats."""

from __future__ import annotations

import time

import anyio
import pytest

from offload._ids import uuid7
from offload.brokers import Backend, Broker, JobStore
from offload.contract import JobState, Outcome
from offload.errors import BackendError
from offload.worker.retry import Backoff

from ._support import LONG, Policy, ShiftClock, claim, done, envelope, rescue, status

pytestmark = pytest.mark.anyio


async def test_backend_is_both_broker_and_job_store(backend: Backend) -> None:
    assert isinstance(backend, Broker)
    assert isinstance(backend, JobStore)
    await backend.ping()
    assert await backend.migrate() == []  # opened at this code's schema: nothing to apply


async def test_enqueue_stores_a_queued_job(backend: Backend) -> None:
    env = envelope(owner="alice", payload={"user_id": "u1"})
    (result,) = await backend.enqueue([env])
    assert (result.id, result.created) == (env.id, True)
    row = await backend.get(env.id)
    assert row is not None and row.owner == "alice" and row.payload == {"user_id": "u1"}
    record = await status(backend, env.id)
    assert record["state"] == "queued" and record["attempt"] == 0
    assert record["max_attempts"] == 3 and record["started_at"] is None
    assert await backend.get("no-such-job") is None


async def test_claim_is_fifo_within_one_priority(backend: Backend) -> None:
    # Given five jobs of one priority enqueued one after another
    ids = []
    for _ in range(5):
        env = envelope()
        await backend.enqueue([env])
        ids.append(env.id)
    # When they are claimed one at a time
    order = [(await claim(backend, limit=1))[0].job_id for _ in range(5)]
    # Then they come out in enqueue order
    assert order == ids
    assert await claim(backend) == []


async def test_claim_of_a_batch_is_fifo_with_equal_run_at(backend: Backend) -> None:
    now = time.time()
    envs = [envelope(run_at=now) for _ in range(20)]
    await backend.enqueue(envs)
    leases = await claim(backend, limit=20)
    assert [le.job_id for le in leases] == [e.id for e in envs]


async def test_claim_takes_lower_priority_values_first(backend: Backend) -> None:
    envs = {p: envelope(priority=p) for p in (5, 0, 10, -1, 3)}
    await backend.enqueue(list(envs.values()))
    order = [(await claim(backend, limit=1))[0].envelope.priority for _ in range(5)]
    assert order == [-1, 0, 3, 5, 10]


async def test_claim_batch_is_ordered_by_priority(backend: Backend) -> None:
    envs = [envelope(priority=p) for p in (2, 1, 0, 1, 2)]
    await backend.enqueue(envs)
    leases = await claim(backend, limit=3)
    assert [le.envelope.priority for le in leases] == [0, 1, 1]
    assert [le.job_id for le in leases] == [envs[2].id, envs[1].id, envs[3].id]


async def test_delayed_job_is_not_claimed_before_run_at(
    backend: Backend, clock: ShiftClock
) -> None:
    # Given a job delayed by 30 s
    env = envelope(delay=30)
    await backend.enqueue([env])
    # When claimed at once, then again after the delay
    early = await claim(backend)
    clock.advance(31)
    late = await claim(backend)
    # Then only the late claim gets it
    assert early == []
    assert [le.job_id for le in late] == [env.id]


async def test_future_job_does_not_block_ready_jobs(backend: Backend) -> None:
    future = envelope(run_at=time.time() + 3600, priority=-10)
    ready = envelope(priority=10)
    await backend.enqueue([future, ready])
    assert [le.job_id for le in await claim(backend)] == [ready.id]
    assert (await status(backend, future.id))["state"] == "queued"


async def test_claim_respects_limit(backend: Backend) -> None:
    await backend.enqueue([envelope() for _ in range(5)])
    assert len(await claim(backend, limit=2)) == 2
    assert len(await claim(backend, limit=2)) == 2
    assert len(await claim(backend, limit=2)) == 1
    assert await claim(backend, limit=2) == []
    assert await backend.claim(["q"], worker_id="w", lease_for=LONG, limit=0) == []


async def test_claim_respects_queue_names(backend: Backend) -> None:
    a = [envelope("a") for _ in range(3)]
    b = [envelope("b") for _ in range(2)]
    await backend.enqueue(a + b)
    assert await backend.claim(["c"], worker_id="w", lease_for=LONG, limit=10) == []
    from_b = await backend.claim(["b", "c"], worker_id="w", lease_for=LONG, limit=10)
    assert {le.job_id for le in from_b} == {e.id for e in b}
    from_a = await backend.claim(["a"], worker_id="w", lease_for=LONG, limit=10)
    assert {le.job_id for le in from_a} == {e.id for e in a}
    assert all(le.envelope.queue == "a" for le in from_a)


async def test_claim_returns_the_whole_envelope_and_spends_an_attempt(backend: Backend) -> None:
    env = envelope(owner="bob", key="k1", priority=2, max_attempts=4, payload={"x": [1, 2]})
    await backend.enqueue([env])
    before = time.time()
    (lease,) = await claim(backend, worker="w-7", lease_for=30)
    got = lease.envelope
    assert (got.id, got.kind, got.queue, got.owner) == (env.id, env.kind, env.queue, "bob")
    assert got.payload == {"x": [1, 2]} and got.idempotency_key == "k1"
    assert (got.priority, got.max_attempts, got.attempt) == (2, 4, 1)
    assert lease.worker == "w-7" and lease.token
    assert before + 29 <= lease.expires_at <= time.time() + 31
    record = await status(backend, env.id)
    assert record["state"] == "running" and record["attempt"] == 1
    assert record["started_at"] is not None


async def test_expired_lease_is_rescued_and_redelivered(
    backend: Backend, clock: ShiftClock
) -> None:
    # Given a job claimed with a lease and no heartbeat
    env = envelope()
    await backend.enqueue([env])
    (first,) = await claim(backend, lease_for=LONG)
    assert await backend.expired(limit=10) == []  # not yet lapsed
    # When the lease lapses, the backend reports it as a fact, changing nothing
    clock.advance(LONG + 1)
    (lapsed,) = await backend.expired(limit=10)
    assert lapsed.lease.job_id == env.id and lapsed.lease.token == first.token
    assert lapsed.lease.worker == "w1" and lapsed.lease.envelope.attempt == 1
    assert not lapsed.cancel_requested and lapsed.lease.expires_at < clock.now()
    assert (await status(backend, env.id))["state"] == "running"
    # And once the worker's decision (retry at once) is applied
    assert len(await rescue(backend, clock)) == 1
    record = await status(backend, env.id)
    assert record["state"] == "retrying" and record["error"]["type"] == "LeaseExpired"
    # Then a second claim gets it again, as attempt 2 with a fresh token
    (second,) = await claim(backend, worker="w2")
    assert second.job_id == env.id
    assert second.envelope.attempt == 2
    assert second.token != first.token
    assert await backend.expired(limit=10) == []


async def test_stale_lease_changes_nothing_after_redelivery(
    backend: Backend, clock: ShiftClock
) -> None:
    # Given a job whose first lease lapsed and which was re-delivered
    env = envelope()
    await backend.enqueue([env])
    (first,) = await claim(backend, lease_for=LONG, worker="slow")
    clock.advance(LONG + 1)
    assert len(await rescue(backend, clock)) == 1
    (second,) = await claim(backend, worker="fresh")
    # When the slow first worker reports with its stale lease
    assert await backend.settle([done(first, "stale")]) == [False]
    assert await backend.settle(
        [
            Outcome(
                lease=first, state=JobState.RETRYING, run_at=time.time() + 60, error={"type": "X"}
            )
        ]
    ) == [False]
    assert await backend.settle([Outcome(lease=first, state=JobState.QUEUED, refund=True)]) == [
        False
    ]
    assert await backend.settle([Outcome(lease=first, state=JobState.DEAD)]) == [False]
    (ext,) = await backend.extend([first], lease_for=LONG)
    assert await backend.progress(first, 0.9, "stale") is False
    # Then nothing changed: the job still runs under the second lease
    assert ext.held is False
    record = await status(backend, env.id)
    assert record["state"] == "running" and record["attempt"] == 2
    assert record["result"] is None and record["progress"] is None
    # And the second lease's ack wins
    assert await backend.settle([done(second, "fresh")]) == [True]
    assert await backend.settle([done(first, "stale")]) == [False]
    record = await status(backend, env.id)
    assert record["state"] == "succeeded" and record["result"] == "fresh"


async def test_settle_reports_each_outcome_of_a_batch(backend: Backend) -> None:
    envs = [envelope() for _ in range(3)]
    await backend.enqueue(envs)
    leases = await claim(backend, limit=3)
    assert await backend.settle([done(leases[0], 1), done(leases[1], 2)]) == [True, True]
    mixed = [done(leases[0], "again"), done(leases[2], 3)]
    assert await backend.settle(mixed) == [False, True]
    results = [(await status(backend, e.id))["result"] for e in envs]
    assert results == [1, 2, 3]


async def test_heartbeat_keeps_a_job_leased_past_its_first_expiry(
    backend: Backend, clock: ShiftClock
) -> None:
    # Given a job claimed with a 30 s lease
    env = envelope()
    await backend.enqueue([env])
    (lease,) = await claim(backend, lease_for=30)
    # When the worker heartbeats every 10 s for a minute
    for _ in range(6):
        clock.advance(10)
        (ext,) = await backend.extend([lease], lease_for=30)
        assert ext.held and not ext.cancel_requested
        assert await backend.expired(limit=10) == []
    # Then the job is still running under the same lease, and its ack is taken
    assert (await status(backend, env.id))["state"] == "running"
    assert await backend.settle([done(lease)]) == [True]


async def test_lease_lapses_once_heartbeats_stop(backend: Backend, clock: ShiftClock) -> None:
    env = envelope()
    await backend.enqueue([env])
    (lease,) = await claim(backend, lease_for=30)
    clock.advance(20)
    await backend.extend([lease], lease_for=30)
    clock.advance(29)
    assert await backend.expired(limit=10) == []
    clock.advance(2)
    assert len(await rescue(backend, clock)) == 1
    (ext,) = await backend.extend([lease], lease_for=LONG)
    assert ext.held is False


async def test_expired_lease_on_the_last_attempt_goes_dead(
    backend: Backend, clock: ShiftClock
) -> None:
    # Given a job with a budget of two attempts
    env = envelope(max_attempts=2)
    await backend.enqueue([env])
    # When both attempts lose their lease
    await claim(backend, lease_for=LONG)
    clock.advance(LONG + 1)
    assert len(await rescue(backend, clock)) == 1
    assert (await status(backend, env.id))["state"] == "retrying"
    (again,) = await claim(backend, lease_for=LONG)
    assert again.envelope.attempt == 2
    clock.advance(LONG + 1)
    assert len(await rescue(backend, clock)) == 1
    # Then the job is dead, kept, and never claimed again
    record = await status(backend, env.id)
    assert record["state"] == "dead" and record["attempt"] == 2
    assert record["finished_at"] is not None and record["error"] is not None
    assert await claim(backend) == []
    assert (await backend.stats())["q"]["dead"] == 1


async def test_settle_dead_ends_the_job_dead(backend: Backend) -> None:
    env = envelope(max_attempts=1)
    await backend.enqueue([env])
    (lease,) = await claim(backend)
    error = {"type": "ValueError", "message": "boom", "traceback": "..."}
    assert await backend.settle([Outcome(lease=lease, state=JobState.DEAD, error=error)]) == [True]
    record = await status(backend, env.id)
    assert record["state"] == "dead" and record["error"] == error
    assert record["finished_at"] is not None
    assert await claim(backend) == []


async def test_retrying_job_waits_for_its_run_at(backend: Backend, clock: ShiftClock) -> None:
    # Given a job whose first attempt failed with a retry in 30 s
    env = envelope()
    await backend.enqueue([env])
    (lease,) = await claim(backend)
    error = {"type": "IOError", "message": "blip"}
    retry = Outcome(lease=lease, state=JobState.RETRYING, error=error, run_at=clock.now() + 30)
    assert await backend.settle([retry]) == [True]
    record = await status(backend, env.id)
    assert record["state"] == "retrying" and record["error"] == error
    # When claimed before and after run_at
    early = await claim(backend)
    stats = (await backend.stats())["q"]
    clock.advance(31)
    (late,) = await claim(backend)
    # Then only the late claim gets it, as attempt 2
    assert early == []
    assert stats["scheduled"] == 1 and stats["queued"] == 0
    assert late.job_id == env.id and late.envelope.attempt == 2


async def test_settle_stores_the_handlers_budget(backend: Backend) -> None:
    env = envelope(max_attempts=3)
    await backend.enqueue([env])
    (lease,) = await claim(backend)
    outcome = Outcome(lease=lease, state=JobState.RETRYING, run_at=time.time(), max_attempts=7)
    assert await backend.settle([outcome]) == [True]
    assert (await status(backend, env.id))["max_attempts"] == 7


async def test_requeue_of_a_dead_job_gives_a_queued_job_with_attempt_zero(
    backend: Backend,
) -> None:
    # Given a dead job
    env = envelope(max_attempts=1)
    await backend.enqueue([env])
    (lease,) = await claim(backend)
    await backend.settle([Outcome(lease=lease, state=JobState.DEAD, error={"type": "E"})])
    # When it is re-queued
    row = await backend.requeue(env.id)
    # Then it is queued with a fresh budget and runs again from attempt 1
    assert row.state == "queued" and row.attempt == 0
    record = await status(backend, env.id)
    assert record["state"] == "queued" and record["attempt"] == 0
    assert record["finished_at"] is None
    (again,) = await claim(backend)
    assert again.job_id == env.id and again.envelope.attempt == 1


async def test_release_with_refund_gives_the_attempt_back(backend: Backend) -> None:
    # Given a running job on its first attempt
    env = envelope()
    await backend.enqueue([env])
    (lease,) = await claim(backend)
    # When the worker releases it on shutdown
    release = Outcome(
        lease=lease,
        state=JobState.QUEUED,
        refund=True,
        error={"type": "Released", "message": "worker shut down"},
    )
    assert await backend.settle([release]) == [True]
    # Then it is queued again with the attempt refunded, and the next claim is attempt 1
    record = await status(backend, env.id)
    assert record["state"] == "queued" and record["attempt"] == 0
    (again,) = await claim(backend)
    assert again.envelope.attempt == 1 and again.token != lease.token


async def test_release_without_refund_spends_the_attempt(backend: Backend) -> None:
    env = envelope()
    await backend.enqueue([env])
    (lease,) = await claim(backend)
    assert await backend.settle([Outcome(lease=lease, state=JobState.QUEUED)]) == [True]
    assert (await status(backend, env.id))["attempt"] == 1
    (again,) = await claim(backend)
    assert again.envelope.attempt == 2


async def test_idempotency_key_returns_the_first_job_for_the_same_owner(
    backend: Backend,
) -> None:
    # Given a job enqueued by alice with key k
    first = envelope(owner="alice", key="k")
    assert [(r.id, r.created) for r in await backend.enqueue([first])] == [(first.id, True)]
    # When alice enqueues again with the same key, and bob uses the same key
    repeat = envelope(owner="alice", key="k")
    other = envelope(owner="bob", key="k")
    (r_repeat,) = await backend.enqueue([repeat])
    (r_other,) = await backend.enqueue([other])
    # Then alice gets her first job back and bob gets a new one
    assert (r_repeat.id, r_repeat.created) == (first.id, False)
    assert await backend.get(repeat.id) is None
    assert (r_other.id, r_other.created) == (other.id, True)
    assert len(await claim(backend)) == 2


async def test_idempotency_key_repeated_within_one_batch(backend: Backend) -> None:
    a, b, c = envelope(key="x"), envelope(key="x"), envelope()
    results = await backend.enqueue([a, b, c])
    assert [(r.id, r.created) for r in results] == [(a.id, True), (a.id, False), (c.id, True)]


async def test_idempotency_key_still_answers_after_the_job_finished(backend: Backend) -> None:
    first = envelope(key="once")
    await backend.enqueue([first])
    (lease,) = await claim(backend)
    await backend.settle([done(lease)])
    (again,) = await backend.enqueue([envelope(key="once")])
    assert (again.id, again.created) == (first.id, False)


async def test_batch_enqueue_is_all_or_nothing(backend: Backend) -> None:
    # Given a batch whose last envelope repeats the first one's id
    a, b = envelope(), envelope()
    dup = envelope(id=a.id)
    # When it is enqueued
    with pytest.raises(BackendError):
        await backend.enqueue([a, b, dup])
    # Then none of the batch is stored
    assert await backend.get(a.id) is None
    assert await backend.get(b.id) is None
    assert await claim(backend) == []
    assert await backend.changes_since(0) == []


async def test_batch_enqueue_colliding_with_a_stored_job_stores_nothing(
    backend: Backend,
) -> None:
    stored = envelope()
    await backend.enqueue([stored])
    fresh = envelope()
    with pytest.raises(BackendError):
        await backend.enqueue([fresh, envelope(id=stored.id)])
    assert await backend.get(fresh.id) is None
    assert [le.job_id for le in await claim(backend)] == [stored.id]


async def test_stats_match_reality(backend: Backend) -> None:
    # Given, in queue s: one dead, one running, two ready (one 5 s old), one scheduled
    dead = envelope("s", priority=-2, max_attempts=1)
    running = envelope("s", priority=-1)
    ready = [envelope("s", run_at=time.time() - 5), envelope("s")]
    scheduled = envelope("s", delay=3600)
    other = envelope("t")
    await backend.enqueue([dead, running, *ready, scheduled, other])
    (lease,) = await claim(backend, "s", limit=1)
    assert lease.job_id == dead.id
    await backend.settle([Outcome(lease=lease, state=JobState.DEAD)])
    (lease,) = await claim(backend, "s", limit=1)
    assert lease.job_id == running.id
    # When stats are read
    stats = await backend.stats()
    # Then each count matches, and the oldest ready job's age is reported
    s = stats["s"]
    assert (s["queued"], s["scheduled"], s["running"], s["dead"]) == (2, 1, 1, 1)
    assert 4.5 < s["oldest_age_s"] < 60
    assert (stats["t"]["queued"], stats["t"]["running"]) == (1, 0)
    assert stats["t"]["oldest_age_s"] >= 0


async def test_stats_of_a_queue_with_only_scheduled_jobs_has_no_age(backend: Backend) -> None:
    await backend.enqueue([envelope("s", delay=3600)])
    s = (await backend.stats())["s"]
    assert (s["queued"], s["scheduled"]) == (0, 1)
    assert s["oldest_age_s"] == 0


#: How long the waits below may wait: each must end long before (by a wake-up, a poll or a
#: due job), never asserted to end within a bound that a loaded machine could miss.
WAIT_S = 60.0


async def test_wait_returns_soon_after_an_enqueue(backend: Backend) -> None:
    # Given a claimer that found nothing and now waits
    assert await claim(backend) == []

    async def enqueue_later() -> None:
        await anyio.sleep(0.1)
        await backend.enqueue([envelope()])

    # When a job is enqueued while it waits (for up to a minute)
    start = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(enqueue_later)
        await backend.wait(["q"], WAIT_S)
    # Then it wakes long before the timeout (how soon is not asserted: loaded machines)
    assert time.monotonic() - start < WAIT_S / 2
    assert len(await claim(backend)) == 1


async def test_wait_after_an_empty_claim_sleeps_until_timeout(backend: Backend) -> None:
    # Given a claimer that found nothing (on a queue of its own: a server shared with other
    # test runs may announce work on theirs)
    queue = f"idle-{uuid7()}"
    assert await claim(backend, queue) == []
    # When it waits 0.3 s and nothing happens
    start = time.monotonic()
    await backend.wait([queue], 0.3)
    elapsed = time.monotonic() - start
    # Then it slept (close to) the whole timeout instead of returning at once
    assert 0.2 <= elapsed < 3.0


async def test_wait_does_not_sleep_past_the_next_scheduled_job(backend: Backend) -> None:
    await backend.enqueue([envelope(delay=0.3)])
    assert await claim(backend) == []
    start = time.monotonic()
    await backend.wait(["q"], WAIT_S)
    assert time.monotonic() - start < WAIT_S / 2
    await anyio.sleep(max(0.0, 0.35 - (time.monotonic() - start)))
    assert len(await claim(backend)) == 1


async def test_purge_removes_waiting_jobs_only(backend: Backend) -> None:
    # Given in queue p: two queued, one scheduled, one running, one succeeded; one in queue o
    done_env, running_env = envelope("p", priority=-2), envelope("p", priority=-1)
    waiting = [envelope("p"), envelope("p"), envelope("p", delay=3600)]
    other = envelope("o")
    await backend.enqueue([done_env, running_env, *waiting, other])
    (lease,) = await claim(backend, "p", limit=1)
    await backend.settle([done(lease)])
    (running,) = await claim(backend, "p", limit=1)
    # When queue p is purged
    removed = await backend.purge("p")
    # Then only its waiting jobs are gone, with their feed entries (a prune deletes only
    # finished jobs' entries: a purged job's stayed for good)
    assert removed == 3
    for env in waiting:
        assert await backend.get(env.id) is None
        assert await backend.changes_since(0, job_id=env.id) == []
    assert await backend.changes_since(0, job_id=other.id) != []
    assert (await status(backend, done_env.id))["state"] == "succeeded"
    assert (await status(backend, running_env.id))["state"] == "running"
    assert (await status(backend, other.id))["state"] == "queued"
    assert await backend.settle([done(running)]) == [True]
    assert await backend.purge("p") == 0


async def test_rescue_applies_decisions_with_their_follow_ups(
    backend: Backend, clock: ShiftClock
) -> None:
    # Given two lapsed jobs: one with budget left, one on its last attempt
    again, last = envelope(max_attempts=3), envelope(max_attempts=1)
    await backend.enqueue([again, last])
    await claim(backend, lease_for=LONG, limit=2)
    clock.advance(LONG + 1)
    # When the worker decides (retry / dead) and the dead one's notification goes with it
    lapsed = {one.lease.job_id: one for one in await backend.expired(limit=10)}
    assert set(lapsed) == {again.id, last.id}
    notify = envelope("notify", kind="offload.webhook", payload={"job_id": last.id})
    decisions = [
        Outcome(lease=lapsed[again.id].lease, state=JobState.RETRYING, run_at=clock.now() + 5),
        Outcome(lease=lapsed[last.id].lease, state=JobState.DEAD, follow_ups=(notify,)),
    ]
    assert await backend.rescue(decisions) == [True, True]
    # Then each job is as decided, and the notification is queued with the dead one
    assert (await status(backend, again.id))["state"] == "retrying"
    assert (await status(backend, last.id))["state"] == "dead"
    assert getattr(await backend.get(notify.id), "state", None) == "queued"
    assert await backend.expired(limit=10) == []
    # And a second application of the same decisions (another worker's rescuer) is stale
    assert await backend.rescue(decisions) == [False, False]


async def test_rescue_is_fenced_by_a_heartbeat_that_renewed_the_lease(
    backend: Backend, clock: ShiftClock
) -> None:
    # Given a lapsed lease that a rescuer has read
    env = envelope()
    await backend.enqueue([env])
    (lease,) = await claim(backend, lease_for=LONG)
    clock.advance(LONG + 1)
    (lapsed,) = await backend.expired(limit=10)
    # When its worker, only slow, heartbeats before the decision is applied
    (ext,) = await backend.extend([lease], lease_for=LONG)
    assert ext.held
    decision = Outcome(lease=lapsed.lease, state=JobState.RETRYING, run_at=clock.now())
    # Then the decision changes nothing and the worker's own outcome still applies
    assert await backend.rescue([decision]) == [False]
    assert (await status(backend, env.id))["state"] == "running"
    assert await backend.settle([done(lease, "ok")]) == [True]


async def test_a_worker_killed_again_and_again_backs_off_and_ends_by_the_handlers_budget(
    backend: Backend, clock: ShiftClock
) -> None:
    # Given a message allowing 5 attempts whose handler allows 3, backing off 10 s, 20 s
    env = envelope(max_attempts=5)
    await backend.enqueue([env])
    policy = Policy(max_attempts=3, backoff=Backoff(base_s=10.0, jitter=0.0))
    delays = []
    for attempt in (1, 2):
        # When the worker running it is killed (its lease lapses)
        (lease,) = await claim(backend, lease_for=LONG)
        assert lease.envelope.attempt == attempt
        clock.advance(LONG + 1)
        (decision,) = await rescue(backend, clock, policy)
        # Then it waits out the handler's backoff before it runs again
        assert decision.state is JobState.RETRYING and decision.run_at is not None
        delays.append(round(decision.run_at - clock.now()))
        assert await claim(backend) == []
        assert (await backend.stats())["q"]["scheduled"] == 1
        clock.advance(delays[-1] + 1)
    assert delays == [10, 20]
    # And the third kill ends it dead by the handler's budget, not the message's
    (lease,) = await claim(backend, lease_for=LONG)
    assert lease.envelope.attempt == 3
    clock.advance(LONG + 1)
    (decision,) = await rescue(backend, clock, policy)
    assert decision.state is JobState.DEAD
    record = await status(backend, env.id)
    assert record["state"] == "dead" and record["attempt"] == 3
    assert record["max_attempts"] == 3 and record["error"]["type"] == "LeaseExpired"
    assert await claim(backend) == []


async def test_a_claim_over_hundreds_of_queues_takes_them_in_claim_order(
    backend: Backend,
) -> None:
    # SQLite refused a query of more than 500 parts: a worker of 500 queues claimed nothing.
    queues = [f"q{n:03d}" for n in range(520)]
    first, second, third = (
        envelope("q519", priority=0),
        envelope("q450", priority=1),
        envelope("q010", priority=2),
    )
    await backend.enqueue([third, second, first])
    leases = await backend.claim(queues, worker_id="w", lease_for=LONG, limit=2)
    assert [le.job_id for le in leases] == [first.id, second.id]
    (last,) = await backend.claim(queues, worker_id="w", lease_for=LONG, limit=2)
    assert last.job_id == third.id
