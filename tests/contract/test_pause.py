"""Paused queues contract: no claim takes a paused queue's jobs (other queues still serve),
enqueue goes on, running jobs finish, resume wakes the waiting workers, and the pause is
stored (it survives reopening), on every backend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from offload import App, Context, JobState, Message, Settings
from offload.brokers import Backend, open_backend
from offload.brokers.base import EMPTY_QUEUE_STATS
from offload.worker.runner import Worker

from ._support import LONG, PATIENCE_S, ShiftClock, claim, done, envelope, running, status
from .conftest import BackendParam

pytestmark = pytest.mark.anyio


async def test_a_paused_queue_gives_no_jobs_while_other_queues_still_do(backend: Backend) -> None:
    # Given jobs waiting in two queues, one of them paused
    a, b = envelope("a"), envelope("b")
    await backend.enqueue([a, b])
    assert await backend.pause("a") is True
    # When a worker claims from both, then from the paused one alone
    both = await backend.claim(["a", "b"], worker_id="w1", lease_for=LONG, limit=10)
    alone = await claim(backend, "a")
    # Then only the other queue's job is claimed; the paused one's waits, shown paused
    assert [le.job_id for le in both] == [b.id] and alone == []
    assert (await status(backend, a.id))["state"] == "queued"
    stats = await backend.stats()
    assert (stats["a"]["queued"], stats["a"]["paused"]) == (1, True)
    assert (stats["b"]["running"], stats["b"]["paused"]) == (1, False)


async def test_pausing_and_resuming_say_whether_they_changed_anything(backend: Backend) -> None:
    assert await backend.resume("q") is False  # never paused
    assert await backend.pause("q") is True
    assert await backend.pause("q") is False  # already paused
    assert await backend.resume("q") is True
    assert await backend.resume("q") is False


async def test_jobs_enqueued_into_a_paused_queue_wait_and_run_once_it_is_resumed(
    backend: Backend, clock: ShiftClock
) -> None:
    # Given a paused queue that gets jobs, one of them delayed
    await backend.pause("q")
    now_job, later_job = envelope(), envelope(delay=30)
    results = await backend.enqueue([now_job, later_job])
    assert [r.created for r in results] == [True, True]
    clock.advance(31)  # the delayed one is due too
    assert await claim(backend) == []
    assert (await backend.stats())["q"]["queued"] == 2
    # When it is resumed, a claim takes both
    assert await backend.resume("q") is True
    leases = await claim(backend)
    assert sorted(le.job_id for le in leases) == sorted([now_job.id, later_job.id])


async def test_a_job_running_when_its_queue_is_paused_beats_and_finishes(backend: Backend) -> None:
    # Given a running job
    env = envelope()
    await backend.enqueue([env])
    (lease,) = await claim(backend)
    # When its queue is paused, it keeps its lease and ends as usual
    await backend.pause("q")
    (beat,) = await backend.extend([lease], lease_for=LONG)
    assert beat.held
    assert await backend.settle([done(lease, {"ok": True})]) == [True]
    record = await status(backend, env.id)
    assert (record["state"], record["result"]) == ("succeeded", {"ok": True})


async def test_a_paused_queue_with_no_jobs_is_listed_and_goes_once_resumed(
    backend: Backend,
) -> None:
    await backend.pause("empty")
    assert (await backend.stats())["empty"] == {**EMPTY_QUEUE_STATS, "paused": True}
    await backend.resume("empty")
    assert "empty" not in await backend.stats()


async def test_the_pause_is_stored_and_holds_for_a_backend_opened_later(
    backend: Backend, backend_url: str, backend_name: str, backend_param: BackendParam
) -> None:
    if not backend_param.cross_process:
        pytest.skip(f"{backend_name} lives inside one backend object; another cannot open it")
    env = envelope()
    await backend.enqueue([env])
    await backend.pause("q")
    await backend.close()
    # When the backend is opened again (a restart, or another process)
    again = open_backend(backend_url)
    await again.open()
    try:
        # Then the queue is still paused there, until resumed there
        assert (await again.stats())["q"]["paused"] is True
        assert await claim(again) == []
        assert await again.resume("q") is True
        assert [le.job_id for le in await claim(again)] == [env.id]
    finally:
        await again.close()
        await backend.open()  # for the fixture, which closes it


async def test_a_paused_queue_due_jobs_do_not_wake_a_waiting_claimer(backend: Backend) -> None:
    # Given a paused queue with a job due now
    await backend.enqueue([envelope()])
    await backend.pause("q")
    # When a claimer that found nothing waits for work there, it is not woken at once by
    # the due job (which it could not claim: it would spin), only at the end of its wait.
    # The enqueue's own wake-up may still be on its way (PostgreSQL's NOTIFY, Redis's
    # publish) and end one wait early: a claim takes it in, and the claimer waits again.
    loop = asyncio.get_running_loop()
    waits = []
    for _ in range(3):
        assert await claim(backend) == []
        began = loop.time()
        await backend.wait(["q"], 0.5)
        waits.append(loop.time() - began)
        if waits[-1] >= 0.45:
            break
    assert waits[-1] >= 0.45, waits


async def test_resuming_wakes_a_claimer_waiting_for_the_queue(backend: Backend) -> None:
    # Given a paused queue with a job, and a claimer that found nothing and waits long
    env = envelope()
    await backend.enqueue([env])
    await backend.pause("q")
    assert await claim(backend) == []
    loop = asyncio.get_running_loop()
    waiting = asyncio.create_task(backend.wait(["q"], 3 * PATIENCE_S))
    # When the queue is resumed, the claimer wakes well before its wait ends and claims it
    began = loop.time()
    await backend.resume("q")
    await asyncio.wait_for(waiting, PATIENCE_S)
    assert loop.time() - began < PATIENCE_S
    assert [le.job_id for le in await claim(backend)] == [env.id]


# -- a real worker --------------------------------------------------------------------------


class Step(Message):
    n: int


class Other(Message):
    n: int


@pytest.fixture
async def app(backend_url: str, clock: ShiftClock, tmp_path: Path) -> AsyncIterator[App]:
    settings = Settings(url=backend_url, blobs_url=str(tmp_path / "blobs"), secret_key=b"k" * 32)
    app = App("pause", settings=settings, clock=clock)
    app.message("pause.step", queue="steps")(Step)
    app.message("pause.other", queue="others")(Other)

    @app.handles(Step)
    async def step(msg: Step, ctx: Context) -> int:
        return msg.n

    @app.handles(Other)
    async def other(msg: Other, ctx: Context) -> int:
        return msg.n

    async with app:
        yield app


async def test_a_worker_leaves_a_paused_queue_alone_and_drains_it_once_resumed(app: App) -> None:
    # Given a worker serving two queues, one of them paused through the app
    assert await app.pause("steps") is True
    async with running(Worker(app)):
        # When a job goes into each queue, the other queue's runs to its end
        paused_job = await app.enqueue(Step(n=1))
        other_job = await app.enqueue(Other(n=2))
        assert (await other_job.wait(PATIENCE_S)).state is JobState.SUCCEEDED
        # Then the paused queue's job still waits (claimed with the other, it would be done)
        assert (await paused_job.status()).state is JobState.QUEUED
        stats = await app.stats()
        assert (stats["steps"]["queued"], stats["steps"]["paused"]) == (1, True)
        assert stats["others"]["paused"] is False
        # When the queue is resumed, the worker runs it
        assert await app.resume("steps") is True
        final = await paused_job.wait(PATIENCE_S)
        assert (final.state, final.result) == (JobState.SUCCEEDED, 1)
    assert (await app.stats())["steps"]["paused"] is False
