"""Follow-up jobs (notifications) enqueue atomically with the transition that causes them."""

from __future__ import annotations

import dataclasses

import pytest

from offload.brokers import Backend
from offload.contract import JobState, Outcome

from ._support import LONG, ShiftClock, envelope, rescue

pytestmark = pytest.mark.anyio


async def test_follow_ups_of_an_applied_outcome_are_enqueued(backend: Backend) -> None:
    # Given a running job whose outcome carries a follow-up,
    job = envelope("work")
    await backend.enqueue([job])
    (lease,) = await backend.claim(["work"], worker_id="w", lease_for=LONG, limit=1)
    notify = envelope("notify", kind="offload.webhook", payload={"job_id": job.id})
    # when the outcome applies,
    applied = await backend.settle(
        [Outcome(lease=lease, state=JobState.SUCCEEDED, result=1, follow_ups=(notify,))]
    )
    # then the follow-up is a queued job of its own.
    assert applied == [True]
    row = await backend.get(notify.id)
    assert row is not None and row.state == "queued" and row.queue == "notify"
    (follow,) = await backend.claim(["notify"], worker_id="w", lease_for=LONG, limit=5)
    assert follow.envelope.payload == {"job_id": job.id}


async def test_follow_ups_of_a_stale_outcome_are_not_enqueued(
    backend: Backend, clock: ShiftClock
) -> None:
    # Given a lease that lapsed and was taken over by another worker,
    job = envelope("work")
    await backend.enqueue([job])
    (first,) = await backend.claim(["work"], worker_id="a", lease_for=LONG, limit=1)
    clock.advance(LONG + 1)
    assert len(await rescue(backend, clock)) == 1
    (second,) = await backend.claim(["work"], worker_id="b", lease_for=LONG, limit=1)
    notify = envelope("notify", kind="offload.webhook")
    # when the first worker reports its outcome late,
    applied = await backend.settle(
        [Outcome(lease=first, state=JobState.SUCCEEDED, follow_ups=(notify,))]
    )
    # then neither the outcome nor its follow-up is stored.
    assert applied == [False]
    assert await backend.get(notify.id) is None
    assert second.job_id == job.id


async def test_cancel_of_a_waiting_job_enqueues_its_follow_ups(backend: Backend) -> None:
    job = envelope("work")
    await backend.enqueue([job])
    notify = envelope("notify", kind="offload.email")
    row = await backend.cancel(job.id, follow_ups=(notify,))
    assert row.state == "cancelled"
    stored = await backend.get(notify.id)
    assert stored is not None and stored.state == "queued"


async def test_cancel_of_a_running_job_leaves_follow_ups_to_its_worker(
    backend: Backend,
) -> None:
    job = envelope("work")
    await backend.enqueue([job])
    await backend.claim(["work"], worker_id="w", lease_for=LONG, limit=1)
    notify = envelope("notify", kind="offload.email")
    row = await backend.cancel(job.id, follow_ups=(notify,))
    assert row.state == "running"
    assert await backend.get(notify.id) is None


async def test_a_failing_follow_up_batch_rolls_back_the_outcome(backend: Backend) -> None:
    # Given a follow-up whose id collides with an existing job (the batch must fail),
    job, other = envelope("work"), envelope("other")
    await backend.enqueue([job, other])
    (lease,) = await backend.claim(["work"], worker_id="w", lease_for=LONG, limit=1)
    clash = dataclasses.replace(envelope("notify"), id=other.id)
    # when the outcome is settled, the whole transaction fails,
    with pytest.raises(Exception):  # noqa: B017 - any backend error
        await backend.settle([Outcome(lease=lease, state=JobState.SUCCEEDED, follow_ups=(clash,))])
    # and the job is still running under its lease, to be settled again.
    row = await backend.get(job.id)
    assert row is not None and row.state == "running"


@pytest.mark.parametrize("given_back", [False, True])
async def test_a_cancel_its_worker_had_not_heard_of_enqueues_the_cancelled_notifications(
    backend: Backend, clock: ShiftClock, given_back: bool
) -> None:
    # Given a running job cancelled between two heartbeats of its worker, and one not,
    job, other = envelope("work"), envelope("work")
    await backend.enqueue([job, other])
    leases = await backend.claim(["work"], worker_id="w", lease_for=LONG, limit=2)
    await backend.cancel(job.id)
    # when both attempts fail and would run again (or are given back at a stop), each with
    # the notifications a cancelled end would send,
    state = JobState.QUEUED if given_back else JobState.RETRYING
    notes = {le.job_id: envelope("notify", kind="offload.webhook") for le in leases}
    outcomes = [
        Outcome(
            lease=le,
            state=state,
            error={"type": "RuntimeError", "message": "boom"},
            run_at=clock.now(),
            refund=given_back,
            on_cancel=(notes[le.job_id],),
        )
        for le in leases
    ]
    applied = await backend.settle(outcomes)
    # then the cancelled one ends so, its answer says so, and its notification is queued;
    assert applied == [True, True]
    assert applied.cancelled == {job.id}
    row = await backend.get(job.id)
    assert row is not None and row.state == "cancelled"
    sent = await backend.get(notes[job.id].id)
    assert sent is not None and sent.state == "queued" and sent.queue == "notify"
    # the other runs again, and no notification of an end it did not reach is stored.
    row = await backend.get(other.id)
    assert row is not None and row.state == state
    assert await backend.get(notes[other.id].id) is None


async def test_a_rescue_that_a_cancel_overtook_enqueues_the_cancelled_notifications(
    backend: Backend, clock: ShiftClock
) -> None:
    # Given a lapsed lease, read by a rescuer that decides to retry the job,
    job = envelope("work")
    await backend.enqueue([job])
    await backend.claim(["work"], worker_id="w", lease_for=LONG, limit=1)
    clock.advance(LONG + 1)
    (lapsed,) = await backend.expired(limit=10)
    assert not lapsed.cancel_requested
    # when a cancel comes before its decision is applied,
    await backend.cancel(job.id)
    note = envelope("notify", kind="offload.email")
    retry = Outcome(
        lease=lapsed.lease, state=JobState.RETRYING, run_at=clock.now(), on_cancel=(note,)
    )
    applied = await backend.rescue([retry])
    # then the job ends cancelled, with its notification.
    assert applied == [True] and applied.cancelled == {job.id}
    row = await backend.get(job.id)
    assert row is not None and row.state == "cancelled"
    sent = await backend.get(note.id)
    assert sent is not None and sent.state == "queued"
