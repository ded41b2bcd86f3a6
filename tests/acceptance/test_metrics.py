"""Prometheus metrics in process: what enqueue, a worker and deliveries count, GET /metrics
(who may read it, the queue gauges read once a second whoever scrapes), and offload without
prometheus-client."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from offload import App, Backoff, Context, Message, Settings
from offload.clock import FakeClock
from offload.contract import JobRow
from offload.errors import BackendError, ConfigurationError
from offload.metrics import CONTENT_TYPE, METRIC_NAMES, NO_METRICS, SQLITE_METRIC_NAMES, Metrics
from offload.web import create_app
from offload.web.access import HttpMetrics
from offload.worker.runner import Worker
from tests.receivers import Receiver
from tests.scrape import Scrape, parse

pytestmark = pytest.mark.anyio


class Ping(Message):
    n: int = 0


class Flop(Message):
    n: int = 0


def declare(app: App) -> None:
    app.message("m.ping", queue="pings")(Ping)
    app.message("m.flop")(Flop)


def scrape(metrics: Any) -> Scrape:
    assert isinstance(metrics, Metrics)
    return parse(metrics.render().decode())


async def until(predicate: Callable[[], bool], timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 (polls counters that set no event)
            await asyncio.sleep(0.01)


@asynccontextmanager
async def serving(app: App, **kw: Any) -> AsyncIterator[httpx.AsyncClient]:
    api = create_app(app, **kw)
    async with api.router.lifespan_context(api):
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            yield c


async def test_enqueue_counts_the_jobs_it_stores_by_kind_and_queue(app: App) -> None:
    declare(app)
    app.metrics = metrics = Metrics()
    async with app:
        await app.enqueue(Ping(), idempotency_key="k")
        await app.enqueue(Ping(), idempotency_key="k")  # a replay stores nothing
        await app.enqueue_many([Ping(n=i) for i in range(5)] + [Flop(), Flop()])
        await app.submit(app.envelope(Flop()))
    found = scrape(metrics)
    assert found.value("offload_jobs_enqueued_total", kind="m.ping", queue="pings") == 6
    assert found.value("offload_jobs_enqueued_total", kind="m.flop", queue="default") == 3
    assert found.types["offload_jobs_enqueued"] == "counter"
    # No job id or owner ever becomes a label.
    assert {k for labels in found.labels("offload_jobs_enqueued_total") for k in labels} == {
        "kind",
        "queue",
    }


async def test_two_apps_in_one_process_keep_their_own_counts(settings: Settings) -> None:
    first, second = App("one", settings=settings), App("two", settings=settings)
    for each in (first, second):
        declare(each)
        each.metrics = Metrics()
    async with first:
        await first.enqueue(Ping())
    assert scrape(first.metrics).total("offload_jobs_enqueued_total") == 1
    assert scrape(second.metrics).total("offload_jobs_enqueued_total") == 0


async def test_a_worker_counts_attempts_waits_run_times_slots_and_deliveries(
    settings: Settings,
) -> None:
    app = App("worker-metrics", settings=settings.with_(webhook_allow_private=True))
    declare(app)
    app.metrics = metrics = Metrics()

    @app.handles(Ping)
    async def ping(msg: Ping, ctx: Context) -> int:
        return msg.n

    @app.handles(Flop, max_attempts=2, backoff=Backoff(base_s=0.01, cap_s=0.01))
    async def flop(msg: Flop, ctx: Context) -> None:
        raise RuntimeError("flop")

    with Receiver(200) as receiver:
        async with app:
            # Given 4 jobs that succeed (one with a webhook), one that fails twice (dead) and
            # one whose payload no longer fits its contract (failed at once),
            await app.enqueue_many([Ping(n=i) for i in range(3)])
            await app.enqueue(Ping(n=3), callback_url=receiver.url)
            await app.enqueue(Flop())
            bad = dataclasses.replace(app.envelope(Ping()), payload={"n": "not a number"})
            await app.submit(bad)
            worker = Worker(app, concurrency=3)
            task = asyncio.create_task(worker.run())
            await asyncio.wait_for(worker.started.wait(), 10)
            # when the worker has run them all,
            completed = "offload_jobs_completed_total"
            try:
                await until(
                    lambda: (
                        scrape(metrics).total(completed, kind="m.ping") == 5
                        and scrape(metrics).total(completed, kind="m.flop") == 2
                        and scrape(metrics).total("offload_deliveries_total") == 1
                        and scrape(metrics).total(completed, kind="offload.webhook") == 1
                    )
                )
                found = scrape(metrics)
                # its slots show while it runs,
                slots = [found.value("offload_worker_slots", state=s) for s in ("busy", "idle")]
                assert sum(slots) == 3 and 0 <= slots[0] <= 3
            finally:
                worker.request_stop()
                await asyncio.wait_for(task, 30)
    # every attempt is counted by the state it left the job in,
    by = {"kind": "m.ping", "queue": "pings"}
    assert found.value(completed, **by, state="succeeded") == 4
    assert found.value(completed, **by, state="failed") == 1
    flops = {"kind": "m.flop", "queue": "default"}
    assert found.value(completed, **flops, state="retrying") == 1
    assert found.value(completed, **flops, state="dead") == 1
    # run times per kind (every attempt started), waits per queue (every start),
    assert found.value("offload_job_duration_seconds_count", **by) == 5
    assert found.value("offload_job_duration_seconds_count", **flops) == 2
    assert 0 < found.value("offload_job_duration_seconds_sum", **by) < 10
    assert found.value("offload_job_wait_seconds_count", queue="pings") == 5
    assert found.value("offload_job_wait_seconds_count", queue="default") == 2
    assert found.value("offload_job_wait_seconds_bucket", queue="pings", le="+Inf") == 5
    # the webhook's delivery, and the notify queue's delivery job itself.
    assert found.value("offload_deliveries_total", channel="webhook", outcome="delivered") == 1
    assert (
        found.value(completed, kind="offload.webhook", queue="offload.notify", state="succeeded")
        == 1
    )
    assert len(receiver.requests) == 1
    # A stopped worker reports no slots.
    assert scrape(metrics).labels("offload_worker_slots") == []


def pinging(name: str, settings: Settings) -> tuple[App, Metrics]:
    """An app with metrics on whose `Ping` handler returns its number."""
    app = App(name, settings=settings)
    declare(app)
    app.metrics = metrics = Metrics()

    @app.handles(Ping)
    async def ping(msg: Ping, ctx: Context) -> int:
        return msg.n

    return app, metrics


async def given_back_beside_one_run(app: App, metrics: Metrics, job_id: str) -> JobRow:
    """Run a worker until it has given `job_id` back (its error says why) and run one
    `m.ping`; the given-back job's row then."""
    worker = Worker(app, concurrency=1)
    task = asyncio.create_task(worker.run())
    try:

        async def given_back() -> JobRow | None:
            row = await app.get(job_id, owner=None)
            return row if row is not None and row.error is not None else None

        async with asyncio.timeout(20):
            while (row := await given_back()) is None:  # noqa: ASYNC110 (a backend record)
                await asyncio.sleep(0.01)
        completed = "offload_jobs_completed_total"
        await until(lambda: scrape(metrics).total(completed, kind="m.ping") == 1)
        return row
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 30)


