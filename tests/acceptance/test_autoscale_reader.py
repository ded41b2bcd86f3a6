"""What the autoscaler reads through the App: the ready jobs of the queues it serves, the
oldest one's age, and the jobs that ended since its last reading; a paused queue's jobs
are not ready for it."""

from __future__ import annotations

import asyncio

import pytest

from offload import App, Context, Message
from offload.worker.autoscaler import BacklogReader
from offload.worker.runner import Worker
from offload.worker.scaling import Backlog

pytestmark = pytest.mark.anyio


class Tick(Message):
    n: int = 0


class Other(Message):
    n: int = 0


async def test_the_reader_sees_ready_jobs_and_counts_the_ended_ones(app: App) -> None:
    app.message("as.tick", queue="work")(Tick)
    app.message("as.other", queue="elsewhere")(Other)

    @app.handles(Tick)
    async def tick(msg: Tick, ctx: Context) -> None:
        pass

    async with app:
        reader = BacklogReader(app, ["work"])
        assert await reader.read() == Backlog(ready=0, oldest_age_s=0.0, completed=0)
        # Given 10 jobs in the served queue and 4 in another
        await app.enqueue_many([Tick(n=i) for i in range(10)])
        await app.enqueue_many([Other(n=i) for i in range(4)])
        backlog = await reader.read()
        assert (backlog.ready, backlog.completed) == (10, 0)
        assert backlog.oldest_age_s >= 0.0
        # When a worker runs 6 of them
        await asyncio.wait_for(Worker(app, queues=["work"], max_jobs=6, prefetch=0).run(), 30)
        # Then 4 are ready and 6 ended; a reading after nothing ended adds none
        backlog = await reader.read()
        assert (backlog.ready, backlog.completed) == (4, 6)
        assert (await reader.read()).completed == 6
        assert set(reader.stats) == {"work"}
        # ... and a paused queue holds nothing ready (no process could claim it)
        await app.pause("work")
        assert (await reader.read()).ready == 0


async def test_jobs_given_back_for_another_worker_are_not_ready_while_they_wait_ahead(
    app: App,
) -> None:
    app.message("as.tick", queue="work")(Tick)
    app.message("as.unhandled", queue="work")(Other)

    @app.handles(Tick)
    async def tick(msg: Tick, ctx: Context) -> None:
        pass

    async with app:
        reader = BacklogReader(app, ["work"])
        # Given 3 jobs a worker gave back (no handler for their kind: due in 30 s)
        await app.enqueue_many([Other(n=i) for i in range(3)])
        await asyncio.wait_for(Worker(app, queues=["work"], exit_when_idle_s=0.2).run(), 30)
        stats = (await app.stats())["work"]
        assert (stats["queued"], stats["scheduled"], stats["awaiting_newer_worker"]) == (0, 3, 3)
        # when 3 jobs it runs are ready, they are the backlog (it read none: 3 - 3)
        await app.enqueue_many([Tick(n=i) for i in range(3)])
        assert (await reader.read()).ready == 3
