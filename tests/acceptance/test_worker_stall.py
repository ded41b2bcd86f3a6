"""A worker that stalled past the leases of the jobs it holds ahead checks them before it
starts one: a lease another worker took is dropped unstarted, one still its own is renewed
and run. (tests/e2e/test_stall.py freezes real worker processes with SIGSTOP.)"""

from __future__ import annotations

import asyncio

import pytest

from offload import App, Context, Message
from offload.contract import JobState, Lease, Outcome
from offload.worker.lease import Renewal
from offload.worker.runner import Worker, _Job

pytestmark = pytest.mark.anyio


class Step(Message):
    n: int = 0


def stalled(worker: Worker, seconds: float) -> Renewal:
    """A renewal that left `seconds` ago: what a worker frozen that long holds."""
    loop = asyncio.get_running_loop()
    return Renewal(loop.time() - seconds, worker.app.clock.now() - seconds)


async def lapse_and_take(app: App, lease: Lease) -> None:
    """Let `lease` lapse, then rescue the job and claim it as another worker does."""
    backend = app._require_backend()
    async with asyncio.timeout(10):
        while not await backend.expired(limit=1):  # noqa: ASYNC110 (polls the backend)
            await asyncio.sleep(0.01)
    assert await backend.rescue([Outcome(lease=lease, state=JobState.RETRYING)]) == [True]
    (taken,) = await backend.claim(["default"], worker_id="other", lease_for=60, limit=1)
    assert taken.job_id == lease.job_id


async def test_a_held_job_whose_lease_another_worker_took_is_dropped_unstarted(
    app: App,
) -> None:
    app.message("s.taken", queue="default")(Step)
    ran: list[str] = []

    @app.handles(Step)
    async def handle(msg: Step, ctx: Context) -> None:
        ran.append(ctx.job_id)

    await app.open()
    await app.enqueue(Step())
    worker = Worker(app, concurrency=1, lease_s=2.0)
    backend = app._require_backend()
    (lease,) = await backend.claim(worker.queues, worker_id=worker.id, lease_for=0.05, limit=1)
    # Given a job held ahead by a worker that then froze past its lease, while another
    # worker took the job,
    worker._hold([lease], stalled(worker, 5.0))
    await lapse_and_take(app, lease)
    # when the worker wakes and a slot is free,
    worker._fill()
    # then it starts nothing before asking, and drops the job unstarted and unreported.
    assert worker.running == 0 and worker.held_ahead == 1
    async with asyncio.timeout(10):
        while worker.held_ahead:  # noqa: ASYNC110 (polls the worker's state)
            await asyncio.sleep(0.01)
    assert ran == [] and worker.running == 0 and worker._pending == []
    worker._threads.shutdown()
    await app.close()


async def test_a_held_job_whose_lease_is_still_its_own_is_renewed_and_runs(app: App) -> None:
    app.message("s.kept", queue="default")(Step)
    ran: list[str] = []

    @app.handles(Step)
    async def handle(msg: Step, ctx: Context) -> None:
        ran.append(ctx.job_id)

    await app.open()
    job = await app.enqueue(Step())
    worker = Worker(app, concurrency=1, lease_s=2.0)
    backend = app._require_backend()
    (lease,) = await backend.claim(worker.queues, worker_id=worker.id, lease_for=2.0, limit=1)
    # Given a job held ahead whose lease may have lapsed by the worker's clocks (it stalled),
    # though nobody took it,
    worker._hold([lease], stalled(worker, 5.0))
    # when a slot is free, the worker renews the lease first, then runs the job.
    worker._fill()
    assert worker.running == 0
    async with asyncio.timeout(10):
        while not worker._pending:  # noqa: ASYNC110 (polls the worker's state)
            await asyncio.sleep(0.01)
    assert ran == [job.id]
    assert await backend.settle(worker._pending) == [True]
    assert (await app.status(job.id))["state"] == "succeeded"
    worker._threads.shutdown()
    await app.close()


async def test_an_outcome_refused_for_a_lease_another_worker_took_is_said_and_not_counted(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    app.message("s.late", queue="default")(Step)

    @app.handles(Step)
    async def handle(msg: Step, ctx: Context) -> None:
        pass

    await app.open()
    job = await app.enqueue(Step())
    worker = Worker(app, concurrency=1, lease_s=2.0)
    backend = app._require_backend()
    (lease,) = await backend.claim(worker.queues, worker_id=worker.id, lease_for=0.05, limit=1)
    # Given a run that ended after its worker froze past the lease, while another worker
    # rescued and took the job (the run was counted as it ended),
    await lapse_and_take(app, lease)
    worker._jobs[lease.job_id] = ran = _Job(lease=lease, renewed=stalled(worker, 5.0))
    late = Outcome(lease=lease, state=JobState.SUCCEEDED)
    worker._count(late)
    failed = Outcome(lease=lease, state=JobState.RETRYING)
    worker._count(failed)
    ran.counted = True
    # when the backend refuses its outcomes,
    applied = await backend.settle([late, failed])
    assert applied == [False, False]
    worker._not_recorded([late, failed], applied)
    # then the worker says so (it said nothing: its registry entry counted attempts whose
    # outcome was thrown away), and counts them as no runs.
    said = [r for r in caplog.records if getattr(r, "action", None) == "outcome_not_recorded"]
    assert len(said) == 2 and all(job.id in r.getMessage() for r in said)
    assert "was not recorded" in said[0].getMessage()
    assert (worker.processed, worker.failed) == (0, 0)
    # An outcome sent again after a settle that failed (it may have applied then), or one
    # of no run of this worker's counts (a held job's cancel), is left out of that.
    worker._count(late)
    worker._unknown.add(lease.token)
    worker._not_recorded([late], [False])
    del worker._jobs[lease.job_id]
    worker._not_recorded([late], [False])
    assert worker.processed == 1
    row = await app.get(job.id)
    assert row is not None and row.state == JobState.RUNNING  # the other worker's run
    worker._threads.shutdown()
    await app.close()
