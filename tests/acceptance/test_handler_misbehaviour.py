"""Handlers that misbehave as real ones do: whatever a handler raises is a failed attempt of
its job, recorded, and the worker goes on with its other jobs (a handler's own
CancelledError, sys.exit(), KeyboardInterrupt, a BaseException, text UTF-8 cannot carry, a
message that cannot be read or is huge)."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from offload import App, Context, Message, Settings
from offload.testing import run_jobs

pytestmark = pytest.mark.anyio


class Odd(Message):
    case: str


class OddSync(Odd):
    pass


class Fine(Message):
    n: int


class Boom(BaseException):
    pass


class Unreadable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no")


#: A file name as `os.listdir` decodes bytes that are not UTF-8 (`surrogateescape`).
SURROGATE = b"caf\xe9.txt".decode("utf-8", "surrogateescape")


async def _cancelled_task() -> None:
    """A task the handler awaits, cancelled by someone else (as a timeout of a library's)."""
    inner = asyncio.ensure_future(asyncio.sleep(60))
    asyncio.get_running_loop().call_soon(inner.cancel)
    await inner


def _raise(case: str) -> None:
    if case == "cancelled":
        raise asyncio.CancelledError()
    if case == "exit":
        sys.exit(3)
    if case == "interrupt":
        raise KeyboardInterrupt
    if case == "base":
        raise Boom("a BaseException of the handler's own")
    if case == "surrogate":
        raise ValueError(f"cannot read {SURROGATE}")
    if case == "unreadable":
        raise Unreadable()
    if case == "huge":
        raise ValueError("x" * 1_000_000)


def _one_kind(tmp_path: Path, name: str, **settings: Any) -> App:
    """An app on an SQLite file in `tmp_path` whose one kind, `{name}.job`, is `Fine`."""
    url, blobs = f"sqlite:///{tmp_path / 'jobs.db'}", str(tmp_path / "b")
    app = App(name, settings=Settings(url=url, blobs_url=blobs, **settings))
    app.message(f"{name}.job")(Fine)
    return app


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    settings = Settings(url=f"sqlite:///{tmp_path / 'jobs.db'}", blobs_url=str(tmp_path / "b"))
    app = App("odd", settings=settings)
    app.message("odd.async")(Odd)
    app.message("odd.sync")(OddSync)
    app.message("odd.fine")(Fine)

    @app.handles(Odd, max_attempts=1)
    async def odd(msg: Odd, ctx: Context) -> None:
        if msg.case == "awaited-cancelled":
            await _cancelled_task()
        if msg.case == "own-deadline":  # a deadline of its own that cancels its task
            task = asyncio.current_task()
            assert task is not None
            asyncio.get_running_loop().call_later(0.01, task.cancel)
            await asyncio.sleep(30)
        if msg.case == "sets-cancelled":  # tells threads of its own to stop, then fails
            ctx.cancelled.set()
            raise ValueError("gave up")
        _raise(msg.case)

    @app.handles(OddSync, max_attempts=1)
    def odd_sync(msg: OddSync, ctx: Context) -> None:
        _raise(msg.case)

    @app.handles(Fine)
    async def fine(msg: Fine, ctx: Context) -> int:
        await ctx.progress(0.5, f"reading {SURROGATE}")  # stored escaped, not refused
        return msg.n

    async with app:
        yield app


CASES = [
    "cancelled",
    "awaited-cancelled",
    "own-deadline",
    "sets-cancelled",
    "exit",
    "interrupt",
    "base",
    "surrogate",
    "unreadable",
]
#: Of those, the ones only an async handler can meet (a plain one awaits nothing).
AWAITING = ("awaited-cancelled", "own-deadline", "sets-cancelled")


@pytest.mark.parametrize(
    ("kind", "case"),
    [("odd.async", case) for case in CASES]
    + [("odd.sync", case) for case in CASES if case not in AWAITING],
)
async def test_whatever_a_handler_raises_fails_its_attempt_and_the_worker_goes_on(
    app: App, kind: str, case: str
) -> None:
    # Given a job whose handler raises that, between two ordinary jobs, on one slot
    first = await app.enqueue(Fine(n=1))
    odd = await app.enqueue((Odd if kind == "odd.async" else OddSync)(case=case))
    last = await app.enqueue(Fine(n=2))

    # When a worker runs them
    ran = await run_jobs(app, raise_errors=False)

    # Then the odd job ran once and is dead (its one attempt spent), its error recorded;
    # the others succeeded, the one after it included (its slot was handed on)
    assert [row.id for row in ran] == [first.id, odd.id, last.id]
    by_id = {row.id: row for row in ran}
    row = by_id[odd.id]
    assert (row.state, row.attempt) == ("dead", 1)
    assert row.error is not None
    assert (
        row.error["type"]
        == {
            "cancelled": "CancelledError",
            "awaited-cancelled": "CancelledError",
            "own-deadline": "CancelledError",
            "sets-cancelled": "ValueError",
            "exit": "SystemExit",
            "interrupt": "KeyboardInterrupt",
            "base": "Boom",
            "surrogate": "ValueError",
            "unreadable": "Unreadable",
        }[case]
    )
    assert [by_id[first.id].state, by_id[last.id].state] == ["succeeded", "succeeded"]
    assert by_id[last.id].result == 2


async def test_text_utf8_cannot_carry_is_stored_escaped(app: App) -> None:
    job = await app.enqueue(Odd(case="surrogate"))
    fine = await app.enqueue(Fine(n=3))
    await run_jobs(app, raise_errors=False)
    row = await app.get(job.id)
    assert row is not None and row.error is not None
    assert row.error["message"] == "cannot read caf\\udce9.txt"
    assert "caf\\udce9.txt" in row.error["traceback"]
    status = await fine.status()
    assert status.progress is not None and status.progress.message == "reading caf\\udce9.txt"


async def test_a_message_that_cannot_be_read_is_said_so(app: App) -> None:
    job = await app.enqueue(Odd(case="unreadable"))
    await run_jobs(app, raise_errors=False)
    row = await app.get(job.id)
    assert row is not None and row.error is not None
    assert row.error["message"] == "<Unreadable: its message could not be read (RuntimeError)>"


async def test_a_huge_message_is_cut_in_the_log_line(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    job = await app.enqueue(Odd(case="huge"))
    with caplog.at_level(logging.WARNING, logger="offload.worker"):
        await run_jobs(app, raise_errors=False)
    (line,) = [r.getMessage() for r in caplog.records if job.id in r.getMessage()]
    assert len(line) < 2200 and line.endswith("… (1,000,000 chars)")
    row = await app.get(job.id)
    assert row is not None and row.error is not None and len(row.error["message"]) == 2000


async def test_an_async_handler_that_blocks_the_loop_is_named_while_it_blocks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from offload.worker import loopwatch

    monkeypatch.setattr(loopwatch, "BLOCKED_AFTER_S", 0.5)
    settings = Settings(url=f"sqlite:///{tmp_path / 'jobs.db'}", blobs_url=str(tmp_path / "b"))
    app = App("blocking", settings=settings)
    app.message("blocking.export")(Fine)
    told = threading.Event()

    @app.handles(Fine)
    async def export(msg: Fine, ctx: Context) -> int:
        # blocks the loop (a time.sleep, a computation) until the watch has said so
        told.wait(30)
        return msg.n

    class Told(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if getattr(record, "action", None) == "loop_blocked":
                told.set()

    watcher = Told()
    logging.getLogger("offload.worker").addHandler(watcher)
    try:
        async with app:
            job = await app.enqueue(Fine(n=7))
            with caplog.at_level(logging.INFO, logger="offload.worker"):
                (row,) = await run_jobs(app)
    finally:
        logging.getLogger("offload.worker").removeHandler(watcher)
    assert told.is_set() and row.state == "succeeded"
    (said,) = [r for r in caplog.records if getattr(r, "action", None) == "loop_blocked"]
    text = said.getMessage()
    assert f"by job {job.id} (blocking.export), at {__file__}:" in text
    assert "in export: an async handler must not block" in text
    assert "make it a plain def handler" in text
    assert any(getattr(r, "action", None) == "loop_unblocked" for r in caplog.records)


async def test_a_cancel_asked_for_ends_a_run_whose_cleanup_raises_as_cancelled(
    tmp_path: Path,
) -> None:
    # Given a handler whose cleanup raises when it is cancelled
    app = _one_kind(tmp_path, "cleanup", lease_s=1.5)
    started = asyncio.Event()

    @app.handles(Fine)
    async def job(msg: Fine, ctx: Context) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        finally:
            raise RuntimeError("cleanup failed")

    from offload.worker.runner import Worker

    async with app:
        queued = await app.enqueue(Fine(n=1))
        worker = Worker(app)
        running = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(started.wait(), 30)
            # When a user cancels it while it runs
            await app.cancel(queued.id)
            status = await queued.wait(timeout=30)
        finally:
            worker.request_stop()
            await asyncio.wait_for(running, 30)
    # Then it ends cancelled on its one attempt, where the cleanup's error failed it and
    # it ran again
    assert (status.state, status.attempt) == ("cancelled", 1)


@pytest.mark.parametrize("second_stop", [False, True])
async def test_a_stop_leaves_a_run_whose_handler_ignores_its_cancellation(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    second_stop: bool,
) -> None:
    from offload.worker import runner as runner_module
    from offload.worker.runner import Worker

    # Given a handler that catches every cancellation and goes on (until the test ends it),
    app = _one_kind(tmp_path, "stubborn", lease_s=30)
    started, done = asyncio.Event(), asyncio.Event()
    ignored = 0

    @app.handles(Fine)
    async def stubborn(msg: Fine, ctx: Context) -> None:
        nonlocal ignored
        started.set()
        while not done.is_set():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                ignored += 1

    # (the wait for a cancelled run is the operator's grace, or a floor: long, unless a
    # second stop cuts it short)
    monkeypatch.setattr(runner_module, "CANCELLED_RUNS_WAIT_S", 3600.0 if second_stop else 0.2)
    monkeypatch.setattr(runner_module, "CANCELLED_RUNS_FLOOR_S", 0.2)
    async with app:
        queued = await app.enqueue(Fine(n=1))
        worker = Worker(app, grace_s=0.05)
        running = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(started.wait(), 30)
            # when the worker is asked to stop (and, impatient, again),
            with caplog.at_level(logging.ERROR, logger="offload.worker"):
                worker.request_stop()
                if second_stop:
                    await _until(lambda: ignored > 0)
                    worker.request_stop(now=True)
                # then it stops all the same, leaving that run to the end of the process,
                await asyncio.wait_for(running, 30)
            assert worker.tasks_left == 1 and ignored >= 1
            (said,) = [r for r in caplog.records if getattr(r, "action", "") == "cancel_ignored"]
            assert queued.id in said.getMessage()
            # and its job keeps its lease, to lapse and be run again: it was not released
            # (released, another worker would run it beside the run that goes on).
            row = await app.get(queued.id)
            assert row is not None and row.state == "running" and row.attempt == 1
        finally:
            done.set()
            if not running.done():
                worker.request_stop(now=True)
                await asyncio.wait_for(running, 30)


async def _until(check: Callable[[], bool], timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110 (polls a counter that sets no event)
            await asyncio.sleep(0.01)


async def test_a_worker_whose_loop_a_handler_blocks_is_unhealthy_until_it_runs_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from offload.worker import runner as runner_module
    from offload.worker.runner import Worker

    monkeypatch.setattr(runner_module, "UNHEALTHY_AFTER_S", 2.0)
    app = _one_kind(tmp_path, "blocking", lease_s=30)
    release = threading.Event()
    seen: list[str | None] = []

    @app.handles(Fine)
    async def blocking(msg: Fine, ctx: Context) -> None:
        release.wait(30)  # blocks the event loop, as a sync call in an async handler does

    worker = Worker(app)

    def probe() -> None:  # a liveness probe, from its own thread as the endpoint's server
        deadline = time.monotonic() + 30
        while (fault := worker.health()) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(fault)
        release.set()

    async with app:
        running = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(worker.started.wait(), 30)
            # Given a healthy worker,
            assert worker.health() is None
            prober = threading.Thread(target=probe)
            prober.start()
            # when a handler blocks its loop, its health check says so while it blocks,
            job = await app.enqueue(Fine(n=1))
            await job.wait(timeout=60)
            prober.join(30)
            (fault,) = seen
            assert fault is not None and "event loop has not run for" in fault
            # and it is healthy again once the loop runs.
            assert worker.health() is None
        finally:
            release.set()
            worker.request_stop()
            await asyncio.wait_for(running, 30)
    assert worker.health() is None  # stopped: no probe should restart it


@pytest.mark.parametrize("handler", ["cleans_up", "ends_at_a_second_cancel"])
async def test_a_second_stop_releases_a_run_that_lets_its_cancellation_through(
    tmp_path: Path, handler: str
) -> None:
    from offload.worker.runner import Worker

    # Given a handler with a short cleanup when cancelled (or one that ends at a second
    # cancel only, as one whose first cancel a library it awaits swallowed),
    app = _one_kind(tmp_path, "polite", lease_s=30)
    started = asyncio.Event()

    @app.handles(Fine)
    async def polite(msg: Fine, ctx: Context) -> None:
        started.set()
        if handler == "cleans_up":
            try:
                await asyncio.sleep(3600)
            finally:
                await asyncio.sleep(0.05)  # closes its client, say
        else:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass
            await asyncio.sleep(3600)

    async with app:
        queued = await app.enqueue(Fine(n=1))
        worker = Worker(app, grace_s=3600)
        running = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(started.wait(), 30)
            # when its worker is asked to stop, twice,
            worker.request_stop()
            worker.request_stop(now=True)
            await asyncio.wait_for(running, 30)
        finally:
            if not running.done():
                running.cancel()
        # then the run ended, and its job was released for another worker, attempt unspent.
        assert worker.tasks_left == 0
        row = await app.get(queued.id)
        assert row is not None and (row.state, row.attempt) == ("queued", 0)
