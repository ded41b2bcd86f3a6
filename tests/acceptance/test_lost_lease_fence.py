"""A run whose worker lost the job's lease does not act for the job: a worker that stalled
past its lease (SIGSTOP, a long pause) and woke ran a `ctx.once` step again while another
worker's run of the job ran it (its handler's timer fired before its heartbeat), and wrote
over the file that run had written."""

from __future__ import annotations

import asyncio
import io
import threading
from pathlib import Path
from typing import Any

import pytest

from offload import App, Context, Message, Settings, SyncContext
from offload.testing import run_jobs
from offload.worker.runner import Worker
from tests.contract._support import ShiftClock, rescue

pytestmark = pytest.mark.anyio

#: Far past the worker's lease: the lease has surely lapsed by its own clocks.
STALL_S = 600.0


class Charge(Message):
    n: int


async def test_a_run_whose_lease_went_elsewhere_runs_no_step_and_writes_no_file(
    settings: Settings,
) -> None:
    for plain in (False, True):
        await _stolen_while_stalled(settings, plain=plain)


async def _stolen_while_stalled(settings: Settings, *, plain: bool) -> None:
    clock = ShiftClock()
    app = App("fence", settings=settings, clock=clock)
    app.message("t.charge")(Charge)
    began, go, done = threading.Event(), threading.Event(), threading.Event()
    said: list[Any] = []

    def charge() -> str:
        said.append("charged")
        return "ch_1"

    if plain:

        @app.handles(Charge)
        def handle_plain(msg: Charge, ctx: SyncContext) -> None:
            began.set()
            go.wait(30)
            try:
                for act in (
                    lambda: ctx.once("charge", charge),
                    lambda: ctx.blobs.put("r.txt", b"x"),
                    lambda: ctx.blobs.put_stream("s.txt", io.BytesIO(b"x")),  # type: ignore[attr-defined]
                ):
                    try:
                        said.append(act())
                    except RuntimeError as exc:
                        said.append(exc)
            finally:
                done.set()

    else:

        @app.handles(Charge)
        async def handle_async(msg: Charge, ctx: Context) -> None:
            began.set()
            await asyncio.to_thread(go.wait, 30)
            try:  # (the lease found lost, the run is cancelled too: at its next await)
                for act in (
                    lambda: ctx.once("charge", charge),
                    lambda: ctx.blobs.put("r.txt", b"x"),
                ):
                    try:
                        said.append(await act())
                    except RuntimeError as exc:
                        said.append(exc)
            finally:
                done.set()

    async with app:
        backend = app._require_backend()
        job = await app.enqueue(Charge(n=1))
        worker = Worker(app, lease_s=30.0)

        async def no_rescue() -> int:  # (this worker must not take the job back itself)
            return 0

        worker.rescue_lapsed = no_rescue  # type: ignore[method-assign]
        task = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(asyncio.to_thread(began.wait, 30), 35)
            # Given the worker stalled past its lease, and another worker took the job
            clock.advance(STALL_S)
            assert [o.lease.job_id for o in await rescue(backend, clock)] == [job.id]
            (stolen,) = await backend.claim(
                [Charge.__queue__], worker_id="thief", lease_for=STALL_S, limit=1
            )
            assert stolen.job_id == job.id
            # When the woken run goes on before its heartbeat told it
            go.set()
            assert await asyncio.to_thread(done.wait, 30)
        finally:
            worker.request_stop()
            await asyncio.wait_for(task, 30)
    # Then neither its step nor its write happened: each said the lease is gone
    # (an async run is cancelled too, at its next await: it may not get to its write)
    assert "charged" not in said, (plain, said)
    assert len(said) == 3 or (not plain and 1 <= len(said) <= 3), (plain, said)
    assert all(isinstance(s, RuntimeError) for s in said), (plain, said)
    assert all("no longer holds the job's lease" in str(s) for s in said), said
    assert not (Path(settings.blobs_url) / "r.txt").exists()
    assert not (Path(settings.blobs_url) / "s.txt").exists()


class RunsOn(Message):
    n: int


