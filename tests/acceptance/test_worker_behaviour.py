"""Worker behaviour in one process: threads, timeouts, signals, cancellation, idempotent steps."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import httpx
import pytest
from pydantic import BaseModel, Field

import offload.context
from offload import (
    App,
    Backoff,
    Cancel,
    Context,
    Fail,
    Job,
    JobState,
    JobStatus,
    Message,
    Retry,
    Settings,
)
from offload.brokers.base import NEWER_VERSION
from offload.context import PROGRESS_EVERY_S, PROGRESS_PAUSE_S
from offload.contract import MAX_NESTING, Lease
from offload.errors import BackendError, _ForAnotherWorker
from offload.status import Progress
from offload.worker import runner as runner_module
from offload.worker.runner import RUN_ON_LIMIT_PER_SLOT, Worker

from ..contract._support import PATIENCE_S, ShiftClock

pytestmark = pytest.mark.anyio
FAST = Backoff(base_s=0.01, cap_s=0.05)


class Ping(Message):
    text: str = "hi"


class Quick(Message):
    pass


async def finished(app: App, job_id: str, timeout: float = 15) -> JobStatus:
    return await Job(job_id, True, app).wait(timeout)


async def test_plain_function_handlers_run_in_threads(
    app: App, start_worker: Callable[..., Any]
) -> None:
    app.message("t.sync")(Ping)
    seen: list[str] = []

    @app.handles(Ping)
    def handle(msg: Ping, ctx: Context) -> dict[str, str]:
        seen.append(threading.current_thread().name)
        ctx.progress(0.5, "half way")  # blocking call from the handler's thread
        return {"echo": msg.text.upper()}

    await start_worker()
    job = await app.enqueue(Ping(text="abc"))
    record = await finished(app, job.id)
    assert record.state is JobState.SUCCEEDED and record.result == {"echo": "ABC"}
    assert record.progress == Progress(fraction=0.5, message="half way")
    assert seen and seen[0].startswith("offload-handler")


async def test_a_plain_handler_stores_and_reads_blobs_without_await(
    app: App, start_worker: Callable[..., Any]
) -> None:
    app.message("t.blob_plain")(Ping)

    @app.handles(Ping)
    def handle(msg: Ping, ctx: Context) -> dict[str, Any]:
        ref = ctx.blobs.put(f"plain/{ctx.job_id}.txt", msg.text.encode())
        return {"ref": ref, "back": ctx.blobs.get(f"plain/{ctx.job_id}.txt").decode()}

    await start_worker()
    job = await app.enqueue(Ping(text="stored"))
    record = await finished(app, job.id)
    # (it returned an un-awaited coroutine: nothing stored, and the job failed to serialise)
    assert record.state is JobState.SUCCEEDED, record.error
    assert record.result == {"ref": f"blob:plain/{job.id}.txt", "back": "stored"}
    assert await app.blobs.get(f"plain/{job.id}.txt") == b"stored"


async def test_a_plain_handler_with_a_loop_of_its_own_awaits_the_context(
    app: App, start_worker: Callable[..., Any]
) -> None:
    app.message("t.own_loop")(Ping)

    @app.handles(Ping)
    def handle(msg: Ping, ctx: Context) -> str:
        async def inner() -> str:
            await ctx.progress(0.5, "inside")
            ref: str = await ctx.blobs.put(f"own/{ctx.job_id}.txt", msg.text.encode())
            return ref

        return asyncio.run(inner())  # (awaiting the blob store raised a TypeError)

    await start_worker()
    job = await app.enqueue(Ping(text="own"))
    record = await finished(app, job.id)
    assert record.state is JobState.SUCCEEDED, record.error
    assert record.result == f"blob:own/{job.id}.txt"
    assert await app.blobs.get(f"own/{job.id}.txt") == b"own"


async def test_plain_handlers_run_in_as_many_threads_as_slots(
    app: App, start_worker: Callable[..., Any]
) -> None:
    app.message("t.many")(Ping)
    names: set[str] = set()

    @app.handles(Ping)
    def handle(msg: Ping, ctx: Context) -> None:
        names.add(threading.current_thread().name)

    await start_worker(concurrency=2)
    jobs = await app.enqueue_many([Ping(text=str(n)) for n in range(300)])
    for job in jobs:
        assert (await finished(app, job.id)).state is JobState.SUCCEEDED
    assert 1 <= len(names) <= 2, names  # (a pool of twice that grew to it under load)


async def test_timeout_spends_attempts_then_dead(
    app: App, start_worker: Callable[..., Any]
) -> None:
    app.message("t.timeout", max_attempts=2)(Ping)

    @app.handles(Ping, timeout=0.1, backoff=FAST)
    async def handle(msg: Ping, ctx: Context) -> None:
        await asyncio.sleep(5)

    await start_worker()
    job = await app.enqueue(Ping())
    record = await finished(app, job.id)
    assert record.state is JobState.DEAD and record.attempt == 2
    assert record.error is not None and record.error.type == "TimeoutError"


async def test_plain_handler_past_its_timeout_sees_cancelled_and_stops(
    app: App, start_worker: Callable[..., Any]
) -> None:
    app.message("t.plain_timeout", max_attempts=1)(Ping)
    stopped = threading.Event()

    @app.handles(Ping, timeout=0.2)
    def handle(msg: Ping, ctx: Context) -> None:
        # The flag a long loop checks (README); bounded, so a missing signal fails here.
        if ctx.cancelled.wait(15):
            stopped.set()

    await start_worker()
    job = await app.enqueue(Ping())
    record = await finished(app, job.id)
    assert record.state is JobState.DEAD
    assert record.error is not None and record.error.type == "TimeoutError"
    assert await asyncio.to_thread(stopped.wait, 15)


async def test_a_plain_handler_running_past_the_grace_period_keeps_its_job(
    app: App, start_worker: Callable[..., Any]
) -> None:
    """A stopping worker cannot stop a thread: it waits for the handler rather than release
    a job that would then run twice at once (once here, once on another worker)."""
    app.message("t.plain_grace")(Ping)
    started, asked, finish = threading.Event(), threading.Event(), threading.Event()
    runs: list[str] = []

    @app.handles(Ping)
    def handle(msg: Ping, ctx: Context) -> str:
        runs.append(ctx.job_id)
        started.set()
        if ctx.cancelled.wait(15):  # set once the grace period is over
            asked.set()
        finish.wait(15)
        return "finished"

    worker: Worker = await start_worker(grace_s=0.05)
    job = await app.enqueue(Ping())
    assert await asyncio.to_thread(started.wait, 15)
    worker.request_stop()
    assert await asyncio.to_thread(asked.wait, 15)
    # Past the grace period, the job is still this worker's: not queued for another.
    assert (await app.status(job.id))["state"] == "running"
    assert not worker.stopped.is_set()
    finish.set()
    await asyncio.wait_for(worker.stopped.wait(), 30)
    record = await app.status(job.id)
    assert record["state"] == "succeeded" and record["attempt"] == 1
    assert record["result"] == "finished" and runs == [job.id]


class Other(Message):
    text: str = "hi"


async def test_past_the_grace_the_jobs_that_can_stop_are_released_while_a_thread_runs_on(
    app: App, start_worker: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    app.message("t.grace_plain")(Ping)
    app.message("t.grace_async")(Other)
    started, asked, finish = threading.Event(), threading.Event(), threading.Event()
    began: list[str] = []

    @app.handles(Ping)
    def plain(msg: Ping, ctx: Context) -> str:
        started.set()
        if ctx.cancelled.wait(15):
            asked.set()
        finish.wait(15)
        return "finished"

    @app.handles(Other)
    async def waits(msg: Other, ctx: Context) -> None:
        began.append(ctx.job_id)
        await asyncio.Event().wait()  # until cancelled

    worker: Worker = await start_worker(concurrency=2, prefetch=0, grace_s=0.05)
    threaded, cancellable = await app.enqueue(Ping()), await app.enqueue(Other())
    assert await asyncio.to_thread(started.wait, 15)
    async with asyncio.timeout(15):
        while not began:  # noqa: ASYNC110 (a list the handler appends to)
            await asyncio.sleep(0.01)
    worker.request_stop()
    assert await asyncio.to_thread(asked.wait, 15)
    # The async job is released at the grace period, not kept until the thread returns.
    async with asyncio.timeout(15):
        while (await app.status(cancellable.id))["state"] != "queued":  # noqa: ASYNC110 (a stored state)
            await asyncio.sleep(0.01)
    assert (await app.status(threaded.id))["state"] == "running"
    # (said in the log: it said only that it waited, then that it had stopped)
    said = [r.getMessage() for r in caplog.records if r.name == "offload.worker"]
    assert (
        "releasing 1 running job (the grace period is over): queued again, the attempt given back"
        in said
    )
    finish.set()
    await asyncio.wait_for(worker.stopped.wait(), 30)
    assert (await app.status(threaded.id))["state"] == "succeeded"
    record = await app.status(cancellable.id)
    assert record["state"] == "queued" and record["attempt"] == 0


def _thread_holder_and_one_behind(app: App) -> tuple[threading.Event, list[str]]:
    """Two plain handlers: `Ping`'s times out (0.1 s, dead at once) but keeps its thread until
    the event returned is set; `Other`'s notes in the list returned each job it runs."""
    app.message("t.stuck", max_attempts=1)(Ping)
    app.message("t.behind")(Other)
    free = threading.Event()
    behind_ran: list[str] = []

    @app.handles(Ping, timeout=0.1)
    def ignores_its_timeout(msg: Ping, ctx: Context) -> None:
        free.wait(30)  # never looks at ctx.cancelled: its thread outlives the attempt

    @app.handles(Other)
    def behind(msg: Other, ctx: Context) -> None:
        behind_ran.append(ctx.job_id)

    return free, behind_ran


