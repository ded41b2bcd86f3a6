"""A plain handler's thread that runs on past its attempt and calls its context once its
worker has stopped is told so at once: a call handed to the worker's loop as it made its
last run (or while it stopped) would wait for ever, and hold its process's exit."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from offload import App, Message, SyncContext
from offload.testing import run_jobs
from offload.worker import runner
from offload.worker.runner import Worker
from tests.handed_calls import HandedCall

THREAD_WAIT_S = 20.0


class Late(Message):
    n: int


def _attempts(app: App, ready: threading.Event, go: threading.Event) -> list[Any]:
    """A handler whose attempt times out; its thread runs on, until `go`, and then puts a
    blob and reports progress: what each call gave (or raised) lands in the list."""
    said: list[Any] = []
    app.message("t.late")(Late)

    @app.handles(Late, timeout=0.2, max_attempts=1)
    def late(msg: Late, ctx: SyncContext) -> None:
        ready.set()
        go.wait(THREAD_WAIT_S)
        calls: list[Callable[[], Any]] = [
            lambda: ctx.blobs.put("notes/late.txt", b"x"),
            lambda: ctx.progress(0.5),
        ]
        for call in calls:
            try:
                said.append(call())
            except BaseException as exc:
                said.append(exc)

    return said


def _run_worker(
    app: App, until: Callable[[str], Any], made: Callable[[Worker], object] = lambda _: None
) -> asyncio.AbstractEventLoop:
    """Run a worker on a loop of its own until `until(job_id)` (awaited on that loop) returns,
    then stop it; the loop is left stopped, not closed, as a runner leaves it after its
    last run."""
    loop = asyncio.new_event_loop()

    async def main() -> None:
        await app.open()
        try:
            job = await app.enqueue(Late(n=1))
            worker = Worker(app, grace_s=0.5)
            made(worker)
            task = asyncio.create_task(worker.run())
            await until(job.id)
            worker.request_stop()
            await asyncio.wait_for(task, 30)
        finally:
            await app.close()

    loop.run_until_complete(main())
    return loop


async def _dead(app: App, job_id: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        row = await app.get(job_id)
        if row is not None and row.state == "dead":
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the job did not time out")


def test_a_thread_that_calls_after_its_worker_stopped_is_told(app: App) -> None:
    # Given a handler's thread that ran on past its attempt's timeout,
    ready, go = threading.Event(), threading.Event()
    said = _attempts(app, ready, go)
    loop = _run_worker(app, lambda job_id: _dead(app, job_id))
    try:
        # when it calls its context after its worker stopped (the loop runs no more),
        assert ready.is_set()
        go.set()
        _wait_for(said, 2)
    finally:
        loop.close()
    # then a call that needs the worker raises, and a report says it holds the job no more
    assert isinstance(said[0], RuntimeError), said
    assert "the worker that ran this attempt has stopped" in str(said[0])
    assert said[1] is False


def test_a_call_under_way_as_its_worker_stops_is_ended(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a handler's thread that ran on past its attempt, whose call waits on the
    # worker's loop (a blob store that never answers)
    ready, go = threading.Event(), threading.Event()
    said = _attempts(app, ready, go)
    call = HandedCall()
    monkeypatch.setattr(app.blobs, "put", call.put)
    until_handed = _until_handed(app, go, call)

    # when the worker stops,
    loop = _run_worker(app, until_handed)
    try:
        _wait_for(said, 2)
    finally:
        loop.close()
    # then the call is ended (the loop will never run it again), not left waiting
    assert isinstance(said[0], RuntimeError), said
    assert "the worker that ran this attempt has stopped" in str(said[0])
    assert said[1] is False


def _until_handed(app: App, go: threading.Event, call: HandedCall) -> Callable[[str], Any]:
    """What `_run_worker` awaits: the job dead (its attempt timed out), then its thread
    let go, until its call to `call.put` is under way on the worker's loop."""

    async def until_handed(job_id: str) -> None:
        await _dead(app, job_id)
        go.set()
        await asyncio.wait_for(call.handed.wait(), 30)

    return until_handed


def _wait_for(said: list[Any], count: int) -> None:
    deadline = time.monotonic() + THREAD_WAIT_S
    while len(said) < count:
        assert time.monotonic() < deadline, f"the thread was left waiting: {said}"
        time.sleep(0.01)