async def _retried_then_let_go(app: App, go: threading.Event, done: threading.Event) -> str:
    """Enqueue a `RunsOn`, run a worker (grace 0.3 s) until the job's retry succeeded while
    its first attempt's thread waits on `go`, then let that thread go on and wait until it
    is `done`; the job's id."""
    job = await app.enqueue(RunsOn(n=1))
    worker = Worker(app, grace_s=0.3)
    task = asyncio.create_task(worker.run())
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while not ((row := await app.get(job.id)) and row.state == "succeeded"):
            assert asyncio.get_running_loop().time() < deadline, row
            await asyncio.sleep(0.02)
        go.set()
        assert await asyncio.to_thread(done.wait, 30)
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 30)
    return job.id


async def test_a_thread_that_runs_on_past_its_attempt_acts_no_more_once_the_job_may_run_again(
    settings: Settings,
) -> None:
    # Given a plain handler whose first attempt times out, its thread running on (it does
    # not look at ctx.cancelled) past the hold of its outcome, while the job is retried
    app = App("runs-on", settings=settings)
    app.message("t.runs_on")(RunsOn)
    go, done = threading.Event(), threading.Event()
    said: list[Any] = []

    @app.handles(RunsOn, timeout=0.2, max_attempts=3)
    def runs_on(msg: RunsOn, ctx: SyncContext) -> None:
        if ctx.attempt > 1:
            return
        go.wait(30)
        try:
            for act in (
                lambda: ctx.once("charge", lambda: said.append("charged")),
                lambda: ctx.blobs.put("late.txt", b"x"),
            ):
                try:
                    said.append(act())
                except RuntimeError as exc:
                    said.append(exc)
        finally:
            done.set()

    async with app:
        # When its outcome was reported (the hold's grace over) and the job ran again
        await _retried_then_let_go(app, go, done)
    # Then the thread's step and write are refused (they happened while the job ran again)
    assert "charged" not in said and len(said) == 2, said
    assert all(isinstance(s, RuntimeError) for s in said), said
    assert not (Path(settings.blobs_url) / "late.txt").exists()


async def test_run_jobs_lets_a_timed_out_thread_that_will_run_again_clean_up_in_its_grace(
    settings: Settings,
) -> None:
    # Given a plain handler whose first attempt runs over its timeout (it will run again)
    # and returns within the worker's grace, a step and a write made on its way out
    app = App("cleanup", settings=settings)
    app.message("t.runs_on")(RunsOn)
    said: list[Any] = []

    @app.handles(RunsOn, timeout=0.2, max_attempts=3)
    def runs_on(msg: RunsOn, ctx: SyncContext) -> None:
        if ctx.attempt > 1:
            return
        ctx.cancelled.wait(30)
        for act in (lambda: ctx.once("tidy", lambda: "ok"), lambda: ctx.blobs.put("t", b"x")):
            try:
                said.append(act())
            except RuntimeError as exc:
                said.append(exc)

    async with app:
        await app.enqueue(RunsOn(n=1))
        # When run_jobs runs it (its worker stops once the attempt ended: the job retrying)
        (row,) = await run_jobs(app, raise_errors=False)
    # Then both went through, as they do in a worker that goes on (the outcome is held)
    assert row.state == "retrying"
    assert said == ["ok", "blob:t"], said


async def test_a_step_that_ran_is_recorded_though_its_run_was_cut_meanwhile(
    settings: Settings,
) -> None:
    # Given a plain handler's step whose fn still runs when its attempt's outcome, held
    # past the grace, is reported (retrying: the run is cut)
    app = App("recorded", settings=settings)
    app.message("t.runs_on")(RunsOn)
    go, done = threading.Event(), threading.Event()
    said: list[Any] = []

    def charge() -> str:
        go.wait(30)
        return "ch_1"

    @app.handles(RunsOn, timeout=0.2, max_attempts=3)
    def runs_on(msg: RunsOn, ctx: SyncContext) -> None:
        if ctx.attempt > 1:
            return
        try:
            said.append(ctx.once("charge", charge))
        except RuntimeError as exc:
            said.append(exc)
        finally:
            done.set()

    async with app:
        # When fn returns once the job ran again
        job_id = await _retried_then_let_go(app, go, done)
        # Then its value is recorded (a later run finds it, and does not charge again)
        assert said == ["ch_1"], said
        assert await app._require_backend().recall(job_id, "charge") == (True, "ch_1")
