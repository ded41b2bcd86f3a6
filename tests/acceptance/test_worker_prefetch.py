"""Prefetch: short jobs are claimed ahead of free slots; what is held ahead is never lost."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from offload import App, Context, Job, Message
from offload.cli import _slots_shown
from offload.contract import JobState, Lease, Outcome
from offload.worker.runner import Worker

pytestmark = pytest.mark.anyio


class Step(Message):
    n: int = 0
    block: bool = False


def spy_claims(app: App) -> list[int]:
    """Record the `limit` of every claim the app's backend makes."""
    limits: list[int] = []
    backend = app._require_backend()
    claim = backend.claim

    async def recorded(queues: Any, **kw: Any) -> Any:
        limits.append(kw["limit"])
        return await claim(queues, **kw)

    backend.claim = recorded  # type: ignore[method-assign]
    return limits


async def until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 (polls state that sets no event)
            await asyncio.sleep(0.01)


async def test_short_jobs_are_claimed_ahead_and_each_runs_once(
    app: App, start_worker: Callable[..., Any]
) -> None:
    app.message("p.short")(Step)
    runs: list[int] = []

    @app.handles(Step)
    async def handle(msg: Step, ctx: Context) -> None:
        runs.append(msg.n)

    await app.open()
    limits = spy_claims(app)
    await app.enqueue(Step(n=-1))
    worker: Worker = await start_worker(concurrency=2, prefetch=40)
    await until(lambda: len(runs) == 1)  # one short run: the worker now claims ahead
    jobs = await app.enqueue_many([Step(n=i) for i in range(300)])
    for job in jobs[-3:]:
        assert (await Job(job.id, True, app).wait(15)).state is JobState.SUCCEEDED
    await until(lambda: len(runs) == 301)
    assert sorted(runs) == [-1, *range(300)]  # each exactly once
    assert max(limits) == 2 + 40  # free slots plus the whole prefetch in one claim
    assert worker.settled == 301


async def test_long_jobs_are_not_held_ahead(app: App, start_worker: Callable[..., Any]) -> None:
    app.message("p.long")(Step)
    runs: list[int] = []

    @app.handles(Step)
    async def handle(msg: Step, ctx: Context) -> None:
        await asyncio.sleep(0.3)
        runs.append(msg.n)

    await app.open()
    limits = spy_claims(app)
    await app.enqueue(Step(n=-1))
    await start_worker(concurrency=2, prefetch=40)
    await until(lambda: len(runs) == 1)
    claimed_before = len(limits)
    await app.enqueue_many([Step(n=i) for i in range(6)])
    await until(lambda: len(runs) == 7)
    # 0.3 s jobs: 2 slots run well under one job in the 0.1 s horizon, so none is held
    # back from other workers: each claim asks for free slots only.
    assert limits[claimed_before:] and max(limits[claimed_before:]) <= 2


async def warm_and_block(
    app: App,
    start_worker: Callable[..., Any],
    release: asyncio.Event,
    waiting: int,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Worker, list[int], list[Job]]:
    """A worker with one slot busy on a blocking job and `waiting` jobs held ahead (held
    for the test: a slot this long busy would otherwise give them back, see
    `test_jobs_held_ahead_of_hung_slots_go_back_to_an_idle_worker`)."""
    monkeypatch.setattr("offload.worker.prefetch.GIVE_BACK_AFTER_S", 3600.0)
    runs: list[int] = []

    @app.handles(Step)
    async def handle(msg: Step, ctx: Context) -> None:
        if msg.block:
            await release.wait()
        runs.append(msg.n)

    worker: Worker = await start_worker(concurrency=1, prefetch=50)
    await app.enqueue(Step(n=-1))
    await until(lambda: len(runs) == 1)
    # Stored together, one claim takes the blocking job and those held behind it (enqueued
    # once it had run a tenth of a second, a loaded run's, none: a slot held that long
    # finishes little), whatever the warm-up run took (hours of work held ahead)
    worker._prefetch.horizon_s = 3600.0
    stored = await app.enqueue_many(
        [Step(n=0, block=True), *(Step(n=i) for i in range(1, waiting + 1))]
    )
    jobs = stored[1:]  # (behind the blocking job, first by id)
    await until(lambda: worker.held_ahead == waiting)
    return worker, runs, jobs


