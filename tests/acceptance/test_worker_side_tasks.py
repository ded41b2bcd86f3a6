"""Side tasks are watched while every slot is busy: a failure is restarted at once, or stops the
worker loudly without a grace period (so no lease lapses under a running handler)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from offload import App, Context, Job, JobState, Message
from offload.worker import runner
from offload.worker.runner import Worker

pytestmark = pytest.mark.anyio


class Block(Message):
    n: int = 0


class Blocking:
    """Handlers that block until released, counting the runs that started."""

    def __init__(self, app: App, expected: int) -> None:
        self.release = asyncio.Event()
        self.started: list[int] = []
        self.all_started = asyncio.Event()
        self.expected = expected

        @app.handles(Block)
        async def handle(msg: Block, ctx: Context) -> None:
            self.started.append(msg.n)
            if len(self.started) >= self.expected:
                self.all_started.set()
            await self.release.wait()


class FailingExtend:
    """Make the backend's heartbeat raise a non-BackendError `times` times, then work."""

    def __init__(self, app: App, times: int) -> None:
        self.times = times
        self.calls = 0
        self.failed = asyncio.Event()
        self.failed_at: list[float] = []
        extend = app._require_backend().extend

        async def failing(leases: Any, **kw: Any) -> Any:
            self.calls += 1
            if len(self.failed_at) < self.times:
                self.failed_at.append(asyncio.get_running_loop().time())
                self.failed.set()
                raise RuntimeError("boom")
            return await extend(leases, **kw)

        app._require_backend().extend = failing  # type: ignore[method-assign]

    async def next_failure(self, timeout: float) -> None:
        self.failed.clear()
        await asyncio.wait_for(self.failed.wait(), timeout)


#: The workers' shutdown grace: far longer than a stop that skips it takes on a loaded
#: machine, so a stop that waited for it would fail `STOPPED_WITHIN_S`.
GRACE_S = 120.0
#: Deadline of a stop that gives running handlers no grace (loaded 2-core CI).
STOPPED_WITHIN_S = 30.0
#: Deadline of the next heartbeat's call (each beat is `heartbeat_s` apart; loaded CI).
BEAT_WITHIN_S = 30.0


@pytest.fixture
async def busy(app: App) -> AsyncIterator[Callable[..., Any]]:
    """Start a worker of two slots, both busy with a blocking handler."""
    app.message("side.block")(Block)
    running: list[tuple[Worker, asyncio.Task[None]]] = []

    async def start() -> tuple[Worker, Blocking, asyncio.Task[None], list[Job]]:
        blocking = Blocking(app, expected=2)
        worker = Worker(app, concurrency=2, prefetch=0, grace_s=GRACE_S)
        task = asyncio.create_task(worker.run())
        running.append((worker, task))
        await asyncio.wait_for(worker.started.wait(), 10)
        jobs = await app.enqueue_many([Block(n=i) for i in range(2)])
        await asyncio.wait_for(blocking.all_started.wait(), 10)
        assert worker.running == 2  # every slot busy
        return worker, blocking, task, jobs

    yield start
    for worker, task in running:
        worker.request_stop()
        await asyncio.gather(asyncio.wait_for(task, 30), return_exceptions=True)
    await app.close()


async def test_a_side_task_failing_once_is_restarted_at_once(
    app: App, busy: Callable[..., Any]
) -> None:
    worker, blocking, task, jobs = await busy()
    extend = FailingExtend(app, times=1)
    await extend.next_failure(timeout=BEAT_WITHIN_S)
    # Noticed and restarted at once (before the next heartbeat could be due), with every
    # slot still busy.
    await restarted(worker, 1)
    calls = extend.calls
    await until(lambda: extend.calls > calls, timeout=BEAT_WITHIN_S)  # beats again
    assert not task.done()
    blocking.release.set()
    for job in jobs:
        status = await job.wait(10)
        assert status.state is JobState.SUCCEEDED and status.attempt == 1  # each ran once
    assert sorted(blocking.started) == [0, 1]


async def test_a_side_task_failing_again_stops_the_worker_loudly(
    app: App, busy: Callable[..., Any]
) -> None:
    worker, blocking, task, jobs = await busy()
    extend = FailingExtend(app, times=2)
    await extend.next_failure(timeout=BEAT_WITHIN_S)
    await restarted(worker, 1)
    await extend.next_failure(timeout=BEAT_WITHIN_S)  # within the restart window (60 s)
    # Stops without the grace period for running handlers whose leases beat no more (the
    # handlers block until released: a stop that waited would take GRACE_S); they are
    # released, their attempt given back.
    with pytest.raises(RuntimeError, match="worker side task heartbeat stopped") as stopped:
        await asyncio.wait_for(task, STOPPED_WITHIN_S)
    assert isinstance(stopped.value.__cause__, RuntimeError)
    assert str(stopped.value.__cause__) == "boom"
    assert worker.stopped.is_set() and sorted(blocking.started) == [0, 1]
    for job in jobs:
        status = await job.status()
        assert status.state is JobState.QUEUED and status.attempt == 0


async def test_a_cancelled_side_task_stops_the_worker_loudly(
    app: App, busy: Callable[..., Any]
) -> None:
    worker, blocking, task, jobs = await busy()
    (heartbeat,) = [t for t in asyncio.all_tasks() if t.get_name() == "offload-heartbeat"]
    heartbeat.cancel()
    with pytest.raises(RuntimeError, match="worker side task heartbeat stopped") as stopped:
        await asyncio.wait_for(task, STOPPED_WITHIN_S)
    assert stopped.value.__cause__ is None
    assert worker.restarts == 0 and sorted(blocking.started) == [0, 1]
    for job in jobs:
        assert (await job.status()).state is JobState.QUEUED


async def restarted(worker: Worker, n: int) -> None:
    """Wait until the worker has restarted `n` side tasks, counting event loop turns, not
    seconds: the supervisor restarts a failed side task in the turns right after it ended
    (woken by its end, with no timer and no I/O between), which holds on a loaded machine
    too, where any deadline in seconds would not. Called as the failure is seen."""
    for _ in range(TURNS):
        if worker.restarts == n:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{worker.restarts} restarts after {TURNS} loop turns, not {n}")


#: Loop turns within which a failed side task is restarted: it takes about three (the task's
#: end wakes the supervisor's wait, which wakes the supervisor). A supervisor that looked on
#: a timer, however short, would not have restarted it within them.
TURNS = 20


async def until(predicate: Callable[[], bool], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 (polls state that sets no event)
            await asyncio.sleep(0.01)


async def test_a_stuck_settler_holds_the_shutdown_only_until_the_guard(
    app: App, start_worker: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    app.message("side.quick")(Block)

    @app.handles(Block)
    async def handle(msg: Block, ctx: Context) -> None:
        pass

    monkeypatch.setattr(runner, "FLUSH_GUARD_S", 0.2)
    await app.open()
    stuck = asyncio.Event()
    settle = app._require_backend().settle

    async def stuck_once(outcomes: Any) -> Any:
        if not stuck.is_set():
            stuck.set()
            await asyncio.Event().wait()  # hangs until cancelled
        return await settle(outcomes)

    app._require_backend().settle = stuck_once  # type: ignore[method-assign]
    worker: Worker = await start_worker()
    job = await app.enqueue(Block())
    await asyncio.wait_for(stuck.wait(), 10)
    worker.request_stop()
    # The shutdown waits for the flush, gives up after the guard, cancels the settler and
    # writes the outcome it held itself.
    await asyncio.wait_for(worker.stopped.wait(), 10)
    assert (await job.status()).state is JobState.SUCCEEDED
    await app.close()
