"""`enqueue_sync`, `Job.status_sync` and `Job.wait_sync` as a threaded WSGI server calls
them: many threads at once with no event loop, one private loop thread for them all, none
left behind by `close`, a working runner again after a fork, and no call that can wait on
itself forever."""

from __future__ import annotations

import asyncio
import faulthandler
import multiprocessing
import threading
import time
import warnings
from concurrent.futures import CancelledError, ThreadPoolExecutor
from datetime import timedelta

import pytest

import offload._sync
from offload import App, ConfigurationError, JobState, Message

#: Threads that call at once, as a threaded server's request threads do.
THREADS = 16


class Export(Message):
    period: str


def sync_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "offload-sync"]


def test_many_threads_share_one_loop_thread_and_close_ends_it(app: App) -> None:
    # Given a plain App and no event loop anywhere
    app.message("t.export")(Export)
    before = len(sync_threads())
    start = threading.Barrier(THREADS)

    def request(i: int) -> JobState:
        start.wait(timeout=30)  # every thread makes its first call at the same moment
        job = app.enqueue_sync(Export(period=f"2026-{i:02}"), delay=timedelta(hours=1))
        return job.status_sync().state

    # When THREADS threads enqueue and read at once, twice over
    with ThreadPoolExecutor(THREADS) as pool:
        states = list(pool.map(request, range(THREADS)))
        states += list(pool.map(request, range(THREADS)))

    # Then every call worked, on one loop thread started for them all
    assert states == [JobState.QUEUED] * (2 * THREADS)
    assert len(sync_threads()) == before + 1
    # And closing the App ends that thread (no loop is left running)
    asyncio.run(app.close())
    assert len(sync_threads()) == before


def test_threads_each_on_a_loop_of_their_own_share_an_sqlite_app(app: App) -> None:
    # Given an App on an SQLite file, and request threads that each run their call on an
    # event loop of their own (Flask's `async def` views: a loop per request)
    app.message("t.export")(Export)
    start = threading.Barrier(THREADS)

    def request(i: int) -> str:
        start.wait(timeout=30)
        return asyncio.run(app.enqueue(Export(period=f"2026-{i:02}"))).id

    # When they enqueue at once, twice over
    with ThreadPoolExecutor(THREADS) as pool:
        ids = list(pool.map(request, range(THREADS)))
        ids += list(pool.map(request, range(THREADS)))
    # Then every call stored its job (they opened the app once, and wrote on its one
    # connection in turn: two at once failed with "cannot start a transaction within a
    # transaction")
    stored = {row.id for row in app.list_jobs_sync(owner=None, limit=100)}
    assert len(ids) == 2 * THREADS and stored == set(ids)
    asyncio.run(app.close())


def test_a_call_cancelled_while_it_waits_for_the_open_is_cancelled_alone(app: App) -> None:
    app.message("t.export")(Export)

    async def main() -> list[str]:
        # Given a first call opening the app, and two more waiting for that open,
        opener = asyncio.create_task(app.enqueue(Export(period="a")))
        await asyncio.sleep(0)
        waiters = [asyncio.create_task(app.enqueue(Export(period=p))) for p in "bc"]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        # when one waiter is cancelled (its client went away),
        waiters[0].cancel()
        answers = await asyncio.gather(opener, *waiters, return_exceptions=True)
        await app.close()
        return [type(a).__name__ for a in answers]

    # then the others are served (the cancel reached the open they shared: the opener
    # raised InvalidStateError and the other waiter CancelledError)
    assert asyncio.run(main()) == ["Job", "CancelledError", "Job"]


