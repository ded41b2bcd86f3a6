"""The App is the only door to the backend: the web tier and the command line call its
façade methods, and those answer what the routes answer (status codes, fields, headers)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from offload import (
    App,
    ConfigurationError,
    InvalidTransition,
    JobNotFound,
    Message,
    Settings,
)
from offload.app import DEFAULT_MAX_ATTEMPTS
from offload.contract import status_record
from offload.web import create_app
from tests.web_clients import clients_of

pytestmark = pytest.mark.anyio
TOKENS = {"alice": "tok-alice", "bob": "tok-bob"}
EMPTY = {
    "queued": 0,
    "scheduled": 0,
    "running": 0,
    "dead": 0,
    "oldest_age_s": 0.0,
    "awaiting_newer_worker": 0,
    "paused": False,
    "limits": {},
}


class Report(Message):
    period: str


class Spare(Message):
    pass


class Retried(Message):
    pass


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        url=f"sqlite:///{tmp_path / 'jobs.db'}",
        blobs_url=str(tmp_path / "blobs"),
        secret_key=b"test-secret-of-32-bytes-or-more!",
        lease_s=2.0,
        api_tokens={token: principal for principal, token in TOKENS.items()},
    )


@pytest.fixture
def app(settings: Settings) -> App:
    app = App("door", settings=settings)
    app.message("t.report", queue="reports")(Report)
    app.message("t.spare", queue="spare")(Spare)
    return app


@pytest.fixture
async def clients(app: App) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    async with clients_of(app, TOKENS) as out:
        yield out


# -- the routes, pinned -------------------------------------------------------------------


async def test_submit_answers_202_with_location_and_the_status_record(
    app: App, clients: dict[str, httpx.AsyncClient]
) -> None:
    alice = clients["alice"]
    response = await alice.post(
        "/v1/jobs/t.report", json={"period": "2026-10"}, params={"priority": 3}
    )
    assert response.status_code == 202, response.text
    body = response.json()
    job_id = body["id"]
    assert response.headers["location"] == f"/v1/jobs/{job_id}"
    assert response.headers["retry-after"] == "1"
    assert "idempotent-replayed" not in response.headers
    assert body["state"] == "queued" and body["queue"] == "reports" and body["priority"] == 3
    # The answer is the status record as GET shows it (without the deliveries).
    shown = (await alice.get(f"/v1/jobs/{job_id}")).json()
    assert {k: v for k, v in shown.items() if k != "deliveries"} == body
    assert shown["deliveries"] == []


async def test_no_answer_about_jobs_may_be_cached(
    app: App, clients: dict[str, httpx.AsyncClient]
) -> None:
    # Each is one caller's (their jobs, signed links): no shared or browser cache keeps it.
    alice = clients["alice"]
    submitted = await alice.post("/v1/jobs/t.report", json={"period": "2026-10"})
    job_id = submitted.json()["id"]
    answers = [
        submitted,
        await alice.get(f"/v1/jobs/{job_id}"),
        await alice.get("/v1/jobs"),
        await alice.get(f"/v1/jobs/{job_id}/result"),  # 409: not done (a problem document)
        await alice.get("/v1/queues"),
        await alice.get("/v1/kinds"),
        await alice.get("/v1/jobs/no-such-job"),
    ]
    for answer in answers:
        assert answer.headers["cache-control"] == "no-store", answer.request.url


async def test_a_replayed_idempotency_key_answers_the_first_job_and_says_so(
    app: App, clients: dict[str, httpx.AsyncClient]
) -> None:
    alice, bob = clients["alice"], clients["bob"]
    key = {"Idempotency-Key": "k-1"}
    first = await alice.post("/v1/jobs/t.report", json={"period": "a"}, headers=key)
    again = await alice.post("/v1/jobs/t.report", json={"period": "a"}, headers=key)
    assert first.status_code == again.status_code == 202
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]
    assert again.json() == first.json()
    # The key is the caller's own: another principal's same key is another job.
    other = await bob.post("/v1/jobs/t.report", json={"period": "a"}, headers=key)
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
    assert "idempotent-replayed" not in other.headers


async def test_a_submission_sent_in_chunks_is_read_whole(
    app: App, clients: dict[str, httpx.AsyncClient]
) -> None:
    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: several body messages
        for part in (b'{"peri', b'od": "20', b'26-11"}'):
            yield part

    alice = clients["alice"]
    answer = await alice.post(
        "/v1/jobs/t.report", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 202, answer.text
    job = await app.get(answer.json()["id"])
    assert job is not None and job.payload == {"period": "2026-11"}


async def test_a_client_that_leaves_mid_body_enqueues_nothing_and_logs_no_error(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    api = create_app(app)
    sent: list[dict[str, object]] = []
    messages = iter(
        [
            {"type": "http.request", "body": b'{"period": ', "more_body": True},
            {"type": "http.disconnect"},
        ]
    )

    async def receive() -> dict[str, object]:
        return next(messages)

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/jobs/t.report",
        "raw_path": b"/v1/jobs/t.report",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"localhost"),
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {TOKENS['alice']}".encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("localhost", 80),
    }
    async with api.router.lifespan_context(api):
        with caplog.at_level(logging.INFO):
            await api(scope, receive, send)  # (Starlette's own reading raises ClientDisconnect)
        assert await app.list_jobs(owner="alice") == []
    # A client gone is no fault of the server: no error, no traceback, one INFO line.
    assert [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info] == []
    assert any("went away" in r.getMessage() for r in caplog.records)


async def test_another_principals_job_is_404_on_every_job_route(
    app: App, clients: dict[str, httpx.AsyncClient]
) -> None:
    alice, bob = clients["alice"], clients["bob"]
    job_id = (await alice.post("/v1/jobs/t.report", json={"period": "p"})).json()["id"]
    for method, path in (
        ("GET", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/result"),
        ("GET", f"/v1/jobs/{job_id}/events"),
        ("DELETE", f"/v1/jobs/{job_id}"),
        ("GET", "/v1/jobs/no-such-job"),
    ):
        response = await bob.request(method, path)
        assert response.status_code == 404, (method, path)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"].endswith("job-not-found")
    assert (await alice.get(f"/v1/jobs/{job_id}")).status_code == 200


async def test_list_pages_the_callers_jobs_newest_first(
    app: App, clients: dict[str, httpx.AsyncClient]
) -> None:
    alice, bob = clients["alice"], clients["bob"]
    ids = [
        (await alice.post("/v1/jobs/t.report", json={"period": str(n)})).json()["id"]
        for n in range(3)
    ]
    await bob.post("/v1/jobs/t.report", json={"period": "bob"})
    first = await alice.get("/v1/jobs", params={"limit": 2, "kind": "t.report"})
    assert first.status_code == 200
    page = first.json()
    assert [r["id"] for r in page["items"]] == ids[::-1][:2]
    assert page["next"] == f"/v1/jobs?limit=2&kind=t.report&cursor={ids[1]}"
    assert first.headers["link"] == f'<{page["next"]}>; rel="next"'
    last = (await alice.get(page["next"])).json()
    assert [r["id"] for r in last["items"]] == [ids[0]] and last["next"] is None
    queued = (await alice.get("/v1/jobs", params={"state": "queued"})).json()
    assert len(queued["items"]) == 3
    assert (await alice.get("/v1/jobs", params={"state": "dead"})).json()["items"] == []
    # A cursor that is no job id is refused, not read as the first page
    for bad in ("zzz", ids[0].upper(), ids[0] + "x"):
        refused = await alice.get("/v1/jobs", params={"cursor": bad})
        assert refused.status_code == 422, bad
        assert refused.headers["content-type"] == "application/problem+json"


async def test_queues_lists_every_registered_queue_even_when_empty(
    app: App, clients: dict[str, httpx.AsyncClient]
) -> None:
    alice = clients["alice"]
    await alice.post("/v1/jobs/t.report", json={"period": "p"})
    stats = (await alice.get("/v1/queues")).json()["queues"]
    assert stats["spare"] == EMPTY
    assert stats["reports"]["queued"] == 1


async def test_cancel_answers_200_then_409_once_final(
    app: App, clients: dict[str, httpx.AsyncClient]
) -> None:
    alice = clients["alice"]
    job_id = (await alice.post("/v1/jobs/t.report", json={"period": "p"})).json()["id"]
    cancelled = await alice.delete(f"/v1/jobs/{job_id}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    again = await alice.delete(f"/v1/jobs/{job_id}")
    assert again.status_code == 409 and again.json()["type"].endswith("already-final")
    result = await alice.get(f"/v1/jobs/{job_id}/result")
    assert result.status_code == 409 and result.json()["job"]["state"] == "cancelled"


async def test_readyz_is_ready_while_the_backend_answers(
    app: App, clients: dict[str, httpx.AsyncClient]
) -> None:
    response = await clients["alice"].get("/readyz")
    assert response.status_code == 200 and response.json() == {"status": "ready"}


class StalledApp(App):
    """An App whose backend stops answering pings while `held` is set (a stalled server,
    whose pings retry to their deadline), counting the pings begun."""

    held: asyncio.Event | None = None
    pings = 0

    async def ping(self) -> None:
        self.pings += 1
        if self.held is not None:
            await self.held.wait()
        await super().ping()


@contextlib.asynccontextmanager
async def _served(app: App) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `app`'s web tier, its lifespan run (in the test's own loop)."""
    api = create_app(app)
    async with (
        api.router.lifespan_context(api),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://localhost") as c,
    ):
        yield c


