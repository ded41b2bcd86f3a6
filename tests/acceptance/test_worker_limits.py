"""`max_jobs` and `exit_when_idle_s` (`--max-jobs`, `--exit-when-idle`): a worker that runs
so many jobs, or until no work is left, then stops cleanly, giving back nothing it did not
run and claiming nothing it will not run."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from offload import App, Context, Message
from offload.errors import ConfigurationError
from offload.worker.runner import Worker

pytestmark = pytest.mark.anyio


class Tick(Message):
    n: int = 0


def count_claimed(app: App) -> list[int]:
    """Record how many jobs each claim of the app's backend got."""
    got: list[int] = []
    backend = app._require_backend()
    claim = backend.claim

    async def recorded(queues: Any, **kw: Any) -> Any:
        leases = await claim(queues, **kw)
        got.append(len(leases))
        return leases

    backend.claim = recorded  # type: ignore[method-assign]
    return got


async def test_max_jobs_runs_that_many_and_claims_no_more(app: App) -> None:
    app.message("l.tick")(Tick)
    ran: list[int] = []

    @app.handles(Tick)
    async def tick(msg: Tick, ctx: Context) -> None:
        ran.append(msg.n)

    async with app:
        claimed = count_claimed(app)
        jobs = await app.enqueue_many([Tick(n=i) for i in range(40)])
        # Given a worker with prefetch that may run 7 jobs,
        worker = Worker(app, concurrency=2, prefetch=50, max_jobs=7)
        # it stops by itself once it ran them,
        await asyncio.wait_for(worker.run(), 30)
        assert len(ran) == 7 and worker.begun == 7
        # having claimed exactly those: the 33 others were never taken, nor given back.
        assert sum(claimed) == 7
        states = [(await app.status(job.id)) for job in jobs]
    done = [s for s in states if s["state"] == "succeeded"]
    waiting = [s for s in states if s["state"] == "queued"]
    assert len(done) == 7 and len(waiting) == 33
    assert all(s["attempt"] == 0 and s["error"] is None for s in waiting)


async def test_max_jobs_waits_for_its_jobs_however_long(app: App) -> None:
    app.message("l.slow")(Tick)
    release = asyncio.Event()

    @app.handles(Tick)
    async def slow(msg: Tick, ctx: Context) -> None:
        await release.wait()

    async with app:
        jobs = await app.enqueue_many([Tick(n=i) for i in range(3)])
        worker = Worker(app, concurrency=4, max_jobs=2, grace_s=0.01)
        task = asyncio.create_task(worker.run())
        async with asyncio.timeout(20):
            while worker.running < 2:  # noqa: ASYNC110 (polls state that sets no event)
                await asyncio.sleep(0.01)
        # Its budget is claimed: it runs on (no grace period applies) until they end.
        assert not task.done()
        release.set()
        await asyncio.wait_for(task, 30)
        states = sorted([(await app.status(job.id))["state"] for job in jobs])
    assert states == ["queued", "succeeded", "succeeded"]


async def test_exit_when_idle_runs_what_there_is_then_stops(app: App) -> None:
    app.message("l.idle")(Tick)
    ran: list[int] = []

    @app.handles(Tick)
    async def tick(msg: Tick, ctx: Context) -> None:
        ran.append(msg.n)

    async with app:
        await app.enqueue_many([Tick(n=i) for i in range(25)])
        worker = Worker(app, concurrency=4, exit_when_idle_s=0.3, idle_poll_s=0.05)
        loop = asyncio.get_running_loop()
        began = loop.time()
        await asyncio.wait_for(worker.run(), 30)
        assert sorted(ran) == list(range(25))
        # It stopped only after the queue had stayed empty for the idle time.
        assert loop.time() - began >= 0.3
        assert (await app.stats())["default"]["queued"] == 0


async def test_exit_when_idle_on_an_empty_queue(app: App) -> None:
    app.message("l.none")(Tick)

    @app.handles(Tick)
    async def tick(msg: Tick, ctx: Context) -> None:
        pass

    worker = Worker(app, exit_when_idle_s=0)
    await asyncio.wait_for(worker.run(), 30)
    assert worker.begun == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [({"max_jobs": 0}, "max_jobs"), ({"exit_when_idle_s": -1}, "exit_when_idle_s")],
)
async def test_limits_are_checked(app: App, options: dict[str, Any], message: str) -> None:
    app.message("l.bad")(Tick)

    @app.handles(Tick)
    async def tick(msg: Tick, ctx: Context) -> None:
        pass

    with pytest.raises(ConfigurationError, match=message):
        Worker(app, **options)