def test_a_call_waiting_for_an_open_whose_loop_ended_opens_it_itself(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    from offload.brokers.sqlite import backend as sqlite

    app.message("t.export")(Export)
    # Given an SQLite file slow to open (a slow disk: half a second),
    connect = sqlite.SQLiteBackend._connect

    def slowly(self: sqlite.SQLiteBackend, create: bool) -> None:
        time.sleep(0.5)
        connect(self, create)

    monkeypatch.setattr(sqlite.SQLiteBackend, "_connect", slowly)
    # a first call opening it on a loop that ends while it opens (closed, its task left),
    started = threading.Event()

    def first() -> None:
        loop = asyncio.new_event_loop()
        dropped = loop.create_task(app.enqueue(Export(period="a")))
        loop.call_soon(started.set)
        loop.run_until_complete(asyncio.sleep(0.2))
        loop.close()
        assert not dropped.done()  # (its open never ends)

    thread = threading.Thread(target=first)
    thread.start()
    assert started.wait(30)

    # and a call on another loop that began waiting for that open before its loop ended,
    async def later() -> str:
        return (await asyncio.wait_for(app.enqueue(Export(period="b")), 20)).id

    # then that call opens it itself once it sees the loop ended (it waited for good)
    try:
        assert asyncio.run(later())
    finally:
        thread.join(30)
        asyncio.run(app.close())


def test_waiting_threads_do_not_block_each_other(app: App) -> None:
    # Given jobs that will not finish on their own (no worker)
    app.message("t.export")(Export)
    jobs = [app.enqueue_sync(Export(period="2026-10")) for _ in range(4)]
    waiting = threading.Barrier(len(jobs) + 1)

    def wait(i: int) -> JobState:
        waiting.wait(timeout=30)
        return jobs[i].wait_sync(timeout=30).state

    # When threads wait on them while another thread cancels them one by one
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(wait, i) for i in range(len(jobs))]
        waiting.wait(timeout=30)
        for job in jobs:
            asyncio.run(app.cancel(job.id))
        states = [f.result(timeout=60) for f in futures]

    # Then each wait ends with its job's final state (the waits share the loop thread)
    assert states == [JobState.CANCELLED] * len(jobs)
    asyncio.run(app.close())


def test_a_sync_call_from_the_loop_thread_is_refused_not_a_deadlock(app: App) -> None:
    app.message("t.export")(Export)
    job = app.enqueue_sync(Export(period="2026-10"))

    async def nested(_twin: App) -> None:
        job.status_sync()  # runs on the loop thread: it would wait on itself

    with pytest.raises(ConfigurationError, match="await the async method"):
        app._sync_call(nested)
    assert job.status_sync().state is JobState.QUEUED  # the runner still serves
    asyncio.run(app.close())


def _enqueue_in_child(app: App, done: multiprocessing.Queue[str]) -> None:
    # Where it waits, should it hang (once in a CI run, not reproduced since): every
    # thread's stack on stderr, before the parent gives up on it.
    faulthandler.dump_traceback_later(45, exit=True)
    job = app.enqueue_sync(Export(period="2026-11"))
    done.put(job.status_sync().state.value)
    faulthandler.cancel_dump_traceback_later()


def test_a_forked_child_gets_a_loop_thread_of_its_own(app: App) -> None:
    # Given a parent whose App has a running loop thread (a pre-loading WSGI server)
    app.message("t.export")(Export)
    app.enqueue_sync(Export(period="2026-10"))
    # When a forked child (a server's worker process) enqueues
    context = multiprocessing.get_context("fork")
    done: multiprocessing.Queue[str] = context.Queue()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: intended
        child = context.Process(target=_enqueue_in_child, args=(app, done))
        child.start()
    try:
        # Then it answers (the parent's thread does not exist there: it would wait forever)
        assert done.get(timeout=60) == "queued"
        child.join(timeout=60)
        assert child.exitcode == 0
    finally:
        if child.is_alive():
            child.kill()
            child.join()
    asyncio.run(app.close())


def test_close_ends_a_waiting_thread_instead_of_leaving_it_blocked(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(offload._sync, "DEFAULT_STOP_GRACE_S", 0.1)
    # Given a request thread waiting on a job that will not end (no worker)
    app.message("t.export")(Export)
    job = app.enqueue_sync(Export(period="2026-10"))
    runner = app._sync
    assert runner is not None
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(job.wait_sync, 600)
        deadline = time.monotonic() + 30
        while not asyncio.all_tasks(runner.loop):  # until the wait runs on the loop thread
            assert time.monotonic() < deadline, "the wait never started"
            time.sleep(0.01)
        # When the App closes (the server shuts down)
        asyncio.run(app.close())
        # Then the waiting thread is released with a cancellation, not blocked forever
        with pytest.raises(CancelledError):
            waiting.result(timeout=60)
    assert not runner.thread.is_alive() and runner.loop.is_closed()
    # And the App serves sync calls again afterwards, on a new loop thread
    assert job.status_sync().state is JobState.QUEUED
    asyncio.run(app.close())
