"""Synchronous code (a Flask view, a script) on a server backend: the `*_sync` methods list,
cancel and re-queue a user's jobs on the App's own loop thread; and an App opened by one
`asyncio.run` by its first call opens anew on the next one, and one left open by one says
why it cannot be used from another, where Redis's connections, bound to the ended loop,
failed every other call with `Event loop is closed`."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from offload import App, ConfigurationError, JobState, Message, Settings

from ..services import drop_redis_prefix, redis_prefix, redis_url, require_redis

pytestmark = [pytest.mark.redis]


class Export(Message):
    period: str


@pytest.fixture
def app() -> Iterator[App]:
    require_redis()
    prefix = redis_prefix()
    app = App("sync-calls", settings=Settings(url=redis_url(prefix)))
    app.message("t.export")(Export)
    yield app
    drop_redis_prefix(prefix)


def test_a_views_sync_calls_list_cancel_and_requeue_a_users_jobs(app: App) -> None:
    # Given two of alice's jobs and one of bob's, none picked up yet
    first = app.enqueue_sync(Export(period="2026-10"), owner="alice")
    second = app.enqueue_sync(Export(period="2026-11"), owner="alice")
    app.enqueue_sync(Export(period="2026-11"), owner="bob")
    try:
        # her page lists hers alone, newest first;
        mine = app.list_jobs_sync(owner="alice")
        assert [row.id for row in mine] == [second.id, first.id]
        # her cancel, through the job found as hers, ends it (waiting: at once);
        job = app.job_sync(first.id, owner="alice")
        assert job is not None and app.job_sync(first.id, owner="bob") is None
        assert job.cancel_sync().state is JobState.CANCELLED
        # and an operator re-queues it.
        assert app.requeue_sync(first.id).state is JobState.QUEUED
        assert app.cancel_sync(second.id).state is JobState.CANCELLED
    finally:
        asyncio.run(app.close())


def test_an_app_a_first_call_opened_opens_anew_on_each_later_loop(app: App) -> None:
    # Given an App a first asyncio.run opened by its first call (a script's, or a test
    # client's that runs each request on a loop of its own), no `open` holding it,
    job = asyncio.run(app.enqueue(Export(period="2026-10")))
    # each later asyncio.run opens it anew, as the first did (its connections ended with
    # the first loop).
    for period in ("2026-11", "2026-12"):
        assert asyncio.run(app.enqueue(Export(period=period))).created
    row = asyncio.run(app.get(job.id))
    assert row is not None and row.state is JobState.QUEUED
    assert len(asyncio.run(app.list_jobs(owner=None))) == 3
    # and closes as each loop ends: no connection is left unclosed (a warning, an error
    # under this suite's filters).
    gc.collect()
    asyncio.run(app.close())


# The first run's loop ended with its connections open (the mistake this test makes on
# purpose): they are collected unclosed, and Python says so.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_an_app_left_open_on_a_loop_that_ended_says_why_not_each_time(app: App) -> None:
    # Given an App a first asyncio.run opened and left open (an `open` not closed there),
    asyncio.run(app.open())
    # every call from a later asyncio.run is refused the same way, naming the fix,
    for _ in range(3):
        with pytest.raises(ConfigurationError, match=r"event loop that has ended.*_sync"):
            asyncio.run(app.enqueue(Export(period="2026-10")))
    # and once closed (its connections ended with that loop), a new run opens it anew.
    asyncio.run(app.close())
    gc.collect()  # (the dropped connections go now, under this test's warning filters)

    async def enqueue_and_close() -> bool:
        async with app:
            return (await app.enqueue(Export(period="2026-10"))).created

    assert asyncio.run(enqueue_and_close())


def test_first_calls_at_once_open_it_once_on_each_loop(app: App) -> None:
    # Given two first calls at once on each of two loops in turn (their wait for the open
    # on the first loop binds its lock to that loop),
    async def two() -> list[bool]:
        jobs = await asyncio.gather(*(app.enqueue(Export(period=p)) for p in ("a", "b")))
        return [job.created for job in jobs]

    # then each loop's pair is served, and no backend is left open on a loop gone.
    assert asyncio.run(two()) == [True, True]
    assert asyncio.run(two()) == [True, True]
    gc.collect()


@pytest.mark.anyio
async def test_opening_and_closing_on_one_loop_leaves_no_task_behind(app: App) -> None:
    # Given a service that opens and closes the app for each unit of work on one loop,
    # and one that lets a first call open it and closes it,
    for _ in range(3):
        async with app:
            await app.enqueue(Export(period="p"))
    for _ in range(3):
        await app.enqueue(Export(period="p"))
        await app.close()
    await asyncio.sleep(0)  # (a cancelled task ends at its next step)
    # then no task is left waiting to close a backend already closed.
    left = [t for t in asyncio.all_tasks() if t.get_name() == "offload-app-open"]
    assert left == []


def test_an_app_open_on_a_loop_that_still_runs_is_refused_from_another(app: App) -> None:
    import threading

    # Given an App opened by a first call on one thread's loop, which still runs,
    ready, done = threading.Event(), threading.Event()

    async def serve() -> None:
        await app.enqueue(Export(period="a"))
        ready.set()
        while not done.is_set():  # noqa: ASYNC110 (a thread's event, not the loop's)
            await asyncio.sleep(0.01)
        await app.close()

    thread = threading.Thread(target=asyncio.run, args=(serve(),))
    thread.start()
    try:
        assert ready.wait(30)
        # then a call from another thread's loop is refused, saying why (its connections
        # belong to that loop: the driver would fail it, or worse, use them from two).
        with pytest.raises(ConfigurationError, match="open on another event loop"):
            asyncio.run(app.enqueue(Export(period="b")))
    finally:
        done.set()
        thread.join(30)


def test_threads_each_on_a_loop_of_their_own_are_refused_or_served_never_hung(app: App) -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    # Given request threads that each run their call on an event loop of their own (Flask's
    # `async def` views), on a backend whose connections belong to the loop that opened it
    threads = 8
    start = threading.Barrier(threads)

    def request(i: int) -> str:
        start.wait(timeout=30)
        try:
            return asyncio.run(app.enqueue(Export(period=f"p{i}"))).id
        except ConfigurationError as exc:
            assert "open on another event loop" in str(exc)
            return "refused"

    # When they all call at once, many times over,
    with ThreadPoolExecutor(threads) as pool:
        done = pool.map(request, range(threads * 5), timeout=60)
        answers = list(done)  # (each call ended: several opening at once hung some)
    # then each call stored its job or was refused, saying why, and the jobs stored are
    # exactly those answered
    stored = {row.id for row in app.list_jobs_sync(owner=None, limit=100)}
    assert stored == {a for a in answers if a != "refused"} and stored
    # and a later loop still opens it.
    assert asyncio.run(app.enqueue(Export(period="after"))).id
    asyncio.run(app.close())


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_a_host_route_that_enqueues_works_under_a_test_client_of_a_loop_per_request(
    app: App,
) -> None:
    # Given a host app with offload's API mounted and a route of its own that enqueues,
    # under FastAPI's TestClient used without `with` (each request on a loop of its own),
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from offload.web import create_app

    api = FastAPI()
    api.mount("/jobs", create_app(app))

    @api.post("/exports", status_code=202)
    async def export() -> dict[str, str]:
        return {"id": (await app.enqueue(Export(period="2026-10"), owner="local")).id}

    client = TestClient(api, base_url="http://localhost")  # development mode: loopback names
    # then the route answers every request, and the mounted API after it.
    ids = [client.post("/exports").json()["id"] for _ in range(3)]
    for job_id in ids:
        answer = client.get(f"/jobs/v1/jobs/{job_id}")
        assert answer.status_code == 200, answer.text
        assert answer.json()["state"] == "queued"
    assert client.post("/jobs/v1/jobs/t.export", json={"period": "p"}).status_code == 202
    assert client.post("/exports").status_code == 202
    gc.collect()  # (no connection left unclosed: each loop's closed as it ended)