async def test_readyz_answers_within_its_bound_while_the_backend_stalls(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("offload.web.app.READY_WITHIN_S", 0.1)
    app = StalledApp("stalled", settings=settings)
    async with _served(app) as c:
        # Given a backend that stops answering, probes get 503 within their bound,
        # sharing the one ping still under way,
        app.held = asyncio.Event()
        for _ in range(3):
            answer = await c.get("/readyz")
            assert answer.status_code == 503, answer.text
            assert answer.json()["type"].endswith("/not-ready")
        assert app.pings == 1
        # and once it answers again, they are ready.
        held, app.held = app.held, None
        held.set()
        assert (await c.get("/readyz")).status_code == 200


async def test_readyz_gives_up_on_a_ping_that_never_ends_and_asks_again(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A ping stuck on a connection whose peer took the bytes and never answered (a proxy
    # that hangs) held every probe at 503 for good, the server reachable again meanwhile.
    monkeypatch.setattr("offload.web.app.READY_WITHIN_S", 0.1)
    monkeypatch.setattr("offload.web.app.PING_GIVEN_UP_S", 0.3)
    app = StalledApp("stuck", settings=settings)
    async with _served(app) as c:
        app.held = asyncio.Event()  # (never set: that ping never ends)
        assert (await c.get("/readyz")).status_code == 503
        app.held = None  # the next ping answers
        async with asyncio.timeout(30):
            while (await c.get("/readyz")).status_code != 200:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert app.pings == 2


# -- the façade methods --------------------------------------------------------------------


@pytest.fixture
async def opened(app: App) -> AsyncIterator[App]:
    async with app:
        yield app


async def test_submit_stores_the_envelope_and_returns_its_row(opened: App) -> None:
    app = opened
    envelope = app.envelope(Report(period="p"), owner="alice", idempotency_key="k")
    job, row = await app.submit(envelope)
    # A new job's row is made from the envelope: it shows as the stored row does.
    assert job.created and job.id == envelope.id and job.app is app
    stored = await app.get(job.id)
    assert stored is not None
    assert status_record(row) == status_record(stored)
    # A replayed key answers the first job, read from the store.
    replay, first = await app.submit(
        app.envelope(Report(period="q"), owner="alice", idempotency_key="k")
    )
    assert not replay.created and replay.id == job.id
    assert first.payload == {"period": "p"}


async def test_get_and_status_hide_another_owners_job(opened: App) -> None:
    app = opened
    job = await app.enqueue(Report(period="p"), owner="alice")
    row = await app.get(job.id, owner="alice")
    assert row is not None and row.owner == "alice" and row.payload == {"period": "p"}
    assert await app.get(job.id, owner="bob") is None
    assert await app.get("no-such-job") is None
    record = await app.status(job.id, owner="alice")
    assert record == {**status_record(row), "deliveries": []}
    assert await app.status(job.id) == record
    with pytest.raises(JobNotFound):
        await app.status(job.id, owner="bob")
    assert await app.deliveries(job.id) == []


async def test_list_requeue_purge_and_stats(opened: App) -> None:
    app = opened
    first, second = await app.enqueue_many([Report(period="1"), Report(period="2")], owner="alice")
    await app.enqueue(Report(period="3"), owner="bob")
    mine = await app.list_jobs(owner="alice")
    assert [r.id for r in mine] == [second.id, first.id]
    assert len(await app.list_jobs(owner=None)) == 3
    assert [r.id for r in await app.list_jobs(owner="alice", before=second.id)] == [first.id]
    await app.cancel(first.id)
    assert [r.id for r in await app.list_jobs(owner=None, state="cancelled")] == [first.id]
    # A cancelled job goes back to its queue; a waiting one cannot.
    row = await app.requeue(first.id)
    assert row.state == "queued" and row.id == first.id
    with pytest.raises(InvalidTransition):
        await app.requeue(second.id)
    stats = await app.stats()
    assert stats["reports"]["queued"] == 3 and stats["spare"] == EMPTY
    assert await app.purge("reports") == 3
    assert (await app.stats())["reports"]["queued"] == 0


async def test_a_batchs_idempotency_key_answers_its_repeat_with_every_job(opened: App) -> None:
    app = opened
    # Given a batch of five enqueued under one idempotency key,
    batch = [Report(period=str(n)) for n in range(5)]
    first = await app.enqueue_many(batch, owner="alice", idempotency_key="fan-out-1")
    # then each of its messages is a job (one key for all stored the first alone, and
    # answered the other four with it),
    assert len({job.id for job in first}) == 5 and all(job.created for job in first)
    assert len(await app.list_jobs(owner="alice")) == 5
    # and its repeat (a handler's retry after a crash) makes none, answering with each
    again = await app.enqueue_many(batch, owner="alice", idempotency_key="fan-out-1")
    assert [job.id for job in again] == [job.id for job in first]
    assert not any(job.created for job in again)
    # as does a single enqueue with the key, for the batch's first job
    (one,) = [await app.enqueue(batch[0], owner="alice", idempotency_key="fan-out-1")]
    assert one.id == first[0].id and not one.created
    assert len(await app.list_jobs(owner="alice")) == 5
    # A key of another request is not taken for one of the batch's (a batch's later keys
    # were the key and "#1", "#2"…: a call's own "fan-out-1#1" was answered with the
    # batch's second job), nor may a call's key look like one of them.
    other = await app.enqueue(batch[1], owner="alice", idempotency_key="fan-out-1#1")
    assert other.created and other.id not in {job.id for job in first}
    with pytest.raises(ValueError, match="U\\+001F"):
        await app.enqueue(batch[1], owner="alice", idempotency_key="fan-out-1\x1f1")


async def test_a_batch_stamps_each_job_as_a_call_of_its_own_would(opened: App) -> None:
    app = opened
    app.message("t.retried", queue="reports", max_attempts=7)(Retried)
    # Given one batch of three kinds with every option,
    jobs = await app.enqueue_many(
        [Report(period="1"), Spare(), Retried(), Report(period="2")],
        owner="alice",
        priority=4,
        delay=60,
        notify_email="ops@example.com",
    )
    rows = [await app.get(job.id, owner="alice") for job in jobs]
    # then each job has its kind's routing and budget, the batch's options and one moment
    # of enqueueing, and the ids are distinct and in the order of the messages.
    assert all(row is not None for row in rows)
    got = [(r.kind, r.queue, r.max_attempts, r.payload) for r in rows if r is not None]
    assert got == [
        ("t.report", "reports", DEFAULT_MAX_ATTEMPTS, {"period": "1"}),
        ("t.spare", "spare", DEFAULT_MAX_ATTEMPTS, {}),
        ("t.retried", "reports", 7, {}),
        ("t.report", "reports", DEFAULT_MAX_ATTEMPTS, {"period": "2"}),
    ]
    (at,) = {r.enqueued_at for r in rows if r is not None}
    for row in rows:
        assert row is not None and row.owner == "alice" and row.priority == 4
        assert row.run_at == pytest.approx(at + 60)
        assert row.options == {"notify_email": "ops@example.com"}
    ids = [job.id for job in jobs]
    assert ids == sorted(ids) and len(set(ids)) == 4


async def test_the_change_feed_through_the_app(opened: App) -> None:
    app = opened
    start = await app.last_seq()
    job = await app.enqueue(Report(period="p"), owner="alice")
    await app.enqueue(Report(period="q"), owner="bob")
    await app.wait_changes(0.01)
    changes = await app.changes_since(start)
    assert len(changes) == 2 and await app.last_seq() == changes[-1].seq
    (mine,) = await app.changes_since(start, owner="alice")
    assert mine.job_id == job.id and mine.row.state == "queued"
    assert [c.job_id for c in await app.changes_since(start, job_id=job.id)] == [job.id]
    assert await app.changes_since(start, limit=1) == changes[:1]
    await app.ping()


async def test_ping_and_the_feed_need_an_open_app(app: App) -> None:
    # They serve a process that holds the app open: they never open it themselves.
    for call in (app.ping(), app.last_seq(), app.changes_since(0), app.wait_changes(0.01)):
        with pytest.raises(ConfigurationError, match="not open"):
            await call
    # Reads from plain code open the app on first use, as enqueue does.
    try:
        assert await app.list_jobs(owner=None) == []
        await app.ping()
    finally:
        await app.close()


async def test_enqueue_in_joins_the_callers_sqlite_transaction(
    opened: App, settings: Settings
) -> None:
    app = opened
    path = settings.url.removeprefix("sqlite:///")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        dropped = await app.enqueue_in(conn, Report(period="dropped"), owner="alice")
        assert dropped.created and await app.get(dropped.id) is None  # not committed yet
        conn.execute("ROLLBACK")
        conn.execute("BEGIN IMMEDIATE")
        kept = await app.enqueue_in(conn, Report(period="kept"), owner="alice")
        conn.execute("COMMIT")
    finally:
        conn.close()
    assert await app.get(dropped.id) is None
    row = await app.get(kept.id, owner="alice")
    assert row is not None and row.state == "queued" and row.payload == {"period": "kept"}