def test_a_call_cancelled_as_its_worker_stops_ends_before_the_worker_does(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a handler's thread whose call under way on the worker's loop takes a moment to
    # end once cancelled (a query cancelled on its server),
    ready, go = threading.Event(), threading.Event()
    said = _attempts(app, ready, go)
    call = HandedCall(0.2)  # (a round trip to the server)
    monkeypatch.setattr(app.blobs, "put", call.put)
    until_handed = _until_handed(app, go, call)

    # when the worker stops,
    loop = _run_worker(app, until_handed)
    try:
        _wait_for(said, 2)
        left = [task for task in asyncio.all_tasks(loop) if not task.done()]
    finally:
        loop.close()
    # then the call's cleanup ran to its end before the worker's run returned (cut short
    # by the loop's end, it was left pending: a cancelled query warned, its connection
    # closed by the garbage collector)
    assert call.cleanup == ["began", "ended"] and left == [], (call.cleanup, left)


@pytest.mark.anyio
async def test_run_jobs_lets_a_timed_out_handler_clean_up_through_its_context(app: App) -> None:
    # Given a plain handler that times out, and, told to stop, deletes what it had put,
    app.message("t.export")(Late)
    said: list[str] = []

    @app.handles(Late, timeout=0.2, max_attempts=1)
    def export(msg: Late, ctx: SyncContext) -> None:
        ctx.blobs.put("partial/x", b"half")
        ctx.cancelled.wait(THREAD_WAIT_S)
        try:
            ctx.blobs.delete("partial/x")
            said.append("cleaned up")
        except Exception as exc:
            said.append(repr(exc))

    async with app:
        await app.enqueue(Late(n=1))
        # when run_jobs runs it (it waits for threads that ran on, the loop still running),
        (row,) = await run_jobs(app, raise_errors=False)
        # then the cleanup's call reaches the worker's loop, as it did before the worker
        # closed its hand-offs as it stops (run_jobs closes them once its wait is over)
        assert row.state == "dead"
        assert said == ["cleaned up"]
        with pytest.raises(FileNotFoundError):
            await app.blobs.get("partial/x")


def test_a_call_that_ignores_its_cancellation_is_counted_as_left_running(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a handler's thread whose call under way on the worker's loop catches its
    # cancellation and goes on (until the test lets it end),
    ready, go = threading.Event(), threading.Event()
    said = _attempts(app, ready, go)
    call = HandedCall(stubborn=True)
    monkeypatch.setattr(app.blobs, "put", call.put)
    monkeypatch.setattr(runner, "HANDOFFS_END_S", 0.2)
    workers: list[Worker] = []
    until_handed = _until_handed(app, go, call)

    # when the worker stops,
    loop = _run_worker(app, until_handed, workers.append)
    try:
        # then it waits no longer than its bound, and counts the call as left running (the
        # loop's end would wait for it for ever: `offload worker` exits without it)
        (worker,) = workers
        assert worker.tasks_left == 1
        _wait_for(said, 2)
    finally:
        call.stubborn = False
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.gather(*asyncio.all_tasks(loop), return_exceptions=True))
        loop.close()


def test_a_worker_cancelled_while_it_awaits_the_calls_cleanup_still_closes_its_app(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a handler's thread whose call under way is slow to end once cancelled,
    ready, go = threading.Event(), threading.Event()
    _attempts(app, ready, go)
    call = HandedCall(3.0)
    monkeypatch.setattr(app.blobs, "put", call.put)
    users: list[int] = []

    async def main() -> None:
        await app.open()
        try:
            job = await app.enqueue(Late(n=1))
            worker = Worker(app, grace_s=0.5)
            run = asyncio.create_task(worker.run())
            await _dead(app, job.id)
            go.set()
            await asyncio.wait_for(call.handed.wait(), 30)
            # when it is stopped, and cancelled while it awaits that cleanup,
            worker.request_stop()
            await asyncio.wait_for(call.cancelled.wait(), 30)
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(run, 30)
            users.append(app._users)
        finally:
            await app.close()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.gather(*asyncio.all_tasks(loop), return_exceptions=True))
        loop.close()
    # then it released its hold on the app all the same (the test's own hold is left)
    assert users == [1]


class Stepped(Message):
    n: int


@pytest.mark.anyio
async def test_one_stop_ends_a_thread_waiting_on_a_long_step_past_the_grace(app: App) -> None:
    # Given a plain handler whose thread waits on a `ctx.once` step that awaits for ever on
    # the worker's loop
    app.message("t.stepped")(Stepped)
    step = HandedCall()
    said: list[BaseException] = []

    async def forever() -> int:
        await step.put("k", b"")
        return 1

    @app.handles(Stepped)
    def stepped(msg: Stepped, ctx: SyncContext) -> None:
        try:
            ctx.once("step", forever)
        except BaseException as exc:
            said.append(exc)
            raise

    async with app:
        job = await app.enqueue(Stepped(n=1))
        worker = Worker(app, grace_s=0.2)
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(step.handed.wait(), 30)
        # When the worker is asked to stop, once
        worker.request_stop()
        # Then past its grace the step is cancelled, the thread told, and the worker ends
        # (it waited for the thread, which waited on the step, for ever)
        await asyncio.wait_for(task, 30)
        assert step.cancelled.is_set()
        assert len(said) == 1 and isinstance(said[0], RuntimeError), said
        assert "the worker that ran this attempt has stopped" in str(said[0])
        # and the job waits again, its attempt given back
        row = await app.get(job.id)
        assert row is not None and row.state == "queued" and row.attempt == 0
