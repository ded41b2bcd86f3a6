"""offload's spans in one process, recorded by the SDK's in-memory exporter: the producer
span of every way in, the consumer span of each attempt (failures included), the handler's
spans (threads included) and the delivery spans."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from offload import App, Context, Message, Settings
from offload.web import create_app

from ..receivers import MailSink, Receiver
from ..tracing_support import in_memory

pytestmark = pytest.mark.anyio


def tracer() -> trace.Tracer:
    # From the provider of this test (a module-level proxy keeps the first one it saw).
    return trace.get_tracer("tests")


class Export(Message):
    user_id: str
    fail: bool = False


class Thumb(Message):
    n: int


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with in_memory() as exporter:
        yield exporter


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        url=f"sqlite:///{tmp_path / 'jobs.db'}",
        blobs_url=str(tmp_path / "blobs"),
        secret_key=b"test-secret-of-32-bytes-or-more!",
        lease_s=2.0,
        webhook_allow_private=True,  # the receiver is on loopback
        notify_backoff_s=0.05,
    )


def declare(app: App) -> None:
    app.message("t.export", queue="reports", max_attempts=2)(Export)
    app.message("t.thumb", queue="images")(Thumb)

    @app.handles(Export)
    async def export(msg: Export, ctx: Context) -> dict[str, str]:
        with tracer().start_as_current_span("render"):
            if msg.fail:
                raise RuntimeError(f"no data for {msg.user_id}")
        return {"user": msg.user_id}

    @app.handles(Thumb)
    def thumb(msg: Thumb, ctx: Context) -> int:  # a plain function: runs in a thread
        with tracer().start_as_current_span("resize"):
            return msg.n * 2


async def eventually(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    deadline = time.monotonic() + 60
    while not (value := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
    return value


async def ended(spans: InMemorySpanExporter, name: str, count: int = 1) -> list[ReadableSpan]:
    async def check() -> list[ReadableSpan] | None:
        found = [s for s in spans.get_finished_spans() if s.name == name]
        return found if len(found) >= count else None

    found: list[ReadableSpan] = await eventually(check, f"{count} span(s) {name!r}")
    return found


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent else None


def span_id(span: ReadableSpan) -> int:
    ctx = span.get_span_context()
    assert ctx is not None
    return ctx.span_id


async def test_a_failed_attempt_is_an_error_span_with_its_exception(
    app: App, start_worker: Callable[..., Any], spans: InMemorySpanExporter
) -> None:
    declare(app)
    # Given a job whose handler raises, with a budget of two attempts,
    job = await app.enqueue(Export(user_id="u1", fail=True))
    # when a worker runs both,
    await start_worker()
    first, second = await ended(spans, "process reports", 2)
    # then each attempt's span is an error carrying the exception's type and message,
    for span, attempt, state in ((first, 1, "retrying"), (second, 2, "dead")):
        assert span.status.status_code is trace.StatusCode.ERROR
        assert span.status.description == "RuntimeError: no data for u1"
        assert span.attributes is not None
        assert span.attributes["offload.job.attempt"] == attempt
        assert span.attributes["offload.job.state"] == state
        assert span.attributes["error.type"] == "RuntimeError"
        (event,) = span.events
        assert event.name == "exception" and event.attributes is not None
        assert event.attributes["exception.type"] == "RuntimeError"
        assert event.attributes["exception.message"] == "no data for u1"
        assert "raise RuntimeError" in str(event.attributes["exception.stacktrace"])
    # both children of the one producer span, whose trace they continue,
    (send,) = await ended(spans, "send reports")
    assert parent_of(first) == parent_of(second) == span_id(send)

    # while the job's public record shows the error's type and message only (once the
    # outcome the span already carries is written: the settler writes it after the span ends).
    async def settled() -> dict[str, Any] | None:
        record = await app.status(job.id)
        return record if record["state"] != "running" else None

    record = await eventually(settled, "the job's outcome to be written")
    assert record["state"] == "dead"
    assert record["error"] == {"type": "RuntimeError", "message": "no data for u1"}


async def test_a_plain_handler_in_a_thread_makes_its_spans_children_of_the_attempt(
    app: App, start_worker: Callable[..., Any], spans: InMemorySpanExporter
) -> None:
    declare(app)
    await app.enqueue(Thumb(n=2))
    await start_worker()
    (resize,) = await ended(spans, "resize")
    (process,) = await ended(spans, "process images")
    assert parent_of(resize) == span_id(process)
    assert process.status.status_code is trace.StatusCode.UNSET


async def test_every_way_in_starts_a_producer_span_under_the_callers_span(
    app: App, settings: Settings, spans: InMemorySpanExporter
) -> None:
    declare(app)
    await app.open()
    conn = sqlite3.connect(settings.url.removeprefix("sqlite:///"), isolation_level=None)
    # Given a caller inside a span of its own,
    with tracer().start_as_current_span("caller") as caller:
        # when it enqueues one job, a batch, two from synchronous code (the first opens the
        # loop thread's backend, the second is stored in the calling thread) and one in its
        # own transaction,
        one = await app.enqueue(Export(user_id="u1"))
        batch = await app.enqueue_many([Export(user_id="u2"), Thumb(n=1)])
        sync = await asyncio.to_thread(app.enqueue_sync, Thumb(n=3))
        blocking = await asyncio.to_thread(app.enqueue_sync, Thumb(n=5))
        conn.execute("BEGIN IMMEDIATE")
        joined = await app.enqueue_in(conn, Export(user_id="u4"))
        conn.execute("COMMIT")
    conn.close()
    sends = spans.get_finished_spans()
    single, many, from_sync, in_thread, in_tx = (s for s in sends if s.name.startswith("send"))
    # then each is a PRODUCER span under the caller's span (the threads' too),
    for span in (single, many, from_sync, in_thread, in_tx):
        assert span.kind is trace.SpanKind.PRODUCER
        assert parent_of(span) == caller.get_span_context().span_id
    names = [s.name for s in (single, many, from_sync, in_thread, in_tx)]
    assert names == ["send reports", "send", "send images", "send images", "send reports"]
    assert many.attributes is not None
    assert many.attributes["messaging.batch.message_count"] == 2
    assert "messaging.destination.name" not in many.attributes  # two queues
    # and every stored job carries its producer span's context.
    pairs = [
        (one, single),
        (batch[0], many),
        (batch[1], many),
        (sync, from_sync),
        (blocking, in_thread),
        (joined, in_tx),
    ]
    for job, span in pairs:
        row = await app.get(job.id)
        assert row is not None and row.trace is not None
        ctx = span.get_span_context()
        assert ctx is not None
        assert row.trace["traceparent"].split("-")[1:3] == [
            format(ctx.trace_id, "032x"),
            format(ctx.span_id, "016x"),
        ]
    await app.close()


async def test_a_job_enqueued_without_tracing_starts_its_own_trace(
    app: App, start_worker: Callable[..., Any]
) -> None:
    declare(app)
    # Given a job enqueued while no SDK was configured (no trace in its envelope),
    job = await app.enqueue(Export(user_id="u1"))
    row = await app.get(job.id)
    assert row is not None and row.trace is None
    # when a worker runs it with tracing on,
    with in_memory() as spans:
        await start_worker()
        (process,) = await ended(spans, "process reports")
        (render,) = await ended(spans, "render")
    # then its span is the root of a new trace, linked to nothing, its handler's beneath it.
    assert process.parent is None and not process.links
    assert parent_of(render) == span_id(process)


async def test_webhook_attempts_are_client_spans_and_a_refused_answer_is_an_error(
    app: App, start_worker: Callable[..., Any], spans: InMemorySpanExporter
) -> None:
    declare(app)
    with Receiver(502, 200) as receiver:
        hook = f"{receiver.url}?token=s3cr3t&v=2"
        await app.enqueue(Export(user_id="u1"), callback_url=hook)
        await start_worker()
        failed, delivered = await ended(spans, "POST", 2)
        notifies = await ended(spans, "process offload.notify", 2)
    assert failed.status.status_code is trace.StatusCode.ERROR
    assert failed.attributes is not None and delivered.attributes is not None
    assert failed.attributes["http.response.status_code"] == 502
    assert failed.attributes["error.type"] == "DeliveryError"
    assert delivered.status.status_code is trace.StatusCode.UNSET
    assert delivered.attributes["http.response.status_code"] == 200
    # its url.full a valid URL, the query's keys kept and its values hidden
    assert delivered.attributes["url.full"] == f"{receiver.url}?token=REDACTED&v=REDACTED"
    assert [parent_of(failed), parent_of(delivered)] == [span_id(n) for n in notifies]
    assert [n.status.status_code for n in notifies] == [
        trace.StatusCode.ERROR,
        trace.StatusCode.UNSET,
    ]


async def test_an_email_is_a_send_email_span_without_the_address(
    app: App, settings: Settings, start_worker: Callable[..., Any], spans: InMemorySpanExporter
) -> None:
    with MailSink() as sink:
        app.configure(settings.with_(smtp_url=sink.url, email_from="jobs@example.test"))
        declare(app)
        await app.enqueue(Export(user_id="u1"), notify_email="alice@example.com")
        await start_worker()
        (email,) = await ended(spans, "send email")
        (process,) = await ended(spans, "process reports")
        (notify,) = await ended(spans, "process offload.notify")
    assert email.kind is trace.SpanKind.CLIENT and parent_of(email) == span_id(notify)
    assert parent_of(notify) == span_id(process)
    assert email.attributes is not None
    assert email.attributes["offload.smtp.reply_code"] == 250
    assert email.attributes["offload.delivery.channel"] == "email"
    assert "alice@example.com" not in str(dict(email.attributes))


async def test_the_webhook_of_a_job_cancelled_while_waiting_continues_its_trace(
    app: App, start_worker: Callable[..., Any], spans: InMemorySpanExporter
) -> None:
    declare(app)
    with Receiver(200) as receiver:
        # Given a waiting job with a webhook, cancelled before any worker ran it,
        job = await app.enqueue(Export(user_id="u1"), callback_url=receiver.url)
        await app.cancel(job.id)
        # when a worker delivers the cancellation,
        await start_worker()
        (post,) = await ended(spans, "POST")
        (notify,) = await ended(spans, "process offload.notify")
    # then the delivery hangs under the job's producer span (no attempt ever ran).
    (send,) = await ended(spans, "send reports")
    assert parent_of(notify) == span_id(send) and parent_of(post) == span_id(notify)
    assert not [s for s in spans.get_finished_spans() if s.name == "process reports"]


async def test_the_requests_span_keeps_no_secret_of_its_query(
    app: App, settings: Settings, spans: InMemorySpanExporter
) -> None:
    declare(app)
    api = create_app(app)
    async with api.router.lifespan_context(api):
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as web:
            # Given a job submitted with a callback URL that holds a password and a token,
            hook = "http://hook:pw@127.0.0.1:9/in?token=s3cr3t"
            params = {"priority": "3", "callback_url": hook}
            answer = await web.post("/v1/jobs/t.export", params=params, json={"user_id": "u"})
            assert answer.status_code == 202, answer.text
            # and a stream opened with a ticket,
            ticket = (await web.post("/v1/ws-ticket")).json()["ticket"]
            job = answer.json()["id"]
            await app.cancel(job)
            await web.get(f"/v1/jobs/{job}/events", params={"ticket": ticket})
            # and the same keys percent-encoded (read as the routes read them), and an
            # address to email
            encoded = f"callback%5Furl={quote(hook, safe='')}&notify_email=ceo%40example.com"
            await web.post(f"/v1/jobs/t.export?{encoded}", json={"user_id": "u"})
            await web.get(f"/v1/jobs/{job}/events?tick%65t={ticket}")
    submitted, encoded_post = [
        s for s in spans.get_finished_spans() if s.name.startswith("POST /v1/jobs")
    ]
    streamed, encoded_get = [
        s for s in spans.get_finished_spans() if s.name.startswith("GET /v1/jobs")
    ]
    assert encoded_post.attributes is not None and encoded_get.attributes is not None
    assert encoded_post.attributes["url.query"] == "callback_url=REDACTED&notify_email=REDACTED"
    assert encoded_get.attributes["url.query"] == "ticket=REDACTED"
    assert all(ticket not in str(s.attributes) for s in spans.get_finished_spans())
    assert all("ceo" not in str(s.attributes) for s in spans.get_finished_spans())
    # then the request spans FastAPI made show what was asked, without those secrets.
    assert submitted.kind is trace.SpanKind.SERVER and submitted.attributes is not None
    assert submitted.attributes["url.query"] == "priority=3&callback_url=REDACTED"
    assert streamed.attributes is not None
    assert streamed.attributes["url.query"] == "ticket=REDACTED"
    assert all("s3cr3t" not in str(s.attributes) for s in spans.get_finished_spans())