async def one_more_runs_on(app: App, worker: Worker) -> str:
    """Enqueue `Ping`s (`_thread_holder_and_one_behind`) until one more handler thread runs
    on past its attempt, and return its job's id: a thread that had not started by the
    0.1 s timeout (a loaded machine) never ran, and its job ended dead with no thread left
    running. One that runs on keeps its job `running` (its lease held) until it returns."""
    before = worker.threads_running_on
    for _ in range(20):
        job = await app.enqueue(Ping())
        async with asyncio.timeout(PATIENCE_S):
            while worker.threads_running_on == before:
                if (await app.status(job.id))["state"] == "dead":
                    break  # its thread never started
                await asyncio.sleep(0.01)
            else:
                # (held for the grace at most; a stopping worker records the outcome at once)
                if not worker.wedged and worker.grace_s >= 10:
                    assert (await app.status(job.id))["state"] == "running"
                return job.id
    raise AssertionError("no handler's thread started within its timeout in 20 jobs")


async def test_a_plain_handler_running_on_past_its_timeout_leaves_the_next_one_a_thread(
    app: App, start_worker: Callable[..., Any]
) -> None:
    free, behind_ran = _thread_holder_and_one_behind(app)
    try:
        # Given one slot, and a handler whose thread runs on after its attempt timed out,
        worker: Worker = await start_worker(concurrency=1, prefetch=0)
        stuck = await one_more_runs_on(app, worker)
        assert worker.threads_running_on == 1
        # the next plain job runs in a new thread (it waited for the held one, and ran
        # over its own timeout without ever starting),
        after = await app.enqueue(Other(text="after"))
        assert (await finished(app, after.id)).state is JobState.SUCCEEDED
        assert behind_ran == [after.id] and not worker.wedged
        # while the job whose thread runs on is still running: it holds its lease,
        assert (await app.status(stuck))["state"] == "running"
    finally:
        free.set()
    # and once its thread returns, the thread counts no more and its job is dead (its one
    # attempt ran over its timeout).
    assert (await finished(app, stuck)).state is JobState.DEAD
    async with asyncio.timeout(15):
        while worker.threads_running_on:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_more_threads_running_on_than_slots_stop_the_worker(app: App) -> None:
    free, behind_ran = _thread_holder_and_one_behind(app)
    worker = Worker(app, concurrency=1, prefetch=0, grace_s=0.1)
    run = asyncio.create_task(worker.run())
    try:
        # Given one slot, when two handlers' threads run on past their attempts, and still
        # run a grace period later,
        for _ in range(2):
            await one_more_runs_on(app, worker)
        # then the worker stops by itself (a process would start again with fresh threads),
        with pytest.raises(RuntimeError, match="threads ran on"):
            await asyncio.wait_for(run, 30)
        assert worker.wedged and worker.threads_running_on == 2
        # and claims nothing more: a job enqueued since waits for another worker.
        waiting = await app.enqueue(Other())
        assert (await app.status(waiting.id))["state"] == "queued"
    finally:
        free.set()
        await app.close()
    assert behind_ran == []


async def test_threads_running_on_past_four_a_slot_stop_the_worker_within_its_grace(
    app: App,
) -> None:
    free, _ = _thread_holder_and_one_behind(app)
    worker = Worker(app, concurrency=1, prefetch=0, grace_s=600)
    run = asyncio.create_task(worker.run())
    try:
        # Given one slot and a long grace, when handler threads pile up past their attempts
        # (each timed out, none returns), four are let run on, and the fifth stops it.
        for n in range(RUN_ON_LIMIT_PER_SLOT + 1):
            await one_more_runs_on(app, worker)
            assert worker.wedged is (n == RUN_ON_LIMIT_PER_SLOT)
        with pytest.raises(RuntimeError, match="threads ran on"):
            await asyncio.wait_for(run, 30)
        assert worker.threads_running_on == RUN_ON_LIMIT_PER_SLOT + 1
    finally:
        free.set()
        await app.close()