async def test_a_job_given_back_unspent_is_no_start_and_no_wait(settings: Settings) -> None:
    app, metrics = pinging("given-back-metrics", settings)
    async with app:
        # Given a job stored at a version newer than this worker runs, and one it runs,
        newer = dataclasses.replace(app.envelope(Ping(n=9)), version=2)
        await app.submit(newer)
        await app.enqueue(Ping(n=1))
        # when the worker has given the newer one back and run the other,
        await given_back_beside_one_run(app, metrics, newer.id)
    # only the job it ran started: the one given back waits on, uncounted.
    found = scrape(metrics)
    assert found.value("offload_job_wait_seconds_count", queue="pings") == 1
    assert found.value("offload_job_duration_seconds_count", kind="m.ping", queue="pings") == 1
    assert found.total("offload_jobs_completed_total", kind="m.ping") == 1


async def test_a_job_its_handler_is_not_ready_for_is_given_back_before_it_starts(
    settings: Settings,
) -> None:
    app, metrics = pinging("unready-metrics", settings)
    # Given a handler whose code cannot run some of its messages (a Django task this
    # worker's code lacks, say),
    app.handlers["m.ping"] = dataclasses.replace(
        app.handlers["m.ping"], unready=lambda msg: "needs n < 9" if msg.n >= 9 else None
    )
    async with app:
        later = await app.enqueue(Ping(n=9))
        await app.enqueue(Ping(n=1))
        row = await given_back_beside_one_run(app, metrics, later.id)
    # it is given back unspent, saying why, and counts no start: only the other waited.
    assert row.state.value == "queued" and row.attempt == 0
    assert row.error is not None and "needs n < 9" in row.error["message"]
    assert scrape(metrics).value("offload_job_wait_seconds_count", queue="pings") == 1


