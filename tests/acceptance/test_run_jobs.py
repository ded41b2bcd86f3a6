"""offload.testing: a user's own tests run the jobs their code enqueued, in process, on each
engine, then read them; failures come back as the handler's traceback."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from offload import (
    App,
    ConfigurationError,
    Context,
    Message,
    OffloadError,
    Retry,
    Settings,
    SyncContext,
    testing,
)
from offload.testing import FakeClock, JobsFailed, RunawayJobs, run_jobs, run_jobs_sync
from offload.worker.runner import Worker

from ..services import (
    server_store,
)

pytestmark = pytest.mark.anyio


class Export(Message):
    user: str
    parts: int = 0


class Part(Message):
    user: str
    n: int


class Broken(Message):
    why: str


class Later(Message):
    pass


class Loop(Message):
    n: int


class Audit(Message):
    pass


def shop(url: str, folder: Path, clock: FakeClock | None = None) -> App:
    """An App as a user's project declares it: an export that enqueues its parts, a
    handler that raises, one that asks to run again later, one that enqueues itself."""
    settings = Settings(
        url=url, blobs_url=str(folder / "blobs"), secret_key=b"test-secret-of-32-bytes-or-more!"
    )
    app = App("shop", settings=settings, clock=clock)
    app.message("shop.export")(Export)
    app.message("shop.part")(Part)
    app.message("shop.broken")(Broken)
    app.message("shop.later")(Later)
    app.message("shop.loop")(Loop)
    app.message("shop.audit", queue="audit")(Audit)

    @app.handles(Export)
    async def export(msg: Export, ctx: Context) -> dict[str, int | str]:
        for n in range(msg.parts):
            await app.enqueue(Part(user=msg.user, n=n))
        return {"user": msg.user, "parts": msg.parts}

    @app.handles(Part)
    def part(msg: Part, ctx: Context) -> int:  # a plain handler, in a thread
        return msg.n * 10

    @app.handles(Broken, max_attempts=2)
    async def broken(msg: Broken, ctx: Context) -> None:
        raise ValueError(f"no such report: {msg.why}")

    @app.handles(Later)
    async def later(msg: Later, ctx: Context) -> str:
        if ctx.attempt == 1:
            raise Retry(delay=60, reason="not yet")
        return "done"

    @app.handles(Loop)
    async def loop(msg: Loop, ctx: Context) -> None:
        await app.enqueue(Loop(n=msg.n + 1))

    @app.handles(Audit)
    async def audit(msg: Audit, ctx: Context) -> None:
        return None

    return app


@pytest.fixture(
    params=[
        "sqlite",
        "memory",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
    elif request.param == "memory":
        yield "memory://"
    else:
        with server_store(request.param) as url:
            yield url


@pytest.fixture
async def app(url: str, tmp_path: Path) -> AsyncIterator[App]:
    app = shop(url, tmp_path)
    async with app:
        yield app


async def test_the_jobs_enqueued_and_the_jobs_they_enqueue_run_in_order(app: App) -> None:
    # When a test enqueues an export that enqueues two parts, and runs the jobs
    first = await app.enqueue(Export(user="u1", parts=2))
    ran = await run_jobs(app)

    # Then the export and both parts ran, in the order they started, and each record
    # carries its result and payload
    assert [row.kind for row in ran] == ["shop.export", "shop.part", "shop.part"]
    assert ran[0].id == first.id
    assert [row.state for row in ran] == ["succeeded"] * 3
    assert ran[0].result == {"user": "u1", "parts": 2}
    assert sorted(row.result for row in ran[1:]) == [0, 10]
    assert ran[1].payload["user"] == "u1"
    # and a second call finds nothing left to run
    assert await run_jobs(app) == []
    assert (await first.status()).state == "succeeded"


async def test_a_handler_that_raises_fails_the_call_with_its_traceback(app: App) -> None:
    # When a job's handler raises while another job succeeds
    bad = await app.enqueue(Broken(why="q3"))
    good = await app.enqueue(Export(user="u2"))
    with pytest.raises(JobsFailed) as raised:
        await run_jobs(app)

    # Then the call raises, naming the job, its error and the handler's own line
    failed = raised.value
    assert [row.id for row in failed.rows] == [bad.id]
    assert {row.id for row in failed.ran} == {bad.id, good.id}
    text = str(failed)
    assert text.startswith("1 job of 2 run failed:")
    assert f"shop.broken {bad.id}: retrying, attempt 1 of 2: ValueError: no such report: q3" in text
    assert 'raise ValueError(f"no such report: {msg.why}")' in text
    # and the job waits for its retry, the other job done
    assert (await bad.status()).state == "retrying"
    assert (await good.status()).state == "succeeded"


async def test_raise_errors_false_returns_the_failures_as_records(app: App) -> None:
    bad = await app.enqueue(Broken(why="q4"))
    (row,) = await run_jobs(app, raise_errors=False)
    assert (row.id, row.state) == (bad.id, "retrying")
    assert row.error is not None and row.error["type"] == "ValueError"


async def test_a_retry_asked_for_is_no_failure_and_runs_when_the_clock_moves(
    tmp_path: Path,
) -> None:
    # Given an app on a clock the test moves
    clock = FakeClock()
    async with shop(f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path, clock) as app:
        job = await app.enqueue(Later())
        delayed = await app.enqueue(Export(user="u3"), delay=3600)

        # When its handler asks to run again in a minute: no failure, and nothing else ran
        (row,) = await run_jobs(app)
        assert (row.id, row.state, row.error) == (job.id, "retrying", row.error)
        assert row.error is not None and row.error["type"] == "Retry"
        assert await run_jobs(app) == []

        # Then a minute later it runs again and succeeds; the hour's delay still holds
        clock.advance(61)
        (row,) = await run_jobs(app)
        assert (row.id, row.state, row.result) == (job.id, "succeeded", "done")
        clock.advance(3600)
        (row,) = await run_jobs(app)
        assert (row.id, row.state) == (delayed.id, "succeeded")


async def test_a_job_whose_budget_is_spent_fails_the_call_dead(tmp_path: Path) -> None:
    clock = FakeClock()
    async with shop(f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path, clock) as app:
        job = await app.enqueue(Broken(why="q5"))
        await run_jobs(app, raise_errors=False)
        clock.advance(3600)  # past any backoff
        with pytest.raises(JobsFailed) as raised:
            await run_jobs(app)
        (row,) = raised.value.rows
        assert (row.id, row.state, row.attempt) == (job.id, "dead", 2)
        assert f"shop.broken {job.id}: dead, attempt 2 of 2" in str(raised.value)


async def test_a_handler_that_enqueues_itself_without_end_is_stopped(app: App) -> None:
    await app.enqueue(Loop(n=0))
    with pytest.raises(RunawayJobs, match=r"ran more than 5 jobs \(max_jobs\)") as raised:
        await run_jobs(app, max_jobs=5)
    assert len(raised.value.ran) == 6
    assert sorted(row.payload["n"] for row in raised.value.ran) == list(range(6))


async def test_queues_choose_what_runs(app: App) -> None:
    audited = await app.enqueue(Audit())
    exported = await app.enqueue(Export(user="u6"))
    (row,) = await run_jobs(app, queues=["audit"])
    assert row.id == audited.id
    assert (await exported.status()).state == "queued"


async def test_an_app_opened_by_its_first_call_keeps_its_jobs(url: str, tmp_path: Path) -> None:
    # Given an app no test fixture opened: its first enqueue opens it
    app = shop(url, tmp_path)
    try:
        job = await app.enqueue(Export(user="u7"))

        # When its jobs run (a worker opens and closes the app meanwhile)
        (row,) = await run_jobs(app)

        # Then it is still open on the same database: an in-memory one kept its jobs
        assert row.id == job.id
        status = await job.status()
        assert status.state == "succeeded"
    finally:
        await app.close()


def test_sync_code_runs_what_enqueue_sync_stored(url: str, tmp_path: Path) -> None:
    # Given a synchronous test (Flask, Django views) that enqueues with enqueue_sync
    app = shop(url, tmp_path)
    try:
        job = app.enqueue_sync(Export(user="u8", parts=1))

        # When it runs the jobs
        ran = run_jobs_sync(app)

        # Then they ran on the loop the *_sync calls use, on the database they use
        assert [row.kind for row in ran] == ["shop.export", "shop.part"]
        assert job.status_sync().state == "succeeded"
        app.enqueue_sync(Broken(why="q8"))
        with pytest.raises(JobsFailed):
            run_jobs_sync(app)
    finally:
        asyncio.run(app.close())


def test_configure_moves_the_sync_calls_and_the_clock_to_the_new_settings(tmp_path: Path) -> None:
    # Given a module-level app that one synchronous test used on its own database
    app = shop(f"sqlite:///{tmp_path / 'a.db'}", tmp_path)
    try:
        first = app.enqueue_sync(Export(user="a"))

        # When the next test configures another database and a clock of its own
        clock = FakeClock(start=2_000_000_000.0)
        app.configure(Settings(url=f"sqlite:///{tmp_path / 'b.db'}"), clock=clock)
        second = app.enqueue_sync(Export(user="b"), delay=60)

        # Then the sync calls store there, stamped by that clock: the first job is not seen
        assert [row.id for row in app.list_jobs_sync(owner=None)] == [second.id]
        assert app.job_sync(first.id) is None
        assert second.status_sync().run_at.timestamp() == 2_000_000_060.0
        assert run_jobs_sync(app) == []
        clock.advance(60)
        assert [row.id for row in run_jobs_sync(app)] == [second.id]
    finally:
        asyncio.run(app.close())


async def test_run_jobs_fires_no_periodic_schedule(tmp_path: Path) -> None:
    app = shop(f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path)

    app.periodic(Later(), every=timedelta(seconds=1))
    worker = Worker(app, scheduler=False)
    assert worker._extra_side_tasks() == ()
    assert Worker(app)._extra_side_tasks() == ("scheduler",)


async def test_arguments_out_of_range_are_refused(app: App) -> None:
    with pytest.raises(ConfigurationError, match=r"queues=\['reports'\]"):
        await run_jobs(app, queues="reports")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="names no queue"):
        await run_jobs(app, queues=[])
    with pytest.raises(ConfigurationError, match="max_jobs must be at least 1, not 0"):
        await run_jobs(app, max_jobs=0)


class Slow(Message):
    seconds: float


async def test_a_plain_handler_that_runs_on_past_its_timeout_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a plain handler that ignores its 0.2 s timeout and reports progress after it
    settings = Settings(url=f"sqlite:///{tmp_path / 'jobs.db'}", blobs_url=str(tmp_path / "b"))
    app = App("slow", settings=settings)
    app.message("slow.job")(Slow)
    release = threading.Event()
    said: list[object] = []

    @app.handles(Slow, timeout=0.2, max_attempts=1)
    def slow(msg: Slow, ctx: Context) -> None:
        release.wait(msg.seconds)
        said.append(ctx.progress(1.0, "done late"))

    async with app:
        # When its jobs run: the call returns once the thread has (its attempt was over)
        job = await app.enqueue(Slow(seconds=0.6))
        (row,) = await run_jobs(app, raise_errors=False)
        assert (row.id, row.state) == (job.id, "dead")
        assert said == [False]  # it no longer held the job: told so, not an error

        # and one that runs on past the wait fails the call, saying why
        monkeypatch.setattr(testing, "THREADS_END_S", 0.3)
        await app.enqueue(Slow(seconds=30))
        try:
            with pytest.raises(OffloadError, match=r"1 plain handler thread still ran 0\.3s after"):
                await run_jobs(app, raise_errors=False)
        finally:
            release.set()


def test_configure_closes_an_sqlite_app_a_first_call_left_open(tmp_path: Path) -> None:
    # Given a test that used the app without opening it (its first call opened it)
    app = shop(f"sqlite:///{tmp_path / 'a.db'}", tmp_path)
    first = asyncio.run(app.enqueue(Export(user="a")))

    # When the next test configures another database: no "must come before" error
    app.configure(Settings(url=f"sqlite:///{tmp_path / 'b.db'}", blobs_url=str(tmp_path)))

    async def next_test() -> list[str]:
        async with app:
            assert await app.get(first.id) is None  # the first test's database is not seen
            return [row.kind for row in await run_jobs(app)]

    assert asyncio.run(next_test()) == []


async def test_configure_in_a_coroutine_closes_it_on_the_running_loop(tmp_path: Path) -> None:
    app = shop(f"sqlite:///{tmp_path / 'a.db'}", tmp_path)
    await app.enqueue(Export(user="a"))
    app.configure(Settings(url=f"sqlite:///{tmp_path / 'b.db'}", blobs_url=str(tmp_path)))
    async with app:
        assert await app.list_jobs(owner=None) == []


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_the_test_client_pattern_the_readme_shows(url: str, tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from offload.web import create_app

    app = shop(url, tmp_path)
    api = create_app(app)
    with TestClient(api, base_url="http://localhost") as client:
        created = client.post("/v1/jobs/shop.export", json={"user": "u9", "parts": 1})
        assert created.status_code == 202, created.text
        ran = client.portal.call(run_jobs, app)
        assert [row.kind for row in ran] == ["shop.export", "shop.part"]
        status = client.get(created.headers["Location"])
        assert status.json()["state"] == "succeeded"


async def test_a_plain_handler_gets_a_sync_context_and_an_async_one_a_context(
    tmp_path: Path,
) -> None:
    # Given a plain handler typed with SyncContext and an async one typed with Context
    seen: dict[str, object] = {}
    async with shop(f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path) as app:

        @app.message("shop.plain")
        class Plain(Message):
            pass

        @app.message("shop.awaiting")
        class Awaiting(Message):
            pass

        @app.handles(Plain)
        def plain(msg: Plain, ctx: SyncContext) -> str:
            seen["plain"] = (type(ctx), ctx.progress(0.5, "half"))
            return ctx.blobs.put(f"notes/{ctx.job_id}.txt", b"plain")

        @app.handles(Awaiting)
        async def awaiting(msg: Awaiting, ctx: Context) -> str:
            seen["awaiting"] = (type(ctx), await ctx.progress(0.5, "half"))
            ref: str = await ctx.blobs.put(f"notes/{ctx.job_id}.txt", b"async")
            return ref

        @app.message("shop.own_loop")
        class OwnLoop(Message):
            pass

        @app.handles(OwnLoop)
        def own_loop(msg: OwnLoop, ctx: SyncContext) -> int:
            thread = threading.current_thread()

            async def inner(ctx: Context) -> int:  # (on a loop of the handler's own)
                reported = await asyncio.create_task(ctx.progress(0.6))  # (a coroutine)
                here = asyncio.get_running_loop()

                async def step() -> int:  # runs on the handler's loop, not the worker's
                    seen["step_here"] = asyncio.get_running_loop() is here
                    return 7

                def plain_step() -> int:  # runs in the handler's thread
                    seen["plain_step_here"] = threading.current_thread() is thread
                    return 8

                seen["own_loop"] = reported
                return await ctx.once("n", step) + await ctx.once("m", plain_step)

            return asyncio.run(inner(ctx))

        # When they run
        first = await app.enqueue(Plain())
        second = await app.enqueue(Awaiting())
        third = await app.enqueue(OwnLoop())
        ran = {row.id: row for row in await run_jobs(app)}

    # Then each got the context its typing says, and each call returned what it types
    assert ran[third.id].result == 15, ran[third.id].error
    assert seen == {
        "plain": (SyncContext, True),
        "awaiting": (Context, True),
        "own_loop": True,
        "step_here": True,
        "plain_step_here": True,
    }
    assert ran[first.id].result == f"blob:notes/{first.id}.txt"
    assert ran[second.id].result == f"blob:notes/{second.id}.txt"


async def test_ctx_log_keeps_the_extra_a_handler_passes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # ctx.log replaced a call's `extra` with the job's fields (a LoggerAdapter's way)
    caplog.set_level(logging.INFO, logger="offload.job")
    async with shop(f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path) as app:

        @app.message("shop.charge")
        class Charge(Message):
            order: int

        @app.handles(Charge)
        async def charge(msg: Charge, ctx: Context) -> None:
            ctx.log.info("charged", extra={"order_id": msg.order})

        job = await app.enqueue(Charge(order=42))
        await run_jobs(app)
    (said,) = [r for r in caplog.records if r.getMessage() == "charged"]
    fields = {k: getattr(said, k, None) for k in ("order_id", "job_id", "kind", "attempt")}
    assert fields == {"order_id": 42, "job_id": job.id, "kind": "shop.charge", "attempt": 1}