async def test_jobs_held_ahead_go_back_unspent_when_the_worker_stops(
    app: App, start_worker: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    app.message("p.stop")(Step)
    release = asyncio.Event()
    worker, runs, jobs = await warm_and_block(app, start_worker, release, 20, monkeypatch)
    for job in jobs:
        assert (await app.status(job.id))["state"] == "running"  # claimed, not started
    # The registry says so: one running, twenty held ahead (`offload workers`: 1/1 +20 ahead)
    await app._require_backend().record_worker(worker.info())
    (info,) = await app.workers()
    assert (len(info.running), info.held_ahead) == (1, 20)
    assert _slots_shown(info) == "1/1 +20 ahead"
    worker.request_stop()
    release.set()  # the running job finishes within its grace period
    # The worker releases the App as it stops: read the records once it has stopped.
    await asyncio.wait_for(worker.stopped.wait(), 30)
    assert worker.settled == 1 + 1 + 20
    assert runs == [-1, 0]  # nothing held ahead started after the stop
    for job in jobs:
        record = await app.status(job.id)
        assert record["state"] == "queued" and record["attempt"] == 0
    other = await start_worker()
    await until(lambda: other.settled == 20)
    assert sorted(runs) == list(range(-1, 21))


async def test_cancelling_a_job_held_ahead(
    app: App, start_worker: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    app.message("p.cancel")(Step)
    release = asyncio.Event()
    worker, runs, jobs = await warm_and_block(app, start_worker, release, 5, monkeypatch)
    await app.cancel(jobs[2].id)  # it is "running" (claimed): cancel asks the worker
    record = await Job(jobs[2].id, True, app).wait(10)  # the next heartbeat answers
    assert record.state is JobState.CANCELLED and record.attempt == 1
    assert worker.held_ahead == 4
    release.set()
    for job in jobs:
        await Job(job.id, True, app).wait(10)
    assert sorted(runs) == [-1, 0, 1, 2, 4, 5]  # the cancelled one never ran


async def test_jobs_held_ahead_go_back_when_the_jobs_turn_out_long(
    app: App, start_worker: Callable[..., Any]
) -> None:
    app.message("p.turns-long")(Step)
    runs: list[int] = []
    go_on = asyncio.Event()

    @app.handles(Step)
    async def handle(msg: Step, ctx: Context) -> None:
        if msg.block and msg.n == 0:
            await asyncio.sleep(0.4)  # the first long run: the mean run time rises
        elif msg.block:
            await go_on.wait()  # the rest stay long until the test has looked
        runs.append(msg.n)

    await app.open()
    settled: list[Any] = []
    backend = app._require_backend()
    settle = backend.settle

    async def recorded(outcomes: Any) -> Any:
        settled.extend(outcomes)
        return await settle(outcomes)

    backend.settle = recorded  # type: ignore[method-assign]
    worker: Worker = await start_worker(concurrency=1, prefetch=50)
    await app.enqueue(Step(n=-1))  # one short job: the worker starts claiming ahead
    await until(lambda: len(runs) == 1)
    jobs = await app.enqueue_many([Step(n=i, block=True) for i in range(8)])
    await until(lambda: worker.held_ahead == 7)  # one runs, seven are held

    # As the first long run ends, nothing more may be held: GIVE_BACK_AFTER_S later (the
    # next job still running), the six still held go back to the queue, attempt unspent,
    # for any worker to take.
    def released() -> list[Any]:
        return [o for o in settled if o.state.value == "queued" and o.refund]

    await until(lambda: len(released()) == 6)
    assert runs == [-1, 0] and worker.running == 1 and not worker.held_ahead
    assert {o.error["message"] for o in released()} == {
        "held ahead by a worker whose jobs turned out long; back in the queue"
    }
    go_on.set()
    for job in jobs:
        status = await Job(job.id, True, app).wait(15)
        assert status.state is JobState.SUCCEEDED and status.attempt == 1


async def test_jobs_held_ahead_of_hung_slots_go_back_to_an_idle_worker(
    app: App, start_worker: Callable[..., Any]
) -> None:
    # Every slot of a worker that learned short run times hangs before any long run has
    # ended: the jobs it held ahead go back, unspent, to an idle worker, and it claims no
    # more while its slots stay hung.
    app.message("p.hung")(Step)
    runs: list[int] = []
    hang = asyncio.Event()

    @app.handles(Step)
    async def handle(msg: Step, ctx: Context) -> None:
        if msg.block:
            await hang.wait()
        runs.append(msg.n)

    stuck: Worker = await start_worker(concurrency=2, prefetch=50)
    await app.enqueue_many([Step(n=-1 - i) for i in range(20)])
    await until(lambda: stuck.settled == 20)  # short runs: it claims ahead now
    # One batch, claimed at once: the two hung jobs start, the ten after them are held.
    hung, *jobs = await app.enqueue_many(
        [Step(n=100, block=True), Step(n=101, block=True), *(Step(n=i) for i in range(10))]
    )
    await until(lambda: stuck.running == 2)
    idle: Worker = await start_worker(concurrency=2, prefetch=0)
    for job in jobs[1:]:
        record = await Job(job.id, True, app).wait(15)
        assert record.state is JobState.SUCCEEDED and record.attempt == 1
    assert stuck.held_ahead == 0 and stuck.running == 2 and stuck.settled == 20 + 10
    later = await app.enqueue_many([Step(n=200 + i) for i in range(4)])
    for job in later:
        assert (await Job(job.id, True, app).wait(15)).state is JobState.SUCCEEDED
    # None of them went through the hung worker (claimed and given back: settled there).
    assert idle.settled == 14 and stuck.settled == 30
    hang.set()
    for job in (hung, jobs[0]):
        assert (await Job(job.id, True, app).wait(15)).state is JobState.SUCCEEDED
    assert sorted(runs) == [*range(-20, 0), *range(10), 100, 101, *range(200, 204)]


async def test_a_job_cancelled_before_its_first_step_is_still_reported(app: App) -> None:
    app.message("p.early")(Step)

    @app.handles(Step)
    async def handle(msg: Step, ctx: Context) -> None:
        raise AssertionError("must not run")

    await app.open()
    job = await app.enqueue(Step())
    worker = Worker(app, concurrency=1)
    backend = app._require_backend()
    (lease,) = await backend.claim(worker.queues, worker_id=worker.id, lease_for=5, limit=1)
    worker._hold([lease])
    worker._fill()  # its task is made but has not run a step
    assert worker.running == 1
    # As a heartbeat answer can, in the same turn:
    worker._interrupt(worker._jobs[lease.job_id], "cancel")
    await until(lambda: not worker.running)
    (outcome,) = worker._pending
    assert outcome.state.value == "cancelled" and outcome.lease is lease
    await backend.settle(worker._pending)
    assert (await app.status(job.id))["state"] == "cancelled"
    worker._threads.shutdown()
    await app.close()


async def test_a_job_claimed_again_keeps_only_the_new_lease(app: App) -> None:
    app.message("p.again")(Step)
    runs: list[Lease] = []  # the lease of each run, as it starts

    @app.handles(Step)
    async def handle(msg: Step, ctx: Context) -> None:
        runs.append(ctx.lease)
        await asyncio.Event().wait()  # runs until cancelled

    await app.open()
    job = await app.enqueue(Step())
    worker = Worker(app, concurrency=1)
    backend = app._require_backend()

    async def claim_again() -> Lease:
        """Let the job's lease lapse, sweep it back to the queue and claim it anew."""
        async with asyncio.timeout(10):
            while not (lapsed := await backend.expired(limit=1)):  # noqa: ASYNC110 (polls)
                await asyncio.sleep(0.01)
        retry = Outcome(lease=lapsed[0].lease, state=JobState.RETRYING)  # at once
        assert await backend.rescue([retry]) == [True]
        (lease,) = await backend.claim(worker.queues, worker_id=worker.id, lease_for=0.05, limit=1)
        return lease

    (first,) = await backend.claim(worker.queues, worker_id=worker.id, lease_for=0.05, limit=1)
    worker._hold([first])
    worker._fill()
    await until(lambda: runs == [first])
    second = await claim_again()  # while the first run still runs
    worker._hold([second])
    assert worker.held_ahead == 1 and worker._jobs[job.id].lease is second
    # The first run is cancelled (its lease is gone) and reports nothing; the slot it frees
    # runs the job under the new lease.
    await until(lambda: runs == [first, second])
    assert worker.running == 1 and not worker.held_ahead and not worker._pending
    third = await claim_again()  # while the second run still runs
    worker._hold([third])
    await until(lambda: runs == [first, second, third])
    assert worker._jobs[job.id].lease is third and not worker._pending
    # A late outcome of an old lease is refused: the job moved on.
    late = [Outcome(lease=second, state=JobState.SUCCEEDED)]
    assert await backend.settle(late) == [False]
    worker._interrupt(worker._jobs[job.id], "test over")
    await until(lambda: not worker.running)
    worker._threads.shutdown()
    await app.close()


async def test_a_held_job_whose_lease_was_not_renewed_goes_behind_the_others(app: App) -> None:
    # Its row locked by another transaction (PostgreSQL passes over it: renewed=False),
    # the first job in line held back every other, fresh, one
    from types import SimpleNamespace

    from offload.worker.lease import Renewal

    app.message("p.line")(Step)

    @app.handles(Step)
    async def handle(msg: Step, ctx: Context) -> None:
        pass

    worker = Worker(app, concurrency=1, lease_s=6.0)
    loop = asyncio.get_running_loop()
    now = Renewal(loop.time(), app.clock.now())
    stale = SimpleNamespace(name="stale", renewed=Renewal(now.mono - 60, now.wall - 60))
    first, second = (SimpleNamespace(name=n, renewed=now) for n in ("first", "second"))
    worker._line.extend([stale, first, second])  # type: ignore[list-item]
    assert worker._fresh_first() is True
    assert [job.name for job in worker._line] == ["first", "second", "stale"]  # type: ignore[attr-defined]
    worker._line.clear()
    worker._line.append(stale)  # type: ignore[arg-type]
    assert worker._fresh_first() is False  # (tried again after a pause: no hot loop)
