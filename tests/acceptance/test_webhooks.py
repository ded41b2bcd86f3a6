"""Webhooks end to end in one process: a worker delivers them to a real HTTP receiver on
127.0.0.1, as retried jobs of their own, signed as Standard Webhooks describes."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from offload import App, Context, Message, Settings
from offload.brokers import Backend
from offload.contract import JobRow
from offload.metrics import Metrics
from offload.notify import NOTIFY_QUEUE, WEBHOOK_KIND
from offload.worker.runner import Worker
from tests.scrape import parse

from ..receivers import Answer, Receiver

pytestmark = pytest.mark.anyio

OLD_SECRET = "whsec_" + base64.b64encode(b"an old secret, 24+ bytes long").decode()
NEW_SECRET = "whsec_" + base64.b64encode(b"the new secret, also 24 bytes or more").decode()


class Export(Message):
    user_id: str


@pytest.fixture
def overrides() -> dict[str, Any]:
    """Settings a test changes: parametrize `overrides` to set them."""
    return {}


@pytest.fixture
def settings(tmp_path: Path, overrides: dict[str, Any]) -> Settings:
    return Settings(
        url=f"sqlite:///{tmp_path / 'jobs.db'}",
        blobs_url=str(tmp_path / "blobs"),
        secret_key=b"test-secret-of-32-bytes-or-more!",
        lease_s=2.0,
        webhook_secrets=(OLD_SECRET, NEW_SECRET),
        webhook_allow_private=True,  # the receiver is on loopback
        webhook_timeout_s=2.0,
        notify_backoff_s=0.05,
        public_url="https://jobs.example.test",
    ).with_(**overrides)


def declare(app: App, kind: str = "t.export", **options: Any) -> None:
    app.message(kind, **options)(Export)

    @app.handles(Export)
    async def export(msg: Export, ctx: Context) -> dict[str, str]:
        return {"user": msg.user_id}


async def eventually(
    check: Callable[[], Awaitable[Any]], timeout: float = 15.0, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def delivery(app: App, job_id: str, states: set[str]) -> dict[str, Any]:
    """The job's (single) delivery record, once it reached one of `states`."""

    async def check() -> dict[str, Any] | None:
        found = (await app.status(job_id))["deliveries"]
        return found[0] if found and found[0]["state"] in states else None

    result: dict[str, Any] = await eventually(check, what=f"a delivery in {states}")
    return result