async def test_cancelled_threads_that_return_within_the_grace_never_stop_the_worker(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    app.message("t.slow_plain")(Ping)
    app.message("t.after")(Other)
    started: list[str] = []
    cleanup = threading.Event()  # what a handler does after it saw the cancel

    @app.handles(Ping)
    def winds_down(msg: Ping, ctx: Context) -> None:
        started.append(ctx.job_id)
        ctx.cancelled.wait(30)
        cleanup.wait(30)  # (a Django task, say, that cannot see the cancel, sleeps on)

    @app.handles(Other)
    def after(msg: Other, ctx: Context) -> str:
        return "ran"

    worker = Worker(app, concurrency=1, prefetch=0, grace_s=120)
    run = asyncio.create_task(worker.run())
    try:
        # Given one slot, when three running jobs are cancelled one after another (each
        # handler's thread runs on: more than the worker's slots),
        jobs = []
        for n in range(3):
            job = await app.enqueue(Ping())
            jobs.append(job.id)
            async with asyncio.timeout(PATIENCE_S):
                while len(started) <= n:  # noqa: ASYNC110 (a list the handler appends to)
                    await asyncio.sleep(0.01)
            await app.cancel(job.id)
            async with asyncio.timeout(PATIENCE_S):
                while worker.threads_running_on <= n:  # noqa: ASYNC110 (a worker's count)
                    await asyncio.sleep(0.01)
        assert worker.threads_running_on == 3
        # then the worker runs on (they are within their grace), and runs the next job,
        assert not worker.wedged and not run.done()
        later = await app.enqueue(Other())
        assert (await finished(app, later.id)).state is JobState.SUCCEEDED
        # while the cancelled jobs stay running (cancel requested) as their threads do;
        for job_id in jobs:
            row = await app.get(job_id)
            assert row is not None and row.state is JobState.RUNNING and row.cancel_requested
        # and once they return, each is cancelled, none is left running on, and none was
        # said overdue.
        cleanup.set()
        for job_id in jobs:
            assert (await finished(app, job_id)).state is JobState.CANCELLED
        async with asyncio.timeout(PATIENCE_S):
            while worker.threads_running_on:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert not worker.wedged
        assert not [r for r in caplog.records if getattr(r, "action", "") == "thread_overdue"]
    finally:
        cleanup.set()
        worker.request_stop()
        await asyncio.wait_for(run, PATIENCE_S)


async def test_context_makes_one_cancel_flag_for_racing_threads(app: App) -> None:
    """The flag is made on first use: the loop and handler threads asking at once share one."""
    app.message("t.flag")(Ping)
    lease = Lease(envelope=app.envelope(Ping()), token="t", expires_at=0.0, worker="w")
    async with app:
        for _ in range(50):
            ctx = Context(lease, app._require_backend(), app.blobs, asyncio.get_running_loop())
            go = threading.Barrier(4)

            def take(ctx: Context = ctx, go: threading.Barrier = go) -> threading.Event:
                go.wait(5)
                return ctx.cancelled

            flags = await asyncio.gather(*(asyncio.to_thread(take) for _ in range(4)))
            assert all(flag is flags[0] for flag in flags)
            ctx.cancelled.set()
            assert flags[0].is_set()


class Sized(Message):
    pages: int


async def test_every_final_state_carries_the_handlers_retry_budget(
    app: App, start_worker: Callable[..., Any]
) -> None:
    # Given a kind whose message allows 5 attempts and whose handler allows 2,
    app.message("t.budget", max_attempts=5)(Sized)
    started = asyncio.Event()
    seen: list[tuple[int, int]] = []

    @app.handles(Sized, max_attempts=2)
    async def handle(msg: Sized, ctx: Context) -> None:
        if msg.pages == 0:
            raise Cancel("nothing to print")
        seen.append((ctx.attempt, ctx.max_attempts))
        started.set()
        await asyncio.sleep(60)  # until cancelled

    await start_worker()
    # its jobs enqueued by a web tier, which knows the message's budget only,
    web = App("web", settings=app.settings)
    web.message("t.budget", max_attempts=5)(Sized)
    refused = await web.enqueue(Sized(pages=0))  # the handler cancels it
    running = await web.enqueue(Sized(pages=9))  # cancelled while it runs
    # (a payload that no longer validates: failed for good before its handler runs)
    stale = web.envelope(Sized(pages=1))
    stale = dataclasses.replace(stale, payload={"pages": "many"})
    await web._require_backend().enqueue([stale])
    await web.close()
    await asyncio.wait_for(started.wait(), PATIENCE_S)
    await app.cancel(running.id)
    # then each ends with the handler's budget, as a success or a retry would show it.
    for job_id, state in (
        (refused.id, "cancelled"),
        (running.id, "cancelled"),
        (stale.id, "failed"),
    ):
        async with asyncio.timeout(PATIENCE_S):
            while (record := await app.status(job_id))["state"] != state:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert record["max_attempts"] == 2, (job_id, record)
    assert seen == [(1, 2)]  # and the handler's context said that budget too


async def test_the_log_says_which_failed_attempt_was_the_last(
    app: App, start_worker: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="offload.worker")
    app.message("t.fails", max_attempts=2)(Ping)

    @app.handles(Ping, backoff=Backoff(base_s=0.01, cap_s=0.01, jitter=0.0))
    async def handle(msg: Ping, ctx: Context) -> None:
        if msg.text == "bare":
            raise MemoryError  # (no message: the line names its type)
        raise RuntimeError("no paper")

    job = await app.enqueue(Ping())
    bare = await app.enqueue(Ping(text="bare"))
    await start_worker()
    async with asyncio.timeout(PATIENCE_S):
        while {(await app.status(j.id))["state"] for j in (job, bare)} != {"dead"}:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    records = [r for r in caplog.records if getattr(r, "action", "") == "job_failed"]
    assert sorted(r.getMessage() for r in records if r.job_id == bare.id) == [
        f"job {bare.id} attempt 1 failed: MemoryError",
        f"job {bare.id} attempt 2 failed, its last of 2: dead: MemoryError",
    ]
    records = [r for r in records if r.job_id == job.id]
    assert [r.getMessage() for r in records] == [
        f"job {job.id} attempt 1 failed: no paper",
        f"job {job.id} attempt 2 failed, its last of 2: dead: no paper",
    ]
    # and a job that ends dead is an error (an alert on errors finds it), with its state
    said = [(r.levelno, getattr(r, "state", None), getattr(r, "dead", None)) for r in records]
    assert said == [(logging.WARNING, "retrying", False), (logging.ERROR, "dead", True)]


async def test_a_retry_asked_for_on_the_last_attempt_is_logged_dead_as_an_error(
    app: App, start_worker: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="offload.worker")
    app.message("t.asks", max_attempts=2)(Ping)

    @app.handles(Ping, backoff=Backoff(base_s=0.01, cap_s=0.01, jitter=0.0))
    async def handle(msg: Ping, ctx: Context) -> None:
        raise Retry(delay=0, reason="still busy")

    job = await app.enqueue(Ping())
    await start_worker()
    async with asyncio.timeout(PATIENCE_S):
        while (await app.status(job.id))["state"] != "dead":  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    records = [r for r in caplog.records if getattr(r, "action", "") == "job_failed"]
    said = [(r.levelno, getattr(r, "state", None)) for r in records]
    assert said == [(logging.INFO, "retrying"), (logging.ERROR, "dead")]


class _Unreachable:
    """A backend whose progress writes fail as an outage past the retry deadline does."""

    def __init__(self) -> None:
        self.writes = 0

    async def progress(self, lease: Lease, fraction: float | None, message: str | None) -> bool:
        self.writes += 1
        raise BackendError("cannot connect to PostgreSQL at db.internal:5432")


async def test_progress_the_backend_cannot_store_costs_the_update_not_the_attempt(
    app: App, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.message("t.progress")(Ping)
    lease = Lease(envelope=app.envelope(Ping()), token="t", expires_at=0.0, worker="w")
    backend = _Unreachable()
    ctx = Context(lease, backend, app.blobs, asyncio.get_running_loop())  # type: ignore[arg-type]
    now = [1000.0]
    monkeypatch.setattr(offload.context, "monotonic", lambda: now[0])
    monkeypatch.setattr(offload.context, "_progress_unsaid", {"until": -math.inf, "count": 0})
    # Given a backend that cannot be reached, a handler's progress raises nothing (the
    # update is lost, the handler goes on, as async and as plain handler),
    with caplog.at_level(logging.WARNING, logger="offload.job"):
        assert await ctx.progress(0.1, "one") is True
        now[0] += PROGRESS_EVERY_S  # (stored at once, not coalesced with the one before)
        assert await asyncio.to_thread(ctx.progress, 0.2, "two") is True
    # and the updates of the next PROGRESS_PAUSE_S are skipped without asking it again,
    assert backend.writes == 1
    assert [r.getMessage() for r in caplog.records] == [
        "progress not stored (the next 5 s of it skipped): "
        "cannot connect to PostgreSQL at db.internal:5432"
    ]
    (said,) = caplog.records
    assert (said.action, said.job_id) == ("progress_not_stored", lease.job_id)  # type: ignore[attr-defined]
    # Another job's progress that meets the same outage then is not said again (every
    # running handler meets it): it is counted in the next warning,
    other = Context(
        Lease(envelope=app.envelope(Ping()), token="t", expires_at=0.0, worker="w"),
        backend,  # type: ignore[arg-type]
        app.blobs,
        asyncio.get_running_loop(),
    )
    with caplog.at_level(logging.WARNING, logger="offload.job"):
        assert await other.progress(0.5) is True
    assert backend.writes == 2 and len(caplog.records) == 1
    # then asked again once they have passed.
    now[0] += PROGRESS_PAUSE_S + 0.1
    with caplog.at_level(logging.WARNING, logger="offload.job"):
        assert await ctx.progress(0.3) is True
    assert backend.writes == 3
    again = caplog.records[-1].getMessage()
    assert again.startswith("progress not stored (the next 5 s of it skipped; 1 more since")


async def test_retry_signal_schedules_the_next_attempt(
    app: App, start_worker: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="offload.worker")
    app.message("t.retry")(Ping)
    attempts: list[tuple[int, float]] = []

    @app.handles(Ping)
    async def handle(msg: Ping, ctx: Context) -> str:
        attempts.append((ctx.attempt, time.monotonic()))
        if ctx.attempt == 1:
            raise Retry(delay=0.4, reason="rate limited")
        return "done"

    await start_worker()
    job = await app.enqueue(Ping())
    record = await finished(app, job.id)
    assert record.state is JobState.SUCCEEDED and record.attempt == 2
    assert attempts[1][1] - attempts[0][1] >= 0.35
    # A retry the handler asked for is said at info, not as a fault (a warning).
    said = [r for r in caplog.records if getattr(r, "action", None) == "job_failed"]
    assert [(r.levelno, "rate limited" in r.getMessage()) for r in said] == [(logging.INFO, True)]
    # Its fields say which job, where, which attempt and what failed it, for a log pipeline
    fields = {k: getattr(said[0], k) for k in ("job_id", "kind", "queue", "attempt", "dead")}
    assert fields == {
        "job_id": job.id, "kind": "t.retry", "queue": "default", "attempt": 1, "dead": False
    }  # fmt: skip
    assert said[0].error_type == "Retry"


@pytest.mark.parametrize("delay", [math.nan, math.inf, -1.0, 1e12])
async def test_a_retry_delay_that_is_no_time_fails_the_attempt_and_the_worker_goes_on(
    app: App, start_worker: Callable[..., Any], delay: float
) -> None:
    # A NaN delay made the run time NULL: SQLite refused the outcome, and with it every
    # outcome of the worker after it (all stayed running, to run again once rescued).
    app.message("t.retry")(Ping)
    ran: list[str] = []

    @app.handles(Ping, backoff=FAST)
    async def handle(msg: Ping, ctx: Context) -> str:
        ran.append(msg.text)
        if msg.text == "odd" and ctx.attempt == 1:
            raise Retry(delay=delay)
        return msg.text

    await start_worker()
    odd = await app.enqueue(Ping(text="odd"))
    others = [await app.enqueue(Ping(text=f"n{i}")) for i in range(5)]
    record = await finished(app, odd.id)
    # The attempt failed on the delay, saying why, and the kind's backoff retried it;
    assert record.state is JobState.SUCCEEDED and record.attempt == 2, record
    for job in others:
        assert (await finished(app, job.id)).state is JobState.SUCCEEDED
    assert sorted(ran) == ["n0", "n1", "n2", "n3", "n4", "odd", "odd"]
    with pytest.raises(ValueError, match=r"a retry's delay is 0 to 31622400 seconds \(366 days\)"):
        Retry(delay=delay)
    assert Retry(delay=timedelta(minutes=2)).delay == 120.0


async def test_a_handler_fails_its_job_for_good_with_fail(
    app: App, start_worker: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    # Celery's "retry on ConnectionError, not on ValueError": Fail ends the job failed at
    # once, whatever budget is left (Cancel recorded a bug as a user's cancellation).
    caplog.set_level(logging.INFO, logger="offload.worker")
    app.message("t.fail", max_attempts=5)(Ping)
    ran: list[int] = []

    @app.handles(Ping, backoff=FAST)
    def charge(msg: Ping, ctx: offload.SyncContext) -> str:  # a plain handler, in a thread
        ran.append(ctx.attempt)
        if msg.text == "transient" and ctx.attempt == 1:
            raise ConnectionError("the card network did not answer")
        try:
            int(msg.text)
        except ValueError as exc:
            raise Fail("the card number is not a number") from exc
        return "charged"

    await start_worker()
    declined = await app.enqueue(Ping(text="4242-x"))
    record = await finished(app, declined.id)
    assert record.state is JobState.FAILED and record.attempt == 1
    assert record.error is not None and record.error.type == "Fail"
    assert record.error.message == "the card number is not a number"
    full = await app.status(declined.id, tracebacks=True)
    assert "ValueError: invalid literal for int()" in full["error"]["traceback"]
    failed = [r for r in caplog.records if getattr(r, "action", None) == "job_failed"]
    assert [(r.levelno, r.state) for r in failed] == [(logging.ERROR, "failed")]
    # An ordinary error is retried as ever.
    retried = await app.enqueue(Ping(text="transient"))
    assert (await finished(app, retried.id)).state is JobState.FAILED  # "transient" fails next
    assert ran == [1, 1, 2]


async def test_cancel_signal_and_permanent_errors(
    app: App, start_worker: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="offload.worker")
    app.message("t.cancel", max_attempts=2)(Ping)
    ran: list[str] = []

    @app.handles(Ping, backoff=FAST)
    async def handle(msg: Ping, ctx: Context) -> object:
        if msg.text == "cancel":
            raise Cancel("not wanted any more")
        ran.append(msg.text)
        return object()  # not JSON: failed for good, not run again

    await start_worker()
    cancelled = await app.enqueue(Ping(text="cancel"))
    record = await finished(app, cancelled.id)
    assert record.state is JobState.CANCELLED and record.attempt == 1
    assert record.error is not None and record.error.message == "not wanted any more"
    not_json = await app.enqueue(Ping(text="x"))
    record = await finished(app, not_json.id)
    # its handler ran, so a retry would only run it again for the same value: failed at
    # its first attempt, saying why
    assert record.state is JobState.FAILED and record.attempt == 1 and ran == ["x"]
    assert record.error is not None and record.error.type == "TypeError"
    assert "return value cannot be stored" in record.error.message
    assert "not retried" in record.error.message
    # and is said as an error, with the state it left the job in
    (said,) = [r for r in caplog.records if getattr(r, "action", "") == "job_failed"]
    assert (said.levelno, said.state, said.dead) == (logging.ERROR, "failed", False)


@pytest.mark.parametrize("shape", ["text", "items", "models"])
async def test_a_result_too_large_for_a_record_fails_for_good_and_the_worker_goes_on(
    app: App, start_worker: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, shape: str
) -> None:
    # A 300 MB result: orjson, out of memory as it wrote it under a memory limit, ended the
    # worker's process (a segmentation fault), every job it held left to lapse.
    from offload import _jsonable

    monkeypatch.setattr(_jsonable, "MAX_VALUE_BYTES", 1000)
    app.message("t.big", max_attempts=3)(Ping)

    @app.handles(Ping, backoff=FAST)
    async def handle(msg: Ping, ctx: Context) -> object:
        if msg.text == "small":
            return {"ok": "x" * 900}
        if shape == "models":  # (models inside a result count, as they are written)
            return {"ok": [Ping(text="y" * 100)] * 10}
        return "x" * 1001 if shape == "text" else {"ok": [1] * 1000}

    await start_worker()
    big, small = await app.enqueue(Ping(text="big")), await app.enqueue(Ping(text="small"))
    record = await finished(app, big.id)
    assert record.state is JobState.FAILED and record.attempt == 1
    assert record.error is not None and "ctx.blobs.put" in record.error.message
    assert (await finished(app, small.id)).state is JobState.SUCCEEDED


async def test_a_result_nested_too_deep_fails_for_good_and_one_within_is_served(
    app: App, start_worker: Callable[..., Any], web: httpx.AsyncClient
) -> None:
    # A result nested past what a status record can be encoded with was stored, and then
    # its job answered 500 on every route, and broke every stream it was an event of.
    app.message("t.deep", max_attempts=3)(Ping)

    @app.handles(Ping, backoff=FAST)
    async def handle(msg: Ping, ctx: Context) -> object:
        value: object = 0
        for _ in range(int(msg.text)):
            value = [value]
        return value

    await start_worker()
    sent = await web.post("/v1/jobs/t.deep", json={"text": str(MAX_NESTING + 1)})
    deep = await finished(app, sent.json()["id"])
    assert deep.state is JobState.FAILED and deep.attempt == 1
    assert deep.error is not None and "more than 100 levels deep" in deep.error.message
    sent = await web.post("/v1/jobs/t.deep", json={"text": str(MAX_NESTING)})
    within = await finished(app, sent.json()["id"])
    assert within.state is JobState.SUCCEEDED
    for path in ("", "/result", "/events"):
        answer = await web.get(f"/v1/jobs/{within.id}{path}")
        assert answer.status_code == 200, (path, answer.text)
    listed = await web.get("/v1/jobs")
    assert listed.status_code == 200 and len(listed.json()["items"]) == 2


class Dog(BaseModel):
    name: str
    born: datetime


async def test_a_result_of_models_in_a_list_or_dict_is_stored_as_their_json(
    app: App, start_worker: Callable[..., Any]
) -> None:
    # A list of models failed its job for good ("Type is not JSON serializable: Dog"),
    # while one model alone was stored.
    app.message("t.dogs")(Ping)
    born = datetime(2020, 5, 17, 8, 30, tzinfo=UTC)

    @app.handles(Ping)
    async def handle(msg: Ping, ctx: Context) -> object:
        if msg.text == "set":
            return {"pack": [Dog(name="rex", born=born)], "tags": {"a"}}  # a set: no JSON
        return {"pack": [Dog(name="rex", born=born)], "lead": Dog(name="ace", born=born)}

    await start_worker()
    dogs = await finished(app, (await app.enqueue(Ping())).id)
    assert dogs.state is JobState.SUCCEEDED, dogs.error
    rex = {"name": "rex", "born": "2020-05-17T08:30:00Z"}
    assert dogs.result == {"pack": [rex], "lead": {"name": "ace", "born": rex["born"]}}
    # Anything else JSON cannot carry fails for good, as before.
    other = await finished(app, (await app.enqueue(Ping(text="set"))).id)
    assert other.state is JobState.FAILED and other.attempt == 1
    assert other.error is not None and "set" in other.error.message


async def test_a_step_another_worker_stored_meanwhile_is_not_written_over(
    app: App, start_worker: Callable[..., Any]
) -> None:
    # A worker whose lease lapsed while its step ran (frozen, say) wrote its value over the
    # one the worker that rescued the job had stored, and finished with, before it.
    app.message("t.step")(Ping)

    @app.handles(Ping)
    async def handle(msg: Ping, ctx: Context) -> str:
        async def charge() -> str:
            # meanwhile, the rescuing worker runs the step and stores its own result
            await app._require_backend().remember(ctx.job_id, "charge", "theirs", first=True)
            return "mine"

        return str(await ctx.once("charge", charge))

    await start_worker()
    job = await app.enqueue(Ping())
    record = await finished(app, job.id)
    assert record.state is JobState.SUCCEEDED
    assert await app._require_backend().recall(job.id, "charge") == (True, "theirs")
    # and this attempt goes on with the value that stands, not its own.
    assert record.result == "theirs"


async def test_a_step_that_returns_a_model_is_stored_as_its_json_and_a_set_fails_for_good(
    app: App, start_worker: Callable[..., Any]
) -> None:
    # Storing a step's model (an SDK's answer) failed, and each retry ran the step again.
    app.message("t.steps", max_attempts=3)(Ping)
    ran: list[str] = []
    born = datetime(2020, 5, 17, tzinfo=UTC)

    @app.handles(Ping, backoff=FAST)
    async def handle(msg: Ping, ctx: Context) -> object:
        def step() -> object:
            ran.append(msg.text)
            return {"a"} if msg.text == "set" else [Dog(name="rex", born=born)]

        got = await ctx.once("charge", step)
        if msg.text == "group":  # a step's refusal out of a TaskGroup fails for good too
            async with asyncio.TaskGroup() as group:
                group.create_task(ctx.once("second", lambda: {1, 2}))
        return got

    await start_worker()
    dogs = await app.enqueue(Ping(text="dogs"))
    record = await finished(app, dogs.id)
    assert record.state is JobState.SUCCEEDED
    rex = [{"name": "rex", "born": "2020-05-17T00:00:00Z"}]
    assert await app._require_backend().recall(dogs.id, "charge") == (True, rex)
    # The attempt that ran the step gets its stored form too, as every later one does.
    assert record.result == rex
    grouped = await finished(app, (await app.enqueue(Ping(text="group"))).id)
    assert grouped.state is JobState.FAILED and grouped.attempt == 1, grouped.error
    with pytest.raises(ValueError, match=r"names starting with 'offload\.' are offload's own"):
        offload.context.Context.once(None, "offload.deliveries.email", lambda: 1)  # type: ignore[arg-type]
    odd = await finished(app, (await app.enqueue(Ping(text="set"))).id)
    assert odd.state is JobState.FAILED and odd.attempt == 1
    assert odd.error is not None and "the value of the step 'charge'" in odd.error.message
    assert ran == ["dogs", "group", "set"]  # each step ran once


async def test_a_signal_raised_inside_a_task_group_counts(
    app: App, start_worker: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    # A Fail (or Cancel, or Retry) from a TaskGroup's subtask came out in an
    # ExceptionGroup, an ordinary error: retried until the job was dead.
    caplog.set_level(logging.INFO, logger="offload.worker")
    app.message("t.group", max_attempts=3)(Ping)

    @app.handles(Ping, backoff=FAST)
    async def handle(msg: Ping, ctx: Context) -> None:
        async def part(n: int) -> None:
            if n == 1:
                raise Fail("part 1: " + "x" * 5000)
            await asyncio.sleep(30)

        async with asyncio.TaskGroup() as group:
            for n in range(3):
                group.create_task(part(n))

    await start_worker()
    record = await finished(app, (await app.enqueue(Ping())).id)
    assert record.state is JobState.FAILED and record.attempt == 1
    assert record.error is not None and record.error.type == "Fail"
    # and its log line is cut, as every error's is.
    (said,) = [r for r in caplog.records if getattr(r, "action", None) == "job_failed"]
    assert len(said.getMessage()) < 2200


async def test_payload_that_no_longer_fits_the_contract_fails_for_good(
    app: App, start_worker: Callable[..., Any]
) -> None:
    app.message("t.contract")(Ping)

    @app.handles(Ping)
    async def handle(msg: Ping, ctx: Context) -> None:
        raise AssertionError("must not run")

    envelope = app.envelope(Ping())
    # a raw envelope, past the message class's own validation
    await _stored(app, envelope, payload={"text": 3, "extra": 1})
    await start_worker()
    record = await finished(app, envelope.id)
    assert record.state is JobState.FAILED and record.attempt == 1
    assert record.error is not None and record.error.type == "ValidationError"


async def test_a_job_with_a_field_its_class_lacks_runs_without_it(
    app: App, start_worker: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    # A newer deploy added an optional field (a compatible change: no new version); a job
    # it wrote reached a worker still on the old code, which failed it for good
    caplog.set_level(logging.INFO, logger="offload.worker")
    app.message("t.mail")(Ping)
    seen: list[str] = []

    @app.handles(Ping)
    async def handle(msg: Ping, ctx: Context) -> None:
        seen.append(msg.text)

    envelopes = [app.envelope(Ping(text=f"m{n}")) for n in range(2)]
    for envelope in envelopes:  # as the newer code stored them
        payload = {**envelope.payload, "cc": None, "bcc": "boss@example.com"}
        await _stored(app, envelope, payload=payload)
    await start_worker()
    for envelope in envelopes:
        record = await finished(app, envelope.id)
        assert record.state is JobState.SUCCEEDED, record.error
    assert sorted(seen) == ["m0", "m1"]
    # and the worker said so once, naming the fields
    (said,) = [r for r in caplog.records if getattr(r, "action", "") == "fields_ignored"]
    assert said.levelno == logging.WARNING and said.fields == ["bcc", "cc"]
    assert "carry fields this worker's Ping lacks (bcc, cc)" in said.getMessage()


class Charge(Message):
    order_id: int
    amount_cents: Annotated[int, Field(alias="amount")]  # (required: no default hides it)


async def test_a_field_stored_by_its_name_before_aliases_were_is_read_under_its_alias(
    app: App, start_worker: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    # A backlog stored by an older offload (by name, where the class reads the alias): the
    # worker dropped the value as an unknown field and ran the job with the default
    caplog.set_level(logging.INFO, logger="offload.worker")
    app.message("t.charge")(Charge)
    seen: list[int] = []

    @app.handles(Charge)
    async def charge(msg: Charge, ctx: Context) -> None:
        seen.append(msg.amount_cents)

    envelope = app.envelope(Charge(order_id=7, amount=1999))
    await _stored(app, envelope, payload={"order_id": 7, "amount_cents": 1999})
    # (and one that carries both: the alias wins)
    both = app.envelope(Charge(order_id=8, amount=5))
    await _stored(app, both, payload={"order_id": 8, "amount_cents": 1, "amount": 5})
    await start_worker()
    assert (await finished(app, envelope.id)).state is JobState.SUCCEEDED
    assert (await finished(app, both.id)).state is JobState.SUCCEEDED
    assert sorted(seen) == [5, 1999]
    assert not [r for r in caplog.records if getattr(r, "action", "") == "fields_ignored"]


async def test_a_field_an_upgrader_wrote_that_its_class_lacks_fails_the_job(
    app: App, start_worker: Callable[..., Any]
) -> None:
    # Its own upgrader's mistake (a misspelt key), not a newer deploy's field: a job that
    # ran with the field's default instead would do the wrong thing
    @app.message("t.mail", version=2)
    class Mail(Message):
        recipient: str = "everyone@example.com"

    @app.upgrade("t.mail", 1)
    def to_v2(payload: dict[str, Any]) -> dict[str, Any]:
        return {"recipeint": payload["to"]}

    @app.handles(Mail)
    async def mail(msg: Mail, ctx: Context) -> None:
        raise AssertionError(f"must not mail {msg.recipient}")

    envelope = app.envelope(Mail())
    await _stored(app, envelope, version=1, payload={"to": "bob@example.com"})
    await start_worker()
    record = await finished(app, envelope.id)
    assert record.state is JobState.FAILED and record.error is not None
    assert record.error.type == "ValidationError"


async def _stored(app: App, envelope: Any, **changes: Any) -> None:
    """Store `envelope` with `changes` as it is, past its message class's validation (as
    other code, or an older offload, stored it)."""
    async with app:
        await app.submit(type(envelope)(**{**_fields(envelope), **changes}))


def _fields(envelope: Any) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(envelope, f.name) for f in dataclasses.fields(envelope)}


async def test_once_runs_a_side_step_once_across_attempts(
    app: App, start_worker: Callable[..., Any]
) -> None:
    app.message("t.once")(Ping)
    charges: list[str] = []

    @app.handles(Ping, backoff=FAST)
    async def handle(msg: Ping, ctx: Context) -> str:
        receipt = await ctx.once("charge", lambda: charges.append(ctx.job_id) or "r-1")
        if ctx.attempt == 1:
            raise RuntimeError("crash after charging")
        return str(receipt)

    await start_worker()
    job = await app.enqueue(Ping())
    record = await finished(app, job.id)
    assert record.state is JobState.SUCCEEDED and record.result == "r-1"
    assert charges == [job.id]


async def test_once_in_a_plain_handler_runs_its_step_in_the_handlers_thread(
    app: App, start_worker: Callable[..., Any]
) -> None:
    app.message("t.once_plain")(Ping)
    app.message("t.quick")(Quick)
    step_threads: list[str] = []
    release, quick_ran = threading.Event(), threading.Event()

    def charge() -> str:
        step_threads.append(threading.current_thread().name)
        # blocks until a job on the loop has run: a step run on the loop (it was) would
        # hold that job, and itself, until this wait's end
        release.wait(10)
        return "r-1"

    @app.handles(Ping, backoff=FAST)
    def plain(msg: Ping, ctx: Context) -> str:
        receipt = ctx.once("charge", charge)
        if ctx.attempt == 1:
            raise RuntimeError("crash after charging")
        return str(receipt)

    @app.handles(Quick)
    async def quick(msg: Quick, ctx: Context) -> None:
        quick_ran.set()
        release.set()

    await start_worker(concurrency=2)
    job = await app.enqueue(Ping())
    await app.enqueue(Quick())
    record = await finished(app, job.id)
    # The step ran once, in the handler's thread, while the loop ran the other job; the
    # retry found its result.
    assert record.state is JobState.SUCCEEDED and record.result == "r-1"
    assert len(step_threads) == 1 and step_threads[0].startswith("offload-handler")
    assert quick_ran.is_set()


async def test_delete_signals_a_running_handler(
    app: App, start_worker: Callable[..., Any], web: httpx.AsyncClient
) -> None:
    app.message("t.long")(Ping)
    started, stopped = asyncio.Event(), asyncio.Event()

    @app.handles(Ping)
    async def handle(msg: Ping, ctx: Context) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        finally:
            stopped.set()

    await start_worker(lease_s=1.5)
    response = await web.post("/v1/jobs/t.long", json={})
    job_id = response.json()["id"]
    await asyncio.wait_for(started.wait(), 10)
    cancel = await web.delete(f"/v1/jobs/{job_id}")
    assert cancel.status_code == 202
    await asyncio.wait_for(stopped.wait(), 10)
    record = await finished(app, job_id)
    assert record.state is JobState.CANCELLED


async def test_dev_mode_caller_is_local_and_sees_python_enqueued_jobs(
    app: App, web: httpx.AsyncClient
) -> None:
    app.message("t.dev")(Ping)
    job = await app.enqueue(Ping())  # owner defaults to the principal `local`
    record = (await web.get(f"/v1/jobs/{job.id}")).json()
    assert record["id"] == job.id and record["state"] == "queued"
    assert (await web.get("/healthz")).json() == {"status": "ok"}
    assert (await web.get("/readyz")).status_code == 200


def test_enqueue_sync_from_plain_code(app: App) -> None:
    app.message("t.enqueue-sync")(Ping)
    job = app.enqueue_sync(Ping(text="sync"), priority=3)
    again = app.enqueue_sync(Ping(text="sync"))
    assert job.id != again.id and job.created

    async def check() -> dict[str, Any]:
        try:
            return await app.status(job.id)
        finally:
            await app.close()

    record = asyncio.run(check())
    assert record["state"] == "queued" and record["priority"] == 3


async def test_bad_delivery_options_are_422_and_enqueue_nothing(
    app: App, web: httpx.AsyncClient
) -> None:
    app.message("t.options")(Ping)
    response = await web.post(
        "/v1/jobs/t.options",
        params={"callback_url": "http://receiver.example/ has a space", "notify_email": "nope"},
        json={},
    )
    assert response.status_code == 422
    assert {e["loc"][1] for e in response.json()["errors"]} == {"callback_url", "notify_email"}
    assert await app.list_jobs(owner=None) == []


async def test_a_job_whose_worker_died_backs_off_and_ends_by_the_handlers_budget(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a kind allowing 5 attempts whose handler allows 2 with a 30 s backoff, and a
    # worker that rescues lapsed leases (it claims from another queue only)
    caplog.set_level(logging.INFO, logger="offload.worker")
    clock = ShiftClock()
    app = App("rescue", settings=settings, clock=clock)
    app.message("t.rescue", max_attempts=5)(Ping)

    @app.handles(Ping, max_attempts=2, backoff=Backoff(base_s=30.0, jitter=0.0))
    async def handle(msg: Ping, ctx: Context) -> None:
        raise AssertionError("only the dead worker ever claims it")

    async with app:
        job = await app.enqueue(Ping(), notify_email="ops@example.com")
        rescuer = Worker(app, queues=["elsewhere"], lease_s=0.6)  # sweeps every 0.3 s
        task = asyncio.create_task(rescuer.run())
        try:

            async def killed_while_running(attempt: int) -> dict[str, Any]:
                (lease,) = await app._require_backend().claim(
                    ["default"], worker_id="doomed", lease_for=60, limit=1
                )
                assert lease.envelope.attempt == attempt
                clock.advance(61)  # it never heartbeats: its lease lapses
                async with asyncio.timeout(15):
                    while (record := await app.status(job.id))["state"] == "running":  # noqa: ASYNC110
                        await asyncio.sleep(0.02)
                return record

            # When the worker running it dies, the rescuer retries it after the handler's backoff
            record = await killed_while_running(1)
            assert record["state"] == "retrying" and record["error"]["type"] == "LeaseExpired"
            run_at = datetime.fromisoformat(record["run_at"]).timestamp()
            assert 29 <= run_at - clock.now() <= 30
            assert (
                await app._require_backend().claim(["default"], worker_id="x", lease_for=1, limit=1)
                == []
            )
            clock.advance(31)
            # Then when it dies again, the job is dead by the handler's budget of 2
            record = await killed_while_running(2)
            assert record["state"] == "dead" and record["max_attempts"] == 2
            # And its notification was enqueued with that change
            (email,) = await app.list_jobs(owner=None, kind="offload.email")
            assert email.state == "queued"
            # and each rescue named the job, the worker that lost it and what it became.
            said = [
                (r.job_id, r.lost_worker, r.state, r.levelno)  # type: ignore[attr-defined]
                for r in caplog.records
                if getattr(r, "action", None) == "rescued"
            ]
            # (the job that ends dead so is an error, as one its handler failed is)
            assert said == [
                (job.id, "doomed", "retrying", logging.INFO),
                (job.id, "doomed", "dead", logging.ERROR),
            ]
        finally:
            rescuer.request_stop()
            await asyncio.wait_for(task, 30)


@pytest.mark.parametrize("how", ["no handler", "the handler's signal"])
async def test_jobs_given_back_for_another_worker_are_no_work_for_idle_or_max_jobs(
    app: App, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A job given back for another worker (no handler for its kind here; or a Django task
    this worker's code lacks, its handler's signal) comes back every NEWER_VERSION_DELAY_S
    (30 s; 0.2 s here): each claim of it kept an idle worker from ever exiting, and counted
    as one of its max_jobs, the job it then ran not."""
    monkeypatch.setattr("offload.worker.runner.NEWER_VERSION_DELAY_S", 0.2)
    app.message("t.elsewhere")(Other)
    app.message("t.handled")(Ping)
    ran: list[str] = []

    @app.handles(Ping)
    async def handled(msg: Ping, ctx: Context) -> None:
        ran.append(ctx.job_id)

    if how == "the handler's signal":

        @app.handles(Other)
        async def elsewhere(msg: Other, ctx: Context) -> None:
            raise _ForAnotherWorker("t.elsewhere waits for a worker that has its task")

    given_back = await app.enqueue(Other())
    worker = Worker(app, exit_when_idle_s=1.0, prefetch=0, idle_poll_s=0.05)
    await asyncio.wait_for(worker.run(), 15)  # it never stopped
    assert (await app.status(given_back.id))["state"] == "queued"
    assert (await app.status(given_back.id))["error"]["type"] == NEWER_VERSION
    handled_job = await app.enqueue(Ping())
    await asyncio.wait_for(Worker(app, max_jobs=1, prefetch=0, concurrency=1).run(), 15)
    assert ran == [handled_job.id]  # the give-back first, then the one it runs
    await app.close()


def test_a_worker_without_its_claim_loop_is_not_stopped_by_threads_running_on(app: App) -> None:
    """offload.serverless runs handlers through a Worker whose claim loop never runs: its
    threads running on get new pools, and no stop is asked that nothing would read."""
    app.message("t.serverless")(Ping)
    app.handles(Ping)(lambda msg, ctx: None)
    worker = Worker(app, concurrency=1)
    running_on = [Future[Any]() for _ in range(3)]  # calls that never end
    for n, call in enumerate(running_on):
        worker._runs_on(f"job-{n}", call)
    assert worker.threads_running_on == 3 and not worker.wedged
    for call in running_on:
        call.set_result(None)
    assert worker.threads_running_on == 0


async def test_a_handler_may_give_its_job_back_unspent_for_another_worker(
    app: App, start_worker: Callable[..., Any]
) -> None:
    """What the Django worker does with a task its code lacks (offload's own signal)."""
    app.message("t.elsewhere", max_attempts=1)(Ping)

    @app.handles(Ping)
    def elsewhere(msg: Ping, ctx: Context) -> None:
        raise _ForAnotherWorker("t.elsewhere waits for a worker that has its task")

    await start_worker()
    job = await app.enqueue(Ping())
    async with asyncio.timeout(15):
        while (await app.status(job.id))["error"] is None:  # noqa: ASYNC110 (a stored error)
            await asyncio.sleep(0.01)
    record = await app.status(job.id)
    assert (record["state"], record["attempt"]) == ("queued", 0)  # not spent: not dead
    assert record["error"]["type"] == NEWER_VERSION
    assert record["error"]["message"].startswith("t.elsewhere waits for a worker that has its")


async def test_asked_to_stop_again_a_worker_releases_its_running_jobs_at_once(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    app.message("t.long")(Ping)
    began = asyncio.Event()

    @app.handles(Ping)
    async def long(msg: Ping, ctx: Context) -> None:
        began.set()
        await asyncio.Event().wait()  # until cancelled

    worker = Worker(app, grace_s=600)  # a grace longer than the test could wait
    run = asyncio.create_task(worker.run())
    job = await app.enqueue(Ping())
    await asyncio.wait_for(began.wait(), 15)
    worker.request_stop()  # SIGTERM: the job may finish within the grace period
    await asyncio.sleep(0)
    assert not run.done()
    worker.request_stop(now=True)  # a second one: released now
    await asyncio.wait_for(run, 15)
    record = await app.status(job.id)
    assert (record["state"], record["attempt"]) == ("queued", 0)
    said = [r.getMessage() for r in caplog.records if r.name == "offload.worker"]
    assert any(line.startswith("asked to stop again") for line in said)
    await app.close()


async def test_asked_to_stop_again_a_plain_handlers_job_keeps_its_lease_to_lapse(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """A second stop does not wait for a thread (it waited until the handler returned,
    Ctrl+C twice doing nothing); the job is not released either, as another worker would
    run it while the thread runs on: its lease lapses, once the process has ended it."""
    app.message("t.plain_long")(Ping)
    started, free = threading.Event(), threading.Event()

    @app.handles(Ping)
    def long(msg: Ping, ctx: Context) -> None:
        started.set()
        free.wait(30)  # never looks at ctx.cancelled

    worker = Worker(app, grace_s=600)
    run = asyncio.create_task(worker.run())
    try:
        job = await app.enqueue(Ping())
        assert await asyncio.to_thread(started.wait, 15)
        worker.request_stop()
        worker.request_stop(now=True)
        await asyncio.wait_for(run, 15)
        assert (await app.status(job.id))["state"] == "running"  # its lease left to lapse
        assert worker.threads_running_on == 1
        said = [r.getMessage() for r in caplog.records if r.name == "offload.worker"]
        assert any(line.startswith("leaving 1 job whose plain handler") for line in said)
    finally:
        free.set()
        await app.close()


async def test_a_settle_the_server_refused_once_at_shutdown_is_tried_again(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a job that ends during the worker's grace, whose first settle the server refuses
    # (a deadlock, a statement timeout: an answer, not the backend out of reach),
    app.message("t.ends_in_grace")(Ping)
    release = asyncio.Event()

    @app.handles(Ping)
    async def ends(msg: Ping, ctx: Context) -> str:
        await release.wait()
        return "done"

    job = await app.enqueue(Ping())
    worker = Worker(app, concurrency=1, prefetch=0, grace_s=30)
    backend = app._require_backend()
    settle, refused = backend.settle, []

    async def refused_once(outcomes: Any) -> Any:
        if not refused:
            refused.append(len(outcomes))
            await asyncio.sleep(0.5)  # (answered while the stopping worker waits on it)
            raise BackendError("deadlock detected")
        return await settle(outcomes)

    monkeypatch.setattr(backend, "settle", refused_once)
    run = asyncio.create_task(worker.run())
    async with asyncio.timeout(PATIENCE_S):
        while (await app.status(job.id))["state"] != "running":  # noqa: ASYNC110 (a poll)
            await asyncio.sleep(0.01)
    # when the worker is told to stop, and the job ends in its grace,
    worker.request_stop()
    release.set()
    # then the settle is tried again and written: the worker ends cleanly, the job done.
    async with asyncio.timeout(PATIENCE_S):
        await run
    assert refused == [1]
    assert (await app.status(job.id))["state"] == "succeeded"
    await app.close()


async def test_a_cancelled_job_whose_thread_runs_on_keeps_its_limit_slot_and_unique_key(
    app: App, start_worker: Callable[..., Any]
) -> None:
    class Export(Message):
        user_id: str

    app.message("t.capped", unique="active", unique_key=("user_id",))(Export)
    started: list[str] = []
    done = threading.Event()

    @app.handles(Export, max_running=1)
    def export(msg: Export, ctx: Context) -> None:
        started.append(ctx.job_id)
        done.wait(30)  # never looks at ctx.cancelled

    worker: Worker = await start_worker(concurrency=2, prefetch=0)
    first = await app.enqueue(Export(user_id="u1"))
    other = await app.enqueue(Export(user_id="u2"))
    try:
        async with asyncio.timeout(PATIENCE_S):
            while not started:  # noqa: ASYNC110 (a list the handler appends to)
                await asyncio.sleep(0.01)
        # Given a running job of a kind capped at one, whose handler ignores a cancel,
        await app.cancel(first.id)
        async with asyncio.timeout(PATIENCE_S):
            while not worker.threads_running_on:  # noqa: ASYNC110 (a worker's count)
                await asyncio.sleep(0.01)
            while not worker._flushed.is_set():  # noqa: ASYNC110 (an outcome it wrote)
                await asyncio.sleep(0.01)
        # when its attempt has ended and the worker has written what it had to write,
        # the job still runs, as its handler does: it holds the kind's one slot (the other
        # job waits) and its unique key (the same key answers it, no second job runs).
        row = await app.get(first.id)
        assert row is not None and row.state is JobState.RUNNING and row.cancel_requested
        again = await app.enqueue(Export(user_id="u1"))
        assert again.id == first.id and not again.created
        assert started == [first.id]
        assert (await app.status(other.id))["state"] == "queued"
    finally:
        done.set()
    # Once the handler returns, the job is cancelled and the other one runs.
    assert (await finished(app, first.id)).state is JobState.CANCELLED
    assert (await finished(app, other.id)).state is JobState.SUCCEEDED
    assert started == [first.id, other.id]


async def test_a_cancel_heard_while_a_timed_out_thread_runs_on_ends_its_job_cancelled(
    app: App, start_worker: Callable[..., Any]
) -> None:
    app.message("t.overrun")(Ping)
    starts: list[int] = []
    free = threading.Event()

    @app.handles(Ping, timeout=0.3, max_attempts=5, backoff=Backoff(base_s=0.01, cap_s=0.02))
    def overrun(msg: Ping, ctx: Context) -> None:
        starts.append(ctx.attempt)
        free.wait(30)  # ignores ctx.cancelled

    worker: Worker = await start_worker(concurrency=1, prefetch=0)
    job = await app.enqueue(Ping())
    try:
        # Given an attempt that ran over its timeout (a retry decided) while its thread runs
        # on, the job still running,
        async with asyncio.timeout(PATIENCE_S):
            while not worker.threads_running_on:  # noqa: ASYNC110 (a worker's count)
                await asyncio.sleep(0.01)
        # when it is cancelled, and the worker hears of it at a heartbeat,
        await app.cancel(job.id)
        async with asyncio.timeout(PATIENCE_S):
            while (held := worker._jobs[job.id].held) is None or not held.state.final:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    finally:
        free.set()
    # then once the thread returns the job ends cancelled, never tried again.
    assert (await finished(app, job.id)).state is JobState.CANCELLED
    assert starts == [1]


async def test_a_thread_that_runs_on_past_the_grace_holds_its_job_no_longer(
    app: App, start_worker: Callable[..., Any]
) -> None:
    app.message("t.hung", max_attempts=1)(Ping)
    free = threading.Event()

    @app.handles(Ping, timeout=0.2)
    def hung(msg: Ping, ctx: Context) -> None:
        free.wait(30)  # a read without a timeout, say: never sees ctx.cancelled

    worker: Worker = await start_worker(concurrency=2, prefetch=0, grace_s=0.5)
    try:
        # Given a handler's thread that runs on past its timeout and never returns (one that
        # had not started by then never ran: its job is dead at once, and another is tried),
        for _ in range(20):
            job = await app.enqueue(Ping())
            async with asyncio.timeout(PATIENCE_S):
                while not worker.threads_running_on:
                    if (await app.status(job.id))["state"] == "dead":
                        break
                    await asyncio.sleep(0.01)
            if worker.threads_running_on:
                break
        assert worker.threads_running_on == 1
        # once the grace after the attempt's end is over, its job ends as the timeout
        # decided (dead: one attempt), the thread still running.
        assert (await finished(app, job.id)).state is JobState.DEAD
        assert worker.threads_running_on == 1
    finally:
        free.set()


def test_a_delivery_job_out_of_its_functions_time_is_a_failed_attempt(app: App) -> None:
    from offload.notify.base import WebhookDelivery

    # Given a worker (the serverless consumer's) and a webhook delivery job it ran,
    app.message("t.quick")(Quick)
    app.handles(Quick)(lambda msg, ctx: None)
    worker = Worker(app)
    delivery = WebhookDelivery(
        job_id="j", url="https://hooks.example.test/h", state="succeeded", notification_id="n"
    )
    lease = Lease(envelope=app.envelope(delivery), token="t", expires_at=0.0, worker=worker.id)
    # when the function's time ends while it runs, its attempt failed, as any job's (an
    # AssertionError ended the invocation: a delivery job has no handler of the app's)
    outcome = worker.out_of_time(lease, "ran past the function's time")
    assert outcome.state is JobState.RETRYING and outcome.error is not None
    assert outcome.error["type"] == "TimeoutError"


async def test_a_long_prune_holds_up_no_rescue_of_lapsed_leases(
    app: App, start_worker: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first prune after a retention made shorter ran for minutes in the rescuer's own
    # loop, and no lapsed lease was rescued meanwhile
    monkeypatch.setattr(runner_module, "DEFAULT_PRUNE_EVERY_S", 0.0)
    app.message("t.rescued")(Ping)
    ran: list[int] = []

    @app.handles(Ping)
    async def handle(msg: Ping, ctx: Context) -> None:
        ran.append(ctx.attempt)

    job = await app.enqueue(Ping())
    async with app:
        backend = app._require_backend()
        pruning = asyncio.Event()

        async def long_prune(older_than_s: float) -> int:
            pruning.set()
            await asyncio.Event().wait()  # (for as long as the test runs)
            return 0

        monkeypatch.setattr(backend, "prune", long_prune)
        # Given a job whose worker died holding it (its lease lapses in half a second)
        await backend.claim(["default"], worker_id="gone", lease_for=0.5, limit=1)
        # When a worker starts, and its prune runs on
        await start_worker()
        await asyncio.wait_for(pruning.wait(), PATIENCE_S)
        # Then the job is rescued and run all the same
        record = await finished(app, job.id, timeout=PATIENCE_S)
    assert record.state is JobState.SUCCEEDED and ran == [2]


async def test_an_attempt_that_ran_over_its_timeout_says_where_its_handler_was(
    app: App, start_worker: Callable[..., Any]
) -> None:
    # A timed-out attempt's traceback was the one line "TimeoutError: …": where the
    # handler hung, what an operator needs, was lost
    app.message("t.hang_async", timeout=0.3, max_attempts=1)(Ping)
    app.message("t.hang_plain", timeout=0.3, max_attempts=1)(Quick)

    async def stuck_awaiting() -> None:
        await asyncio.Event().wait()

    @app.handles(Ping)
    async def hang_async(msg: Ping, ctx: Context) -> None:
        await stuck_awaiting()

    def stuck_in_thread(ctx: Context) -> None:
        while not ctx.cancelled.wait(0.01):
            pass

    @app.handles(Quick)
    def hang_plain(msg: Quick, ctx: Context) -> None:
        stuck_in_thread(ctx)

    await start_worker()
    for job, frame in [
        (await app.enqueue(Ping()), "in stuck_awaiting"),
        (await app.enqueue(Quick()), "in stuck_in_thread"),
    ]:
        record = await finished(app, job.id)
        assert record.state is JobState.DEAD and record.error is not None
        assert record.error.message == "the attempt ran over its 0.3s timeout"
        tracebacks = await app.status(job.id, tracebacks=True)
        text = tracebacks["error"]["traceback"]
        assert frame in text, text


async def test_a_timeout_of_the_handlers_own_is_no_timeout_of_the_attempt(
    app: App, start_worker: Callable[..., Any]
) -> None:
    # A deadline of the handler's own (a client's, asyncio's) that ran out was told as the
    # attempt running over its timeout, and set ctx.cancelled
    app.message("t.own_deadline", timeout=120, max_attempts=1)(Ping)
    told: list[bool] = []

    @app.handles(Ping)
    async def own_deadline(msg: Ping, ctx: Context) -> None:
        try:
            await asyncio.wait_for(asyncio.Event().wait(), 0.05)
        finally:
            told.append(ctx.cancelled.is_set())

    await start_worker()
    job = await app.enqueue(Ping())
    record = await finished(app, job.id)
    assert record.state is JobState.DEAD and record.error is not None
    assert record.error.type == "TimeoutError"
    assert record.error.message == "a deadline of the handler's own ran out"
    assert told == [False]