async def test_a_readiness_check_that_raises_lets_the_handler_fail_with_the_error(
    settings: Settings,
) -> None:
    app = App("unready-raises", settings=settings)
    declare(app)

    def broken(msg: Ping) -> str | None:  # a Django task module that raises as it imports
        raise KeyError("DJ_BROKEN_KEY")

    @app.handles(Ping, max_attempts=1)
    def ping(msg: Ping, ctx: Context) -> int:
        raise KeyError("DJ_BROKEN_KEY")  # the handler meets the same error

    app.handlers["m.ping"] = dataclasses.replace(app.handlers["m.ping"], unready=broken)
    async with app:
        job = await app.enqueue(Ping(n=1))
        worker = Worker(app, concurrency=1, lease_s=300)
        task = asyncio.create_task(worker.run())
        try:
            record = await job.wait(20)
        finally:
            worker.request_stop()
            await asyncio.wait_for(task, 30)
    # The attempt ends with the handler's error, at once: not left running until its
    # lease lapsed, as a raising check left it.
    assert record.state.value == "dead" and record.attempt == 1
    assert record.error is not None and record.error.type == "KeyError"
    assert "DJ_BROKEN_KEY" in record.error.message


async def test_get_metrics_serves_every_metric_with_the_queue_gauges(app: App) -> None:
    declare(app)

    @app.handles(Ping)
    async def ping(msg: Ping, ctx: Context) -> None:
        pass

    async with serving(app) as web:  # development mode: the caller is an admin
        assert isinstance(app.metrics, Metrics)  # the web tier turned them on
        assert (await web.post("/v1/jobs/m.ping", json={"n": 1})).status_code == 202
        await app.enqueue(Ping(n=2), delay=3600)  # scheduled
        await app.enqueue(Flop())  # no handler here: stays queued
        assert await app.pause("default")
        worker = Worker(app, queues=["pings", "offload.notify"], concurrency=2)
        task = asyncio.create_task(worker.run())
        try:
            await until(lambda: scrape(app.metrics).total("offload_jobs_completed_total") == 1)
            answer = await web.get("/metrics")
        finally:
            worker.request_stop()
            await asyncio.wait_for(task, 30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == CONTENT_TYPE
    found = parse(answer.text)
    names = {name for name, _ in found.samples}
    for name in METRIC_NAMES:
        if name != "offload_deliveries_total":  # no delivery in this run
            assert name in names or f"{name}_count" in names, name
    assert found.value("offload_jobs_enqueued_total", kind="m.ping", queue="pings") == 2
    assert found.value("offload_queue_depth", queue="pings", state="scheduled") == 1
    assert found.value("offload_queue_depth", queue="pings", state="queued") == 0
    assert found.value("offload_queue_depth", queue="default", state="queued") == 1
    assert found.value("offload_queue_oldest_age_seconds", queue="default") >= 0
    # A paused queue says so (its depth and age grow while no one may claim from it).
    assert found.value("offload_queue_paused", queue="default") == 1
    assert found.value("offload_queue_paused", queue="pings") == 0
    assert (
        found.value("offload_worker_slots", state="busy")
        + found.value("offload_worker_slots", state="idle")
        == 2
    )
    assert found.types["offload_queue_depth"] == "gauge"
    assert found.types["offload_job_duration_seconds"] == "histogram"
    # and the process's own (CPU, memory, Python's collector), as a default registry has
    assert found.value("process_cpu_seconds_total") > 0
    assert found.value("process_resident_memory_bytes") > 0
    assert "python_info" in names and "python_gc_collections_total" in names


class CountingApp(App):
    """An App that counts its stats readings (each one a query to the backend)."""

    readings = 0

    async def stats(self) -> dict[str, dict[str, Any]]:
        self.readings += 1
        return await super().stats()


async def test_scrapes_within_a_second_share_one_stats_reading(settings: Settings) -> None:
    clock = FakeClock()
    app = CountingApp("counting", settings=settings, clock=clock)
    declare(app)
    async with serving(app) as web:
        # Given twenty scrapers at once,
        answers = await asyncio.gather(*(web.get("/metrics") for _ in range(20)))
        assert all(a.status_code == 200 for a in answers)
        # one stats reading served them all, and serves the next scrape within the second;
        assert app.readings == 1
        clock.advance(0.9)
        assert (await web.get("/metrics")).status_code == 200
        assert app.readings == 1
        # a second later the backend is asked again, once.
        clock.advance(0.1)
        await asyncio.gather(*(web.get("/metrics") for _ in range(5)))
        assert app.readings == 2
        await app.enqueue(Ping())
        clock.advance(1.0)
        found = parse((await web.get("/metrics")).text)
        assert found.value("offload_queue_depth", queue="pings", state="queued") == 1
        assert app.readings == 3


class OutageApp(App):
    """An App whose stats the test can make fail as an unreachable backend does, or hold
    unanswered until it lets them go (a stalled server), counting the readings begun."""

    readings = 0
    down = False
    held: asyncio.Event | None = None

    async def stats(self) -> dict[str, dict[str, Any]]:
        self.readings += 1
        if self.down:
            raise BackendError("redis connection lost, and not back within the deadline")
        if self.held is not None:
            await self.held.wait()
        return await super().stats()


async def test_while_the_backend_does_not_answer_the_counters_are_served_without_the_gauges(
    settings: Settings,
) -> None:
    clock = FakeClock()
    app = OutageApp("outage", settings=settings, clock=clock)
    declare(app)
    async with serving(app) as web:
        assert isinstance(app.metrics, Metrics)
        await app.enqueue(Ping())
        # Given a scrape that read the queue gauges (waiting for them as long as they take:
        # under load a reading took longer than the 0.05 s the stalls below wait),
        app.metrics.queues.wait_s = 30
        found = parse((await web.get("/metrics")).text)
        app.metrics.queues.wait_s = 0.05  # how long a scrape waits for the stats
        assert found.value("offload_queue_depth", queue="pings", state="queued") == 1
        assert found.value("offload_queue_stats_up") == 1
        # when the backend cannot be reached, the next scrape still answers 200 with this
        # process's counters, and leaves out the gauges it could not read (not stale ones);
        app.down = True
        clock.advance(1.0)
        answer = await web.get("/metrics")
        assert answer.status_code == 200, answer.text
        found = parse(answer.text)
        assert found.value("offload_jobs_enqueued_total", kind="m.ping", queue="pings") == 1
        assert found.labels("offload_queue_depth") == []
        assert found.labels("offload_queue_paused") == []
        assert ("offload_queue_stats_up", frozenset()) in found.samples
        assert found.value("offload_queue_stats_up") == 0
        # and when it stalls, scrapes answer after their wait, sharing the reading under way,
        app.down, app.held = False, asyncio.Event()
        before, last_read = app.readings, app.metrics.queues.read_at
        answers = await asyncio.gather(web.get("/metrics"), web.get("/metrics"))
        assert [a.status_code for a in answers] == [200, 200]
        for answer in answers:
            assert parse(answer.text).value("offload_queue_stats_up") == 0
            assert parse(answer.text).labels("offload_queue_depth") == []
        assert app.readings == before + 1
        # which, once the backend answers, serves the scrapes within its second.
        app.held.set()
        await until(lambda: app.metrics.queues.read_at != last_read)
        found = parse((await web.get("/metrics")).text)
        assert found.value("offload_queue_stats_up") == 1
        assert found.value("offload_queue_depth", queue="pings", state="queued") == 1
        assert app.readings == before + 1


async def test_a_reading_stuck_on_a_silent_connection_is_given_up_for_a_new_one(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("offload.metrics.STUCK_READING_S", 0.2)
    clock = FakeClock()
    app = OutageApp("stuck", settings=settings, clock=clock)
    declare(app)
    async with serving(app) as web:
        assert isinstance(app.metrics, Metrics)
        app.metrics.queues.wait_s = 0.05
        # Given a reading that never gets an answer (a connection that went silent),
        app.held = asyncio.Event()
        assert parse((await web.get("/metrics")).text).value("offload_queue_stats_up") == 0
        # when the backend answers again, a later scrape does not wait on that reading
        # for ever: it was given up, and a new one reads the gauges.
        held, app.held = app.held, None

        async def fresh() -> bool:
            found = parse((await web.get("/metrics")).text)
            return found.value("offload_queue_stats_up") == 1

        async with asyncio.timeout(20):
            while not await fresh():  # noqa: ASYNC110 (polls a scrape: no event to wait on)
                await asyncio.sleep(0.05)
        assert app.readings >= 2
        held.set()


async def test_metrics_need_an_admin_or_the_scrape_token(settings: Settings) -> None:
    app = App(
        "guarded",
        settings=dataclasses.replace(
            settings,
            api_tokens={"tok-alice": "alice", "tok-root": "root"},
            admin_principals=frozenset({"root"}),
            metrics_token="scrape-secret",
        ),
    )
    declare(app)

    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async with serving(app) as web:
        # Anyone else finds nothing there, as for a path that does not exist;
        for headers in ({}, bearer("tok-alice"), bearer("wrong")):
            refused = await web.get("/metrics", headers=headers)
            assert refused.status_code == 404, headers
            assert refused.headers["content-type"] == "application/problem+json"
        # an admin and the scrape token read the metrics,
        for token in ("tok-root", "scrape-secret"):
            answer = await web.get("/metrics", headers=bearer(token))
            assert answer.status_code == 200, token
            assert "offload_queue_depth" in answer.text
        # and the scrape token is no key to the API.
        assert (await web.get("/v1/queues", headers=bearer("scrape-secret"))).status_code == 401


async def test_the_web_tier_counts_its_answers_by_route_template_and_status(app: App) -> None:
    declare(app)
    async with serving(app) as web:
        job = (await web.post("/v1/jobs/m.ping", json={"n": 1})).json()["id"]
        assert (await web.post("/v1/jobs/m.ping", json={"n": "x"})).status_code == 422
        for _ in range(2):
            assert (await web.get(f"/v1/jobs/{job}")).status_code == 200
        assert (await web.get(f"/v1/jobs/{job}x/nothing")).status_code == 404
        assert (await web.request("BREW", "/v1/jobs")).status_code == 405
        found = parse((await web.get("/metrics")).text)
    requests = "offload_http_requests_total"
    assert found.value(requests, method="POST", route="/v1/jobs/{kind}", status="202") == 1
    assert found.value(requests, method="POST", route="/v1/jobs/{kind}", status="422") == 1
    assert found.value(requests, method="GET", route="/v1/jobs/{job_id}", status="200") == 2
    # A path no route matched is one series, whatever the path; a made-up method is `other`.
    assert found.value(requests, method="GET", route="unmatched", status="404") == 1
    assert found.value(requests, method="other", route="/v1/jobs", status="405") == 1
    # The answer times, by route: one per request, in the histogram's buckets.
    timed = {"method": "GET", "route": "/v1/jobs/{job_id}"}
    assert found.value("offload_http_request_duration_seconds_count", **timed) == 2
    assert found.value("offload_http_request_duration_seconds_bucket", **timed, le="+Inf") == 2
    assert 0 < found.value("offload_http_request_duration_seconds_sum", **timed) < 30
    assert found.types["offload_http_request_duration_seconds"] == "histogram"
    # No job id (or other part of a path) ever becomes a label.
    values = {v for labels in found.labels(requests) for v in labels.values()}
    assert not any(job in value for value in values)


async def test_mounted_in_an_app_of_yours_its_routes_are_counted_by_its_own_templates(
    app: App,
) -> None:
    declare(app)
    api = create_app(app)
    outer = FastAPI()
    outer.mount("/jobs-api", api)

    @outer.get("/yours")
    async def yours() -> dict[str, str]:
        return {}

    async with api.router.lifespan_context(api):
        transport = httpx.ASGITransport(app=outer)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as web:
            assert (await web.post("/jobs-api/v1/jobs/m.ping", json={"n": 1})).status_code == 202
            assert (await web.get("/jobs-api/v1/queues")).status_code == 200
            assert (await web.get("/jobs-api/nothing/here")).status_code == 404
            assert (await web.get("/yours")).status_code == 200  # not offload's to count
            found = parse((await web.get("/jobs-api/metrics")).text)
    assert found.labels("offload_http_requests_total") == [
        {"method": "POST", "route": "/v1/jobs/{kind}", "status": "202"},
        {"method": "GET", "route": "/v1/queues", "status": "200"},
        {"method": "GET", "route": "unmatched", "status": "404"},
    ]


async def test_a_request_that_raised_counts_as_500_and_one_never_answered_as_0() -> None:
    metrics = Metrics()
    offload = SimpleNamespace(metrics=metrics)

    async def raises(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("a bug")

    async def answers_nothing(scope: Any, receive: Any, send: Any) -> None:
        return None  # the client went away before the answer began

    async def accepts(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "websocket.accept"})

    async def sent(message: Any) -> None:
        pass

    http = {"type": "http", "method": "GET", "path": "/x"}
    with pytest.raises(RuntimeError):
        await HttpMetrics(raises, offload, routes=tuple)(dict(http), None, sent)  # type: ignore[arg-type]
    await HttpMetrics(answers_nothing, offload, routes=tuple)(dict(http), None, sent)  # type: ignore[arg-type]
    await HttpMetrics(accepts, offload, routes=tuple)({"type": "websocket"}, None, sent)  # type: ignore[arg-type]
    found = scrape(metrics)
    assert found.labels("offload_http_requests_total") == [
        {"method": "GET", "route": "unmatched", "status": "0"},
        {"method": "GET", "route": "unmatched", "status": "500"},
        {"method": "WS", "route": "unmatched", "status": "101"},
    ]


async def test_without_prometheus_client_offload_works_and_metrics_say_why_not(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given prometheus-client cannot be imported (the `metrics` extra not installed),
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    declare(app)
    with pytest.raises(ConfigurationError, match=r"offload\[metrics\]"):
        Metrics()
    async with serving(app) as web:
        # the web tier serves without metrics,
        assert app.metrics is NO_METRICS
        assert (await web.post("/v1/jobs/m.ping", json={"n": 1})).status_code == 202
        # and GET /metrics answers a problem naming the extra.
        answer = await web.get("/metrics")
    assert answer.status_code == 501
    assert answer.headers["content-type"] == "application/problem+json"
    assert "offload[metrics]" in answer.json()["detail"]
    # A worker runs without them too.
    ran: list[int] = []

    @app.handles(Ping)
    async def ping(msg: Ping, ctx: Context) -> None:
        ran.append(msg.n)

    worker = Worker(app, queues=["pings"])
    task = asyncio.create_task(worker.run())
    try:
        await until(lambda: ran == [1])
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 30)


async def test_on_a_sqlite_file_the_metrics_show_its_wal_and_the_writes_it_paused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"
    app = App("wal-metrics", settings=Settings(url=f"sqlite:///{path}?wal_cap_mib=1"))
    declare(app)
    async with app:
        await app.enqueue(Ping())  # frames in the WAL for a reader to pin
        # Given metrics turned on after the app opened (the families appear with them),
        app.metrics = metrics = Metrics()
        found = scrape(metrics)
        assert set(SQLITE_METRIC_NAMES) <= {name for name, _ in found.samples}
        assert found.value("offload_sqlite_wal_bound_bytes") == 1 << 20  # the cap: db small
        assert found.value("offload_sqlite_write_pauses_total") == 0
        checkpointer = app._require_backend()._checkpointer  # type: ignore[attr-defined]
        checkpointer.pause_s = 0.2
        # when a reader holds its snapshot while writes pass half the WAL's bound,
        reader = sqlite3.connect(path, isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM offload_jobs").fetchone()
        try:
            async with asyncio.timeout(60):
                while not scrape(metrics).value("offload_sqlite_write_pauses_spent_total"):
                    await app.enqueue(Ping())
        finally:
            reader.commit()
            reader.close()
        # then the scrape counts the pause, spent (no rewind while the reader held on), and
        # the seconds writes waited,
        found = scrape(metrics)
        assert found.value("offload_sqlite_write_pauses_total") == 1
        assert found.value("offload_sqlite_write_pause_seconds_total") >= 0.2
        assert found.types["offload_sqlite_write_pauses"] == "counter"
        assert found.types["offload_sqlite_wal_bytes"] == "gauge"
        # A second backend of the file (the twin blocking calls use) pauses with it: the
        # file's pauses count once, not once per backend. (Its write may start a pause of
        # its own where the checkpoint thread, starved of CPU, has not rewound the WAL the
        # reader held: a fresh-clone run under load counted 2, the file's 2.)
        await asyncio.to_thread(app.enqueue_sync, Ping())
        before = checkpointer.pauses  # the file's count (the thread may start one meanwhile)
        counted = scrape(metrics).value("offload_sqlite_write_pauses_total")
        assert 1 <= before <= counted <= checkpointer.pauses
    # Once the app closes, its file is no longer read.
    assert ("offload_sqlite_write_pauses_total", frozenset()) not in scrape(metrics).samples


async def test_metrics_on_before_a_sqlite_app_opens_read_its_wal_too(tmp_path: Path) -> None:
    app = App("wal-metrics", settings=Settings(url=f"sqlite:///{tmp_path / 'jobs.db'}"))
    declare(app)
    app.metrics = metrics = Metrics()
    assert "offload_sqlite_wal_bytes" not in scrape(metrics).types  # no file open yet
    async with app:
        await app.enqueue(Ping())
        found = scrape(metrics)
        assert found.value("offload_sqlite_wal_bound_bytes") == 64 << 20  # the default cap
        assert found.value("offload_sqlite_write_pauses_total") == 0


async def test_a_mounted_route_a_refusal_before_routing_and_a_method_named_ws_are_told_apart(
    app: App,
) -> None:
    declare(app)
    async with serving(app) as web:
        assert (await web.get("/docs/assets/swagger-ui.css")).status_code == 200
        assert (await web.request("WS", "/v1/jobs")).status_code == 405
        too_large = b'{"n": 1, "pad": "' + b"x" * (9 * 2**20) + b'"}'
        headers = {"content-type": "application/json"}
        refused = await web.post("/v1/jobs/m.ping", content=too_large, headers=headers)
        assert refused.status_code == 413
        found = parse((await web.get("/metrics")).text)
    requests = "offload_http_requests_total"
    # The mount's files count under its path;
    assert found.value(requests, method="GET", route="/docs/assets", status="200") == 1
    # a plain request whose method is WS is no WebSocket;
    assert found.value(requests, method="other", route="/v1/jobs", status="405") == 1
    assert found.total(requests, method="WS") == 0
    # a body refused before any route read it counts as no route's.
    assert found.value(requests, method="POST", route="unmatched", status="413") == 1