def spec_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """The Standard Webhooks algorithm, written out from the specification."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


async def delivery_jobs(app: App) -> list[JobRow]:
    """The webhook delivery jobs, once each has settled: a handler records its delivery
    before its worker settles the job, so a delivered record can precede a final state."""

    async def settled() -> list[JobRow] | None:
        rows = await app.list_jobs(owner=None, kind=WEBHOOK_KIND)
        return rows if rows and all(r.state.final for r in rows) else None

    rows: list[JobRow] = await eventually(settled, what="settled delivery jobs")
    return rows


async def test_webhook_is_signed_per_the_spec_and_carries_the_status_record(
    app: App, start_worker: Callable[..., Any], web: httpx.AsyncClient
) -> None:
    declare(app)
    with Receiver() as receiver:
        # Given a job submitted over HTTP with a callback_url,
        response = await web.post(
            "/v1/jobs/t.export", params={"callback_url": receiver.url}, json={"user_id": "u1"}
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        # when a worker runs it,
        await start_worker()
        sent = await delivery(app, job_id, {"delivered"})
        # then the receiver got one POST whose signatures verify with both secrets,
        (request,) = receiver.requests
        headers = {k.lower(): v for k, v in request.headers.items()}
        for secret in (OLD_SECRET, NEW_SECRET):
            assert Webhook(secret).verify(request.body, headers)  # the reference library
            expected = spec_signature(
                secret, headers["webhook-id"], headers["webhook-timestamp"], request.body
            )
            assert expected in headers["webhook-signature"].split(" ")
        assert abs(int(headers["webhook-timestamp"]) - time.time()) < 30
        assert headers["content-type"] == "application/json"
        assert headers["host"] == f"127.0.0.1:{receiver.port}"
        # and its body is the job's final status record.
        body = orjson.loads(request.body)
        assert body["type"] == "job.succeeded"
        assert body["data"]["id"] == job_id and body["data"]["result"] == {"user": "u1"}
        assert body["data"]["state"] == "succeeded"
        assert body["timestamp"] == body["data"]["finished_at"]
        # with its links at the public URL, as every link that leaves the web tier
        base = f"https://jobs.example.test/v1/jobs/{job_id}"
        assert body["data"]["links"] == {
            "self": base,
            "events": f"{base}/events",
            "result": f"{base}/result",
        }
    # The delivery is visible on the job, with its stable id and the receiver's answer.
    record = (await web.get(f"/v1/jobs/{job_id}")).json()
    (shown,) = record["deliveries"]
    assert shown == sent
    assert shown["id"] == headers["webhook-id"] and shown["id"].startswith("msg_")
    assert shown["channel"] == "webhook" and shown["target"] == receiver.url
    assert [a["code"] for a in shown["attempts"]] == [200]
    (job,) = await delivery_jobs(app)
    assert job.queue == NOTIFY_QUEUE and job.state == "succeeded"


async def test_a_receiver_that_fails_twice_gets_a_third_attempt(
    app: App, start_worker: Callable[..., Any]
) -> None:
    declare(app)
    with Receiver(500, 503, 200) as receiver:
        # Given a receiver that fails twice and then accepts,
        job = await app.enqueue(Export(user_id="u2"), callback_url=receiver.url)
        # when the job ends,
        await start_worker()
        sent = await delivery(app, job.id, {"delivered"})
    # then three attempts are recorded with the receiver's answers,
    assert [a["code"] for a in sent["attempts"]] == [500, 503, 200]
    assert [a["attempt"] for a in sent["attempts"]] == [1, 2, 3]
    assert "500" in sent["attempts"][0]["error"]
    # every attempt carried the same notification id (receivers drop repeats by it),
    ids = {r.headers["webhook-id"] for r in receiver.requests}
    assert ids == {sent["id"]} and len(receiver.requests) == 3
    # and each was signed afresh for its own timestamp.
    for request in receiver.requests:
        headers = {k.lower(): v for k, v in request.headers.items()}
        assert Webhook(NEW_SECRET).verify(request.body, headers)
    (delivery_job,) = await delivery_jobs(app)
    assert delivery_job.state == "succeeded" and delivery_job.attempt == 3


@pytest.mark.parametrize("overrides", [{"webhook_allow_private": False}])
async def test_loopback_target_is_refused_without_allow_private(
    app: App, start_worker: Callable[..., Any], web: httpx.AsyncClient
) -> None:
    declare(app)
    with Receiver() as receiver:
        # Given private targets are not allowed and a receiver listens on loopback,
        # the web tier refuses a loopback address outright,
        refused = await web.post(
            "/v1/jobs/t.export", params={"callback_url": receiver.url}, json={"user_id": "u"}
        )
        assert refused.status_code == 422
        assert refused.headers["content-type"] == "application/problem+json"
        assert "loopback" in refused.text
        # and a job enqueued from Python with that target
        job = await app.enqueue(Export(user_id="u3"), callback_url=receiver.url)
        await start_worker()
        sent = await delivery(app, job.id, {"refused"})
        await asyncio.sleep(0.3)  # time for any (wrong) retry to reach the receiver
        # never reaches the receiver: the delivery is refused once, not retried.
        assert receiver.requests == []
    assert sent["target"] == receiver.url and len(sent["attempts"]) == 1
    assert "loopback" in sent["attempts"][0]["error"]
    assert (await app.status(job.id))["state"] == "succeeded"
    (delivery_job,) = await delivery_jobs(app)
    assert delivery_job.state == "cancelled" and delivery_job.attempt == 1


async def test_redirects_are_not_followed(app: App, start_worker: Callable[..., Any]) -> None:
    declare(app)
    with Receiver() as elsewhere:
        moved = Answer(307, headers={"location": elsewhere.url})
        with Receiver(moved, 200) as receiver:
            job = await app.enqueue(Export(user_id="u4"), callback_url=receiver.url)
            await start_worker()
            sent = await delivery(app, job.id, {"delivered"})
        # A redirect is a failed attempt, retried at the same target; never followed.
        assert [a["code"] for a in sent["attempts"]] == [307, 200]
        assert elsewhere.requests == []


@pytest.mark.parametrize("overrides", [{"webhook_timeout_s": 0.3}])
async def test_a_slow_receiver_times_out_and_is_retried(
    app: App, start_worker: Callable[..., Any]
) -> None:
    declare(app)
    with Receiver(Answer(200, delay_s=1.5), 200) as receiver:
        job = await app.enqueue(Export(user_id="u5"), callback_url=receiver.url)
        await start_worker()
        sent = await delivery(app, job.id, {"delivered"})
    first, second = sent["attempts"]
    assert first["code"] is None and "no answer within 0.3s" in first["error"]
    assert first["duration_ms"] < 1200
    assert second["code"] == 200


async def test_a_receiver_that_answers_a_line_at_a_time_runs_out_of_its_timeout(
    app: App, start_worker: Callable[..., Any]
) -> None:
    declare(app)
    # Given a receiver that sends its answer's head a line at a time and never ends it,
    with Receiver(Answer(200, drip_s=0.2), 200) as receiver:
        job = await app.enqueue(Export(user_id="u5"), callback_url=receiver.url)
        await start_worker()
        sent = await delivery(app, job.id, {"delivered"})
    # the attempt ends at the webhook timeout (2 s) as one that is not answered, recorded,
    # and the next is delivered (each read came within the timeout: httpx's alone would wait).
    first, second = sent["attempts"]
    assert first["code"] is None and "no answer within 2s" in first["error"]
    assert second["code"] == 200


def test_a_delivery_jobs_timeout_outlasts_its_notifiers_bound(app: App) -> None:
    from offload.notify import EMAIL_KIND
    from offload.notify.dispatch import BACKSTOP_MARGIN_S, Dispatcher

    # The kind's 60 s where the notifier's bound is shorter, else that bound and a margin:
    # an attempt that runs out is ended by its notifier and recorded, not cut off unrecorded.
    assert Dispatcher(app).handlers()[WEBHOOK_KIND].timeout == 60
    slow = App("slow", settings=app.settings.with_(webhook_timeout_s=90.0))
    specs = Dispatcher(slow).handlers()
    assert specs[WEBHOOK_KIND].timeout == 90 + BACKSTOP_MARGIN_S
    assert specs[EMAIL_KIND].timeout == 60  # no SMTP server set


async def test_a_kind_default_callback_and_a_per_job_override(
    app: App, start_worker: Callable[..., Any]
) -> None:
    with Receiver() as default, Receiver() as own:
        declare(app, callback_url=default.url)
        plain = await app.enqueue(Export(user_id="plain"))
        custom = await app.enqueue(Export(user_id="custom"), callback_url=own.url)
        await start_worker()
        await delivery(app, plain.id, {"delivered"})
        await delivery(app, custom.id, {"delivered"})
        assert [orjson.loads(r.body)["data"]["id"] for r in default.requests] == [plain.id]
        assert [orjson.loads(r.body)["data"]["id"] for r in own.requests] == [custom.id]


async def test_cancelling_a_waiting_job_sends_its_webhook(
    app: App, start_worker: Callable[..., Any], web: httpx.AsyncClient
) -> None:
    declare(app)
    with Receiver() as receiver:
        response = await web.post(
            "/v1/jobs/t.export",
            params={"callback_url": receiver.url, "delay": 3600},
            json={"user_id": "later"},
        )
        job_id = response.json()["id"]
        assert (await web.delete(f"/v1/jobs/{job_id}")).status_code == 200
        await start_worker()
        await delivery(app, job_id, {"delivered"})
        (request,) = receiver.requests
    body = orjson.loads(request.body)
    assert body["type"] == "job.cancelled" and body["data"]["state"] == "cancelled"


@pytest.mark.parametrize("overrides", [{"lease_s": 600.0}])
@pytest.mark.parametrize("given_back", [False, True])
async def test_a_cancel_its_worker_had_not_heard_of_sends_its_webhook_when_the_attempt_ends(
    app: App, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, given_back: bool
) -> None:
    app.message("t.flaky", max_attempts=5)(Export)
    app.metrics = metrics = Metrics()
    started, go = asyncio.Event(), asyncio.Event()

    @app.handles(Export)
    async def flaky(msg: Export, ctx: Context) -> None:
        started.set()
        await go.wait()
        raise RuntimeError("would be retried")

    with Receiver() as receiver, caplog.at_level(logging.INFO, logger="offload"):
        job = await app.enqueue(Export(user_id="u"), callback_url=receiver.url)
        # Given a worker whose heartbeats, which would bring it word of a cancel, are held up,
        backend: Backend = app._require_backend()
        extend, beats = backend.extend, asyncio.Event()

        async def held_up(*args: Any, **kwargs: Any) -> Any:
            await beats.wait()
            return await extend(*args, **kwargs)

        monkeypatch.setattr(backend, "extend", held_up)
        worker, deliverer = Worker(app, grace_s=0.05), Worker(app)
        run = asyncio.create_task(worker.run())
        delivering: asyncio.Task[None] | None = None
        try:
            await asyncio.wait_for(started.wait(), 10)
            # when its running job is cancelled, and the attempt then fails with retries left
            # (or the worker stops, and gives it back),
            assert (await app.cancel(job.id)).state == "running"
            if given_back:
                worker.request_stop()
                await asyncio.wait_for(run, 30)
                delivering = asyncio.create_task(deliverer.run())  # (that one has stopped)
            else:
                go.set()
            # then the job ends cancelled, and its webhook says so;
            sent = await delivery(app, job.id, {"delivered"})
            assert sent["state"] == "delivered"
            (request,) = receiver.requests
            assert orjson.loads(request.body)["type"] == "job.cancelled"
            assert (await app.status(job.id))["state"] == "cancelled"
        finally:
            beats.set()
            worker.request_stop()
            await asyncio.wait_for(run, 30)
            if delivering is not None:
                deliverer.request_stop()
                await asyncio.wait_for(delivering, 30)
    # its worker says what became of the attempt, and counts the job cancelled.
    (said,) = [r for r in caplog.records if getattr(r, "action", "") == "cancelled_at_settle"]
    was = "given back" if given_back else "retrying"
    assert said.job_id == job.id and f"was to be {was}" in said.getMessage()
    found = parse(metrics.render().decode())
    assert found.total("offload_jobs_completed_total", kind="t.flaky", state="cancelled") == 1
    assert found.total("offload_jobs_completed_total", kind="t.flaky", state="retrying") == 0


async def test_a_job_that_dies_when_its_lease_lapses_sends_its_webhook(
    app: App, start_worker: Callable[..., Any]
) -> None:
    declare(app, max_attempts=1)
    with Receiver() as receiver:
        # Given a job on its last attempt whose worker vanished (claimed, never settled),
        job = await app.enqueue(Export(user_id="lost"), callback_url=receiver.url)
        backend: Backend = app._require_backend()
        (lease,) = await backend.claim(["default"], worker_id="gone", lease_for=0.1, limit=1)
        assert lease.job_id == job.id
        # when a worker's rescuer finds the lapsed lease,
        await start_worker()
        await delivery(app, job.id, {"delivered"})
        # then the job is dead and its webhook says so.
        (request,) = receiver.requests
    assert orjson.loads(request.body)["type"] == "job.dead"
    assert (await app.status(job.id))["state"] == "dead"


async def test_a_job_that_dies_again_after_requeue_notifies_again(
    app: App, start_worker: Callable[..., Any]
) -> None:
    app.message("t.doomed", max_attempts=1)(Export)

    @app.handles(Export)
    async def doomed(msg: Export, ctx: Context) -> None:
        raise RuntimeError("always")

    with Receiver() as receiver:
        # Given a job that ended dead and was notified,
        job = await app.enqueue(Export(user_id="again"), callback_url=receiver.url)
        await start_worker()
        first = await delivery(app, job.id, {"delivered"})
        # when it is re-queued and ends dead once more,
        await app.requeue(job.id)

        async def both() -> bool:
            sent = (await app.status(job.id))["deliveries"]
            return len(sent) == 2 and sent[1]["state"] == "delivered"

        await eventually(both, what="a second delivery")
    # then the second end is a second notification, with an id of its own.
    ids = [r.headers["webhook-id"] for r in receiver.requests]
    assert len(ids) == 2 and ids[0] == first["id"] and ids[1] != ids[0]
    assert [orjson.loads(r.body)["type"] for r in receiver.requests] == ["job.dead"] * 2


async def test_delivery_kinds_cannot_be_submitted_over_http(web: httpx.AsyncClient) -> None:
    response = await web.post(
        f"/v1/jobs/{WEBHOOK_KIND}",
        json={"job_id": "x", "url": "https://example.com", "state": "succeeded",
              "notification_id": "msg_x"},
    )  # fmt: skip
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
