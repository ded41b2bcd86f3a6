"""Limits per kind contract: a gated claim leases no more of a kind than its `max_running`
and `rate` allow across every claimer, leaves the rest queued with their attempts unspent,
frees a slot on settle or once a lapsed lease is rescued, counts starts in a sliding window
(on a moved clock), and wakes a waiting claimer when a slot or a start frees; on every
backend."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from offload.brokers import Backend
from offload.contract import EnqueueResult, KindLimits

from ._support import LONG, PATIENCE_S, ShiftClock, done, envelope, rescue, status

pytestmark = pytest.mark.anyio

LIMITED, FREE = "test.limited", "test.free"


async def gated(backend: Backend, limit: int = 50, lease_for: float = LONG) -> list[str]:
    leases = await backend.claim_gated(["q"], worker_id="w1", lease_for=lease_for, limit=limit)
    return [le.job_id for le in leases]


async def fill(backend: Backend, n: int, kind: str = LIMITED) -> list[str]:
    jobs = [envelope(kind=kind) for _ in range(n)]
    await backend.enqueue(jobs)
    return [j.id for j in jobs]


def limited(max_running: int | None = None, rate: int | None = None, per_s: float | None = None):
    return KindLimits(kind=LIMITED, queue="q", max_running=max_running, rate=rate, per_s=per_s)


async def test_max_running_caps_the_claims_and_the_rest_stay_queued_unspent(
    backend: Backend,
) -> None:
    # Given a kind limited to 2 running, with 5 jobs waiting
    await backend.declare_limits([limited(max_running=2)])
    ids = await fill(backend, 5)
    # When claims ask for many, twice
    first, second = await gated(backend), await gated(backend)
    # Then only 2 run; the others stay queued with no attempt spent
    assert (len(first), second) == (2, [])
    for job_id in set(ids) - set(first):
        record = await status(backend, job_id)
        assert (record["state"], record["attempt"]) == ("queued", 0)


async def test_a_settled_job_frees_its_slot(backend: Backend) -> None:
    await backend.declare_limits([limited(max_running=1)])
    await fill(backend, 3)
    (lease,) = await backend.claim_gated(["q"], worker_id="w1", lease_for=LONG, limit=10)
    assert await gated(backend) == []
    await backend.settle([done(lease)])
    assert len(await gated(backend)) == 1


async def test_other_kinds_of_the_queue_are_claimed_past_a_held_back_kind(
    backend: Backend,
) -> None:
    # Given a limited kind's backlog ahead of a free kind's jobs in one queue
    await backend.declare_limits([limited(max_running=1)])
    held = await fill(backend, 20)
    free = await fill(backend, 3, kind=FREE)
    # When claims ask for 10, then for more
    first, second = await gated(backend, limit=10), await gated(backend, limit=10)
    # Then one limited job runs, and every free one
    assert set(first) | set(second) == {held[0], *free}


async def test_a_unique_job_held_back_by_a_limit_still_holds_its_key(backend: Backend) -> None:
    # Given a kind limited to 1 running, its slot taken, and a unique='queued' job waiting
    await backend.declare_limits([limited(max_running=1)])
    await fill(backend, 1)
    (lease,) = await backend.claim_gated(["q"], worker_id="w1", lease_for=LONG, limit=10)
    first = dataclasses.replace(envelope(kind=LIMITED), unique_key="k", unique="queued")
    await backend.enqueue([first])
    # When a claim passes it over (held back by the limit)
    assert await gated(backend) == []
    # Then it is still queued, never started, and holds its key
    record = await status(backend, first.id)
    assert (record["state"], record["started_at"]) == ("queued", None)
    again = dataclasses.replace(envelope(kind=LIMITED), unique_key="k", unique="queued")
    assert await backend.enqueue([again]) == [
        EnqueueResult(id=first.id, created=False, unique_repeat=True)
    ]
    # And once the slot frees and the claim starts it, the key is free again
    await backend.settle([done(lease)])
    assert await gated(backend) == [first.id]
    assert (await backend.enqueue([again]))[0].created


async def test_the_rate_is_a_sliding_window_on_the_backend_clock(
    backend: Backend, clock: ShiftClock
) -> None:
    # Given a kind allowed 3 starts per minute, with 10 jobs waiting
    await backend.declare_limits([limited(rate=3, per_s=60.0)])
    await fill(backend, 10)
    # When claims ask for many at once, then 40 s later
    assert len(await gated(backend)) == 3
    clock.advance(40)
    assert await gated(backend) == []
    # Then the next starts come only as the first ones leave the window (60 s after them)
    clock.advance(19)
    assert await gated(backend) == []
    clock.advance(2)
    assert len(await gated(backend)) == 3
    clock.advance(30)
    assert await gated(backend) == []


async def test_both_limits_apply_together(backend: Backend, clock: ShiftClock) -> None:
    await backend.declare_limits([limited(max_running=2, rate=3, per_s=60.0)])
    await fill(backend, 10)
    leases = await backend.claim_gated(["q"], worker_id="w1", lease_for=LONG, limit=10)
    assert len(leases) == 2  # the running cap first
    await backend.settle([done(le) for le in leases])
    assert len(await gated(backend)) == 1  # then the third start of the minute
    clock.advance(61)
    assert len(await gated(backend)) == 1  # a new minute, but 2 running again
    assert await gated(backend) == []


async def test_a_lapsed_lease_holds_its_slot_until_it_is_rescued(
    backend: Backend, clock: ShiftClock
) -> None:
    await backend.declare_limits([limited(max_running=1)])
    await fill(backend, 2)
    assert len(await gated(backend, lease_for=5)) == 1
    clock.advance(10)  # the lease lapsed: still running until rescued
    assert await gated(backend) == []
    assert len(await rescue(backend, clock)) == 1
    assert len(await gated(backend)) == 1


async def test_the_latest_declaration_wins_and_limits_show_their_usage(
    backend: Backend,
) -> None:
    await backend.declare_limits([limited(max_running=5, rate=100, per_s=60.0)])
    await backend.declare_limits([limited(max_running=1)])
    await fill(backend, 3)
    await gated(backend)
    (lim,) = await backend.limits()
    assert (lim.kind, lim.queue, lim.max_running, lim.rate, lim.running) == (
        LIMITED,
        "q",
        1,
        None,
        1,
    )
    # A declaration with no limit removes the kind's entry: its jobs are claimed freely
    await backend.declare_limits([limited()])
    assert await backend.limits() == []
    assert len(await gated(backend)) == 2


async def test_a_rate_start_counts_in_the_usage(backend: Backend) -> None:
    await backend.declare_limits([limited(rate=10, per_s=3600.0)])
    await fill(backend, 4)
    await gated(backend)
    (lim,) = await backend.limits()
    assert (lim.rate, lim.per_s, lim.recent_starts, lim.running) == (10, 3600.0, 4, 4)


async def test_a_waiting_claimer_wakes_when_a_slot_frees(backend: Backend) -> None:
    # Given a claimer held back by max_running, waiting (long) for work
    await backend.declare_limits([limited(max_running=1)])
    await fill(backend, 2)
    (lease,) = await backend.claim_gated(["q"], worker_id="w1", lease_for=LONG, limit=10)
    assert await gated(backend) == []
    # the ready job it may not take does not end the wait: a wake-up already on its way
    # (the enqueue's, delivered after the claim) may end one, and the claimer, finding
    # nothing, waits again; it does not spin
    for _ in range(3):
        waiting = asyncio.create_task(backend.wait(["q"], 120.0))
        await asyncio.sleep(0.05)
        if not waiting.done():
            break
        assert await gated(backend) == []
    assert not waiting.done()
    # When the running job settles, Then the wait ends, and the next job is claimed
    await backend.settle([done(lease)])
    await asyncio.wait_for(waiting, PATIENCE_S)
    assert len(await gated(backend)) == 1


async def test_a_claimer_held_back_by_the_rate_waits_until_the_next_start_is_due(
    backend: Backend,
) -> None:
    await backend.declare_limits([limited(rate=1, per_s=1.0)])
    await fill(backend, 2)
    assert len(await gated(backend)) == 1
    assert await gated(backend) == []
    # The wait ends when the first start leaves the window (1 s), not at its 120 s timeout
    await asyncio.wait_for(backend.wait(["q"], 120.0), PATIENCE_S)
    got = []
    async with asyncio.timeout(PATIENCE_S):
        while not got:
            got = await gated(backend)
            await asyncio.sleep(0.05)
    assert len(got) == 1


async def test_a_gated_claim_over_hundreds_of_queues_keeps_claim_order_and_limits(
    backend: Backend,
) -> None:
    # SQLite refused a query of more than 500 parts: a worker of 500 queues claimed nothing.
    queues = [f"q{n:03d}" for n in range(520)]
    await backend.declare_limits([dataclasses.replace(limited(max_running=1), queue="q450")])
    late = envelope("q519", priority=0)
    held = [envelope("q450", priority=1, kind=LIMITED) for _ in range(2)]
    free = envelope("q010", priority=2, kind=FREE)
    await backend.enqueue([late, *held, free])
    leases = await backend.claim_gated(queues, worker_id="w1", lease_for=LONG, limit=10)
    assert [le.job_id for le in leases] == [late.id, held[0].id, free.id]
