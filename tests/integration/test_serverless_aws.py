"""offload.serverless.aws end to end: API Gateway events into the HTTP function, moto's SQS
server between it and the queue-triggered function, the job rows in PostgreSQL.

Lambda is played by the test: a small poller receives real SQS batches, builds the event
records Lambda builds, calls `sqs_handler`, deletes what succeeded and makes the reported
failures visible again. The handlers are synchronous (as Lambda calls them), so these
tests are too.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from unittest.mock import ANY
from urllib.parse import urlsplit

import boto3
import orjson
import pytest

from offload import App, Context, Message, Retry, Settings
from offload.errors import BackendError
from offload.serverless.aws import SQSConsumer, http_handler, sqs_handler
from offload.serverless.aws.consumer import relay_handler

from ..contract._support import ShiftClock
from ..handed_calls import HandedCall
from ..moto_support import moto_endpoint
from ..services import PgSchema, require_pg
from ..tcp_proxy import TcpProxy

pytestmark = [pytest.mark.postgres]
__all__ = ["moto_endpoint"]  # the fixture, used by name

TOKEN = "sls-token"
#: How long a test waits for an outcome it expects (a deadline, not a sleep).
WAIT_S = 30.0


class Hello(Message):
    name: str


class Flaky(Message):
    fail_times: int


class Slow(Message):
    seconds: float


class Stubborn(Message):
    """A job whose handler catches its cancellation and goes on, until the test lets it end."""


class LambdaContext:
    """The one method of Lambda's context object the handlers read."""

    def __init__(self, remaining_s: float) -> None:
        self.until = time.monotonic() + remaining_s

    def get_remaining_time_in_millis(self) -> int:
        return int((self.until - time.monotonic()) * 1000)


@pytest.fixture
def schema() -> Iterator[PgSchema]:
    require_pg()
    s = PgSchema()
    s.create_sync()
    yield s
    s.drop_sync()


@pytest.fixture
def sqs(moto_endpoint: str) -> Any:
    return boto3.client("sqs", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def queue_url(sqs: Any) -> str:
    name = f"offload-t-{secrets.token_hex(4)}"
    return str(sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "2"})["QueueUrl"])


class Stack:
    """One deployment: the App, its HTTP function, its SQS function, and a Lambda stand-in."""

    def __init__(self, app: App, sqs: Any, queue_url: str) -> None:
        self.app = app
        self.sqs = sqs
        self.queue_url = queue_url
        self.web = http_handler(app)
        self.worker: SQSConsumer = sqs_handler(app, margin_s=1.0)
        self.ran: list[str] = []
        #: Set to let `sls.stubborn`'s handler end.
        self.released = False

    def http(self, method: str, path: str, body: Any = None, token: str | None = TOKEN) -> Any:
        """One API Gateway HTTP API (payload 2.0) event through the HTTP function: the
        status and the JSON body."""
        answer = self.raw(method, path, body, token)
        text = answer["body"]
        if answer.get("isBase64Encoded"):
            text = base64.b64decode(text).decode()
        return answer["statusCode"], (orjson.loads(text) if text else None)

    def raw(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = TOKEN,
        more: Mapping[str, str] | None = None,
        web: Callable[..., Any] | None = None,
    ) -> dict[str, Any]:
        """One event through the HTTP function (`web`, else the stack's): its answer."""
        headers = {"content-type": "application/json", "host": "api.example.test", **(more or {})}
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        raw = b"" if body is None else orjson.dumps(body)
        event = {
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": path,
            "rawQueryString": "",
            "headers": headers,
            "requestContext": {
                "accountId": "123456789012",
                "apiId": "api",
                "domainName": "api.example.test",
                "http": {
                    "method": method,
                    "path": path,
                    "protocol": "HTTP/1.1",
                    "sourceIp": "203.0.113.9",
                    "userAgent": "test",
                },
                "requestId": secrets.token_hex(8),
                "routeKey": "$default",
                "stage": "$default",
                "time": "02/Dec/2026:12:00:00 +0000",
                "timeEpoch": int(time.time() * 1000),
            },
            "body": base64.b64encode(raw).decode(),
            "isBase64Encoded": True,
        }
        return dict((web or self.web)(event, LambdaContext(30)))

    def deliver(self, context_s: float = 60.0) -> dict[str, Any] | None:
        """Receive one batch as Lambda's poller does and hand it to the SQS function;
        None when the queue had nothing within a second's long poll."""
        got = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        messages = got.get("Messages", [])
        if not messages:
            return None
        event = {"Records": [_record(m, self.queue_url) for m in messages]}
        result = self.worker(event, LambdaContext(context_s))
        failed = {f["itemIdentifier"] for f in result["batchItemFailures"]}
        for m in messages:
            if m["MessageId"] in failed:  # visible again (Lambda waits out the timeout)
                self.sqs.change_message_visibility(
                    QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0
                )
            else:
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])
        return result

    def status(self, job_id: str) -> dict[str, Any]:
        code, body = self.http("GET", f"/v1/jobs/{job_id}")
        assert code == 200, body
        return dict(body)

    def deliver_until(self, job_id: str, done: Callable[[Mapping[str, Any]], bool]) -> Any:
        """Deliver batches until the job's status satisfies `done` (or fail at the deadline)."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            status = self.status(job_id)
            if done(status):
                return status
            self.deliver()
        pytest.fail(f"job {job_id} never got there: {self.status(job_id)}")

    def depth(self) -> int:
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed"],
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(
            attrs["ApproximateNumberOfMessagesDelayed"]
        )

    def run(self, coro: Any) -> Any:
        return self.worker.loop.run_until_complete(coro)


def _record(m: Mapping[str, Any], queue_url: str) -> dict[str, Any]:
    """An SQS event record as Lambda builds it from a received message."""
    return {
        "messageId": m["MessageId"],
        "receiptHandle": m["ReceiptHandle"],
        "body": m["Body"],
        "attributes": m.get("Attributes", {}),
        "messageAttributes": m.get("MessageAttributes", {}),
        "md5OfBody": m["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:" + queue_url.rsplit("/", 1)[1],
        "awsRegion": "us-east-1",
    }


@pytest.fixture
def stack(
    schema: PgSchema, moto_endpoint: str, sqs: Any, queue_url: str, tmp_path: Path
) -> Iterator[Stack]:
    s = _stack(schema.url, moto_endpoint, sqs, queue_url, tmp_path)
    yield s
    _close(s)


def _close(s: Stack) -> None:
    s.released = True
    s.run(s.worker.close())
    s.run(s.app.close())  # the HTTP function's lazily opened backend
    _end_loop(s.worker.loop)


def _stack(store: str, moto_endpoint: str, sqs: Any, queue_url: str, tmp_path: Path) -> Stack:
    """The deployment of these tests, its job rows at the PostgreSQL URL `store`."""
    name = queue_url.rsplit("/", 1)[1]
    url = f"sqs://{name}?endpoint_url={moto_endpoint}&region=us-east-1&relay_every=0&store={store}"
    app = App(
        "sls",
        settings=Settings(
            url=url,
            blobs_url=str(tmp_path / "blobs"),
            api_tokens={TOKEN: "alice"},
            secret_key=b"k" * 32,
            lease_s=3.0,
        ),
    )
    app.message("sls.hello", http=True)(Hello)
    app.message("sls.flaky", http=True)(Flaky)
    app.message("sls.slow", http=True)(Slow)
    app.message("sls.stubborn", http=True)(Stubborn)
    s = Stack(app, sqs, queue_url)

    @app.handles(Hello)
    async def hello(msg: Hello, ctx: Context) -> dict[str, str]:
        s.ran.append(ctx.job_id)
        return {"greeting": f"hello {msg.name}"}

    @app.handles(Flaky, max_attempts=3)
    async def flaky(msg: Flaky, ctx: Context) -> str:
        s.ran.append(ctx.job_id)
        if ctx.attempt <= msg.fail_times:
            raise Retry(delay=1.0)
        return "done"

    @app.handles(Slow)
    async def slow(msg: Slow, ctx: Context) -> str:
        s.ran.append(ctx.job_id)
        await asyncio.sleep(msg.seconds)
        return "slept"

    @app.handles(Stubborn)
    async def stubborn(msg: Stubborn, ctx: Context) -> str:
        s.ran.append(ctx.job_id)
        while not s.released:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:  # (what the test is about)
                continue
        return "let go"

    return s


def _end_loop(loop: asyncio.AbstractEventLoop) -> None:
    """End the functions' loop as a Lambda environment's end would: its tasks, then it."""
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.close()
    asyncio.set_event_loop(None)


def test_a_job_posted_to_the_http_function_runs_in_the_sqs_function(stack: Stack) -> None:
    # Given a job posted through API Gateway
    code, body = stack.http("POST", "/v1/jobs/sls.hello", {"name": "ada"})
    assert code == 202, body
    job_id = body["id"]
    # Then its message is on SQS already (sent after the commit, not by the relay)
    assert stack.depth() == 1
    # When Lambda delivers it
    status = stack.deliver_until(job_id, lambda s: s["state"] == "succeeded")
    # Then it ran once and its result is the API's
    assert status["result"] == {"greeting": "hello ada"}
    assert stack.ran == [job_id]
    assert stack.depth() == 0


def test_the_http_function_refuses_a_caller_without_a_token_and_sends_nothing(
    stack: Stack,
) -> None:
    code, body = stack.http("POST", "/v1/jobs/sls.hello", {"name": "eve"}, token=None)
    assert code == 401, body
    assert body["status"] == 401
    assert stack.depth() == 0
    code, body = stack.http("POST", "/v1/jobs/sls.hello", {"name": "eve"}, token="wrong")
    assert code == 401
    assert stack.depth() == 0


def test_a_failed_attempt_is_retried_by_a_delayed_message_then_succeeds(stack: Stack) -> None:
    code, body = stack.http("POST", "/v1/jobs/sls.flaky", {"fail_times": 1})
    assert code == 202, body
    job_id = body["id"]
    status = stack.deliver_until(job_id, lambda s: s["state"] == "succeeded")
    assert status["attempt"] == 2
    assert stack.ran == [job_id, job_id]


def test_a_job_that_spends_its_budget_goes_dead(stack: Stack) -> None:
    code, body = stack.http("POST", "/v1/jobs/sls.flaky", {"fail_times": 5})
    assert code == 202, body
    job_id = body["id"]
    status = stack.deliver_until(job_id, lambda s: s["state"] == "dead")
    assert status["attempt"] == 3 == status["max_attempts"]
    assert stack.ran == [job_id] * 3
    assert stack.depth() == 0  # nothing left to deliver


def test_a_message_whose_job_already_ran_is_acknowledged_without_running(stack: Stack) -> None:
    _, body = stack.http("POST", "/v1/jobs/sls.hello", {"name": "bo"})
    job_id = body["id"]
    stack.deliver_until(job_id, lambda s: s["state"] == "succeeded")
    # When the same message arrives again (SQS delivers at least once)
    stack.sqs.send_message(
        QueueUrl=stack.queue_url, MessageBody=orjson.dumps({"v": 1, "job": job_id}).decode()
    )
    result = stack.deliver()
    # Then it is acknowledged, and the job did not run again
    assert result == {"batchItemFailures": []}
    assert stack.ran == [job_id]
    assert stack.depth() == 0


def test_the_relay_sends_a_message_whose_send_was_lost_after_the_commit(stack: Stack) -> None:
    stack.run(stack.app.open())
    broker: Any = stack.app._require_backend()
    good = broker.queue_url
    # Given a send that fails after the job row and its outbox row committed
    broker.queue_url = good + "-gone"
    try:
        code, body = stack.http("POST", "/v1/jobs/sls.hello", {"name": "lost"})
    finally:
        broker.queue_url = good
    assert code == 202, body
    job_id = body["id"]
    assert stack.depth() == 0  # no message: only the outbox row knows
    # When the relay (its scheduled function) runs, the row older than its age
    broker.relay_age_s = 0.0
    relay = relay_handler(stack.app)
    try:
        relayed = relay({}, LambdaContext(30))
    finally:
        relay.loop.run_until_complete(relay.close())
    # Then the message is sent, and the job runs
    assert relayed == {"rescued": 0, "relayed": 1, "resent": 0}
    status = stack.deliver_until(job_id, lambda s: s["state"] == "succeeded")
    assert status["result"] == {"greeting": "hello lost"}
    assert stack.run(broker.relay(older_than_s=0)) == 0  # the outbox is empty
    stack.run(stack.app.close())


def test_a_message_whose_job_id_is_no_id_is_acknowledged(stack: Stack) -> None:
    # (it failed the batch item at every delivery: PostgreSQL refused "nope" as a uuid)
    for job in ("nope", 7, ""):
        stack.sqs.send_message(
            QueueUrl=stack.queue_url, MessageBody=orjson.dumps({"v": 1, "job": job}).decode()
        )
    while (result := stack.deliver()) is not None:
        assert result == {"batchItemFailures": []}
    assert stack.depth() == 0 and stack.ran == []


def test_the_relay_sends_again_the_message_of_a_job_whose_message_was_lost(
    stack: Stack,
) -> None:
    clock = ShiftClock()  # the store's now: the job waits for its resend without a sleep
    stack.app.clock = clock
    stack.run(stack.app.open())
    broker: Any = stack.app._require_backend()
    broker.store.clock = clock
    code, body = stack.http("POST", "/v1/jobs/sls.hello", {"name": "stranded"})
    assert code == 202, body
    job_id = body["id"]
    run_at = stack.status(job_id)["run_at"]
    # Given its message gone (a dead-letter queue took it: no function could run it)
    got = stack.sqs.receive_message(QueueUrl=stack.queue_url, WaitTimeSeconds=1)
    for m in got["Messages"]:
        stack.sqs.delete_message(QueueUrl=stack.queue_url, ReceiptHandle=m["ReceiptHandle"])
    assert stack.depth() == 0 and stack.status(job_id)["state"] == "queued"
    relay = relay_handler(stack.app)
    try:
        # When the scheduled relay runs before it has waited ready resend_after, nothing;
        assert relay({}, LambdaContext(30))["resent"] == 0
        clock.advance(broker.resend_after_s + 1)
        # once it has, its message is sent again, once per resend_after at most;
        assert relay({}, LambdaContext(30)) == {"rescued": 0, "relayed": 0, "resent": 1}
        assert relay({}, LambdaContext(30))["resent"] == 0
        # a paused queue's (its messages come back on their own) are not, until resumed.
        clock.advance(broker.resend_after_s + 1)
        stack.run(stack.app.pause("default"))
        assert relay({}, LambdaContext(30))["resent"] == 0
        stack.run(stack.app.resume("default"))
        assert relay({}, LambdaContext(30))["resent"] == 1
    finally:
        relay.loop.run_until_complete(relay.close())
    # Then it runs, its run_at as it was (its order and its age kept)
    assert stack.status(job_id)["run_at"] == run_at
    status = stack.deliver_until(job_id, lambda s: s["state"] == "succeeded")
    assert status["result"] == {"greeting": "hello stranded"}
    stack.run(stack.app.close())


def test_a_long_job_keeps_its_message_hidden_while_it_runs(stack: Stack) -> None:
    # Given a job that runs twice the queue's 2 s visibility timeout
    _, body = stack.http("POST", "/v1/jobs/sls.slow", {"seconds": 4.0})
    job_id = body["id"]
    stolen: list[Any] = []
    stop = threading.Event()

    def watch() -> None:  # another consumer, polling the queue while the job runs
        while not stop.is_set():
            got = stack.sqs.receive_message(QueueUrl=stack.queue_url, WaitTimeSeconds=1)
            stolen.extend(got.get("Messages", []))

    watcher = threading.Thread(target=watch)
    # When Lambda delivers it while the other consumer polls
    got = stack.sqs.receive_message(QueueUrl=stack.queue_url, WaitTimeSeconds=1)
    (message,) = got["Messages"]
    watcher.start()
    try:
        result = stack.worker({"Records": [_record(message, stack.queue_url)]}, LambdaContext(60))
    finally:
        stop.set()
        watcher.join()
    # Then it ran to the end once, and its message never showed to the other consumer
    assert result == {"batchItemFailures": []}
    assert stolen == []
    assert stack.status(job_id)["state"] == "succeeded"
    assert stack.ran == [job_id]


def test_a_job_still_running_near_the_invocations_end_spends_its_attempt_and_is_sent_again(
    stack: Stack,
) -> None:
    _, body = stack.http("POST", "/v1/jobs/sls.slow", {"seconds": 30.0})
    job_id = body["id"]
    # When the invocation has 2 s left (the margin is 1 s)
    result = stack.deliver(context_s=2.0)
    # Then the job's attempt failed, as a timeout does (released unspent, a job longer
    # than the function ran again for ever), its next one is sent, and the batch succeeded
    assert result == {"batchItemFailures": []}
    status = stack.status(job_id)
    assert status["state"] == "retrying"
    assert status["attempt"] == 1
    assert status["error"] == {"type": "TimeoutError", "message": "ran past the function's time"}
    assert stack.depth() == 1


def test_a_handler_that_ignores_its_cancellation_does_not_hold_the_invocations_answer(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    _, body = stack.http("POST", "/v1/jobs/sls.stubborn", {})
    job_id = body["id"]
    # When its job runs into the invocation's end (4 s left, the margin 1 s), and its
    # handler goes on after it is cancelled,
    began = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="offload.serverless"):
        result = stack.deliver(context_s=4.0)
    took = time.monotonic() - began
    # then the function answers before its end all the same (it waited for ever), its
    # message to come back, says which job it left running, and leaves the job unsettled:
    # its lease lapses, and the rescuer runs it again.
    assert stack.ran == [job_id]
    assert result == {"batchItemFailures": [{"itemIdentifier": ANY}]}
    assert took < 8.0, f"the invocation answered after {took:.1f} s"
    assert "ignored its cancellation" in caplog.text and job_id in caplog.text
    assert stack.status(job_id)["state"] == "running"


@contextlib.contextmanager
def _cut_off_once_a_job_runs(
    schema: PgSchema, moto_endpoint: str, sqs: Any, queue_url: str, tmp_path: Path
) -> Iterator[Stack]:
    """The deployment, its job rows reached through a network to PostgreSQL that is cut
    (every connection closed, new ones refused) once a handler has begun."""
    port = urlsplit(schema.url).port or 5432
    with TcpProxy(port) as proxy:
        through = schema.url.replace(f"127.0.0.1:{port}", f"127.0.0.1:{proxy.port}", 1)
        s = _stack(through, moto_endpoint, sqs, queue_url, tmp_path)
        cutter = _once_it_runs(s, proxy.cut)
        try:
            yield s
        finally:
            proxy.cut()
            cutter.join(WAIT_S)
            _close(s)


def _once_it_runs(s: Stack, then: Callable[[], None]) -> threading.Thread:
    """A thread, started, that calls `then` once a handler of `s` has begun."""

    def wait_then() -> None:
        deadline = time.monotonic() + WAIT_S
        while not s.ran and time.monotonic() < deadline:
            time.sleep(0.01)
        then()

    thread = threading.Thread(target=wait_then)
    thread.start()
    return thread


@contextlib.contextmanager
def _sqs_through_a_proxy(
    store: str, moto_endpoint: str, sqs: Any, queue_url: str, tmp_path: Path
) -> Iterator[tuple[Stack, TcpProxy]]:
    """The deployment, its job rows at `store`, reaching SQS through a proxy the test can
    stall (a server that takes connections and answers nothing) or cut."""
    port = urlsplit(moto_endpoint).port
    assert port is not None
    with TcpProxy(port) as proxy:
        s = _stack(store, f"http://127.0.0.1:{proxy.port}", sqs, queue_url, tmp_path)
        try:
            yield s, proxy
        finally:
            proxy.cut()
            _close(s)


def test_an_invocation_answers_before_its_end_when_postgresql_goes_away(
    schema: PgSchema, moto_endpoint: str, sqs: Any, queue_url: str, tmp_path: Path
) -> None:
    # Given a function whose job rows are reached through a network that can fail,
    with _cut_off_once_a_job_runs(schema, moto_endpoint, sqs, queue_url, tmp_path) as s:
        _, body = s.http("POST", "/v1/jobs/sls.slow", {"seconds": 2.0})
        # when the network to PostgreSQL fails while its job runs, in an invocation with
        # 8 s left,
        began = time.monotonic()
        result = s.deliver(context_s=8.0)
        took = time.monotonic() - began
        # then the function answers before its end (the settle waits no longer), and
        # names the message whose outcome it could not write: it comes back.
        assert s.ran == [body["id"]]
        assert result is not None and len(result["batchItemFailures"]) == 1
        # (8 s of the context's, plus the poller's own calls to SQS around it)
        assert took < 12.0, f"the invocation answered after {took:.1f} s"


def test_a_job_whose_beats_stall_at_the_invocations_end_does_not_run_on_into_the_next(
    schema: PgSchema, moto_endpoint: str, sqs: Any, queue_url: str, tmp_path: Path
) -> None:
    # Given a long job, and PostgreSQL cut off once it runs (its beats then retry),
    with _cut_off_once_a_job_runs(schema, moto_endpoint, sqs, queue_url, tmp_path) as s:
        s.http("POST", "/v1/jobs/sls.slow", {"seconds": 60.0})
        # when the invocation's answer comes due while a beat still retries,
        result = s.deliver(context_s=6.0)
        assert result is not None and len(result["batchItemFailures"]) == 1
        # then the job's run ended with it: nothing of it is left on the function's loop
        # to go on in the next invocation, beside the message delivered again.
        left = [t for t in asyncio.all_tasks(s.worker.loop) if t.get_name().startswith("job-")]
        assert left == []


def test_a_finished_jobs_outcome_is_written_while_sqs_answers_nothing(
    schema: PgSchema, moto_endpoint: str, sqs: Any, queue_url: str, tmp_path: Path
) -> None:
    # Given a function that reaches SQS through a network that can stall,
    with _sqs_through_a_proxy(schema.url, moto_endpoint, sqs, queue_url, tmp_path) as (s, proxy):
        _, body = s.http("POST", "/v1/jobs/sls.slow", {"seconds": 2.5})
        staller = _once_it_runs(s, proxy.stall)
        try:
            # when SQS stops answering (its connections open, no reply) while the job runs,
            # so that the beats that keep its message hidden wait on it,
            result = s.deliver(context_s=8.0)
        finally:
            staller.join(WAIT_S)
        # then the job's end is not held by a beat: its outcome is written, and its
        # message acknowledged (a beat held it until the invocation's end, and the job
        # stayed running, to run again)
        assert result == {"batchItemFailures": []}
        assert s.ran == [body["id"]]
        proxy.cut()
        assert s.status(body["id"])["state"] == "succeeded"


def test_a_cold_web_function_answers_within_seconds_while_sqs_answers_nothing(
    schema: PgSchema, moto_endpoint: str, sqs: Any, queue_url: str, tmp_path: Path
) -> None:
    from offload.brokers.sqs.backend import SEND_WAIT_S

    with _sqs_through_a_proxy(schema.url, moto_endpoint, sqs, queue_url, tmp_path) as (s, proxy):
        # Given SQS taking connections and answering nothing, when a cold web function
        # takes a job (opening looks the queue up, the enqueue sends its message),
        proxy.stall()
        began = time.monotonic()
        code, body = s.http("POST", "/v1/jobs/sls.hello", {"name": "stalled"})
        took = time.monotonic() - began
        # then it answers 202 within the two bounded waits, the job stored with its
        # message kept in the outbox for the relay (it answered after 42 s)
        assert code == 202, body
        assert took < 2 * SEND_WAIT_S + 3.0, f"the POST answered after {took:.1f} s"
        assert s.status(body["id"])["state"] == "queued"
        proxy.cut()
    import psycopg

    with psycopg.connect(schema.url) as conn:
        (kept,) = conn.execute(
            "SELECT count(*) FROM offload_outbox WHERE job_id = %s", (body["id"],)
        ).fetchone() or (0,)
    assert kept == 1


def test_an_open_cut_off_by_the_invocations_end_leaves_no_connection_behind(
    schema: PgSchema, moto_endpoint: str, sqs: Any, queue_url: str, tmp_path: Path
) -> None:
    import psycopg

    name = f"leak-{secrets.token_hex(4)}"  # the function's connections, not other tests'

    def connections() -> int:
        with psycopg.connect(schema.url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,)
            ).fetchone()
        return int(row[0] if row else 0)

    # Given a warm function (one loop) whose SQS takes connections and answers nothing,
    store = schema.url + ("&" if "?" in schema.url else "?") + f"application_name={name}"
    with _sqs_through_a_proxy(store, moto_endpoint, sqs, queue_url, tmp_path) as (s, proxy):
        sqs.send_message(QueueUrl=queue_url, MessageBody='{"v": 1, "job": "x", "queue": "q"}')
        got = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1)["Messages"]
        event = {"Records": [_record(m, queue_url) for m in got]}
        proxy.stall()
        before = connections()
        # when invocations of Lambda's default 3 s each end while it still opens (its
        # look-up of the queue waits on SQS),
        after = []
        for _ in range(3):
            result = s.worker(event, LambdaContext(3.0))
            assert result == {"batchItemFailures": [{"itemIdentifier": got[0]["MessageId"]}]}
            after.append(settled(connections, before))
        # then what each opened was closed as it was cut off (each left a connection
        # to PostgreSQL open: a warm function would run the server out of them)
        assert after == [before] * 3, (before, after)


def settled(count: Callable[[], int], expected: int) -> int:
    """`count()` once it reads `expected`, or its last reading after a deadline: a closed
    connection leaves the server's list a moment after its client closed it (a busy
    machine took longer than the test's first look), a leaked one never does."""
    deadline = time.monotonic() + WAIT_S / 3
    while (now := count()) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return now


def test_a_cold_function_whose_backend_does_not_open_in_time_names_every_message(
    moto_endpoint: str, sqs: Any, queue_url: str, tmp_path: Path
) -> None:
    # Given a cold function whose PostgreSQL takes connections and answers nothing,
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        store = f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/test"
        s = _stack(store, moto_endpoint, sqs, queue_url, tmp_path)
        sqs.send_message(QueueUrl=queue_url, MessageBody='{"v": 1, "job": "x", "queue": "q"}')
        got = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1)["Messages"]
        # when a batch comes with 3 s left,
        began = time.monotonic()
        event = {"Records": [_record(m, queue_url) for m in got]}
        result = s.worker(event, LambdaContext(3.0))
        took = time.monotonic() - began
        # then it answers before its end, naming every message (they come back), where
        # opening waited on past the function's timeout
        assert result == {"batchItemFailures": [{"itemIdentifier": got[0]["MessageId"]}]}
        assert took < 4.5, f"the invocation answered after {took:.1f} s"  # (connecting: 5 s)
        _end_loop(s.worker.loop)


def test_an_event_stream_through_the_http_function_answers_and_resumes(stack: Stack) -> None:
    # Given a waiting job, and an HTTP function whose streams end after 1 s
    web = http_handler(stack.app, stream_window_s=1.0)
    _, body = stack.http("POST", "/v1/jobs/sls.hello", {"name": "stream"})
    path = f"/v1/jobs/{body['id']}/events"
    stream = {"accept": "text/event-stream"}
    # when a client follows it (a function answers whole, once its answer ends),
    began = time.monotonic()
    answer = stack.raw("GET", path, more=stream, web=web)
    took = time.monotonic() - began
    # then the stream answers within its window, with the job's changes so far (it waited
    # for the job's end, until the function was killed),
    text = _text(answer)
    assert answer["statusCode"] == 200 and took < 10.0, (answer["statusCode"], took)
    assert answer["headers"]["content-type"].startswith("text/event-stream")
    assert "retry: 1000" in text and '"state":"queued"' in text.replace(" ", "")
    last = [line for line in text.splitlines() if line.startswith("id:")][-1].split(":")[1]
    # and the client's reconnection resumes after its last event: once the job ran, it
    # gets the rest, and the stream ends with the job.
    stack.deliver_until(body["id"], lambda s: s["state"] == "succeeded")
    again = _text(stack.raw("GET", path, more={**stream, "last-event-id": last.strip()}, web=web))
    assert '"state":"queued"' not in again.replace(" ", "")
    assert '"state":"succeeded"' in again.replace(" ", "")


def _text(answer: Mapping[str, Any]) -> str:
    text = answer["body"]
    return str(base64.b64decode(text).decode() if answer.get("isBase64Encoded") else text)


WORKER_SCRIPT = """
import sys
from offload import App, Message, Settings
from offload.serverless.aws import relay_handler, sqs_handler

app = App("script", settings=Settings(url=sys.argv[1]))

@app.message("script.hello")
class Hello(Message):
    name: str

@app.handles(Hello)
async def hello(msg, ctx):
    return msg.name

print(sqs_handler(app)({"Records": []}, None), relay_handler(app)({}, None))
"""


def test_a_script_that_called_the_queue_functions_exits_quietly(
    schema: PgSchema, moto_endpoint: str, queue_url: str, tmp_path: Path
) -> None:
    import os
    import subprocess
    import sys

    import offload

    # Given a script that calls the queue-triggered function and the relay, as README's
    # "Calling a handler yourself" says one may (each opens the app: SQS and PostgreSQL),
    name = queue_url.rsplit("/", 1)[1]
    url = f"sqs://{name}?endpoint_url={moto_endpoint}&region=us-east-1&store={schema.url}"
    script = tmp_path / "call.py"
    script.write_text(WORKER_SCRIPT)
    source = str(Path(offload.__file__).resolve().parents[1])
    ran = subprocess.run(
        [sys.executable, str(script), url],
        env={**os.environ, "PYTHONPATH": source}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    # when it ends, what they opened was closed at its exit (the SDK's session was left
    # unclosed, and said so)
    assert ran.returncode == 0, ran.stderr
    assert "batchItemFailures" in ran.stdout
    assert "Unclosed" not in ran.stderr and "Traceback" not in ran.stderr, ran.stderr


class LateSls(Message):
    n: int = 0


def _a_late_call_under_way(stack: Stack, monkeypatch: pytest.MonkeyPatch, call: HandedCall) -> None:
    """A plain handler's thread, run on past its timeout (its job dead), whose blob `put`
    is under way on the function's loop."""
    go = threading.Event()
    stack.app.message("sls.late", http=True)(LateSls)

    @stack.app.handles(LateSls, timeout=0.3, max_attempts=1)
    def late(msg: LateSls, ctx: Any) -> None:
        go.wait(WAIT_S)
        with contextlib.suppress(RuntimeError):
            ctx.blobs.put("late/x", b"x")

    monkeypatch.setattr(stack.app.blobs, "put", call.put)
    _, body = stack.http("POST", "/v1/jobs/sls.late", {})
    stack.deliver_until(body["id"], lambda s: s["state"] == "dead")
    go.set()
    stack.run(asyncio.wait_for(call.handed.wait(), WAIT_S))


def test_closing_the_consumer_awaits_a_cancelled_calls_cleanup(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a plain handler whose thread runs on past its timeout and then stores a blob,
    # a call slow to end once cancelled (a query cancelled on its server),
    call = HandedCall(0.2)
    _a_late_call_under_way(stack, monkeypatch, call)
    # when the consumer is closed (a test's end, the interpreter's exit),
    stack.run(stack.worker.close())
    # then the call's cleanup ran to its end first (it was cut short, and warned)
    assert call.cleanup == ["began", "ended"]


def test_closing_the_consumer_closes_its_app_past_a_call_that_ignores_its_cancel(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a plain handler's thread, run on past its timeout, whose call on the loop
    # catches its cancellation and goes on,
    call = HandedCall(stubborn=True)
    _a_late_call_under_way(stack, monkeypatch, call)
    users = stack.app._users
    try:
        # when the consumer is closed within a bound (the interpreter's exit gives 5 s),
        began = time.monotonic()
        stack.run(asyncio.wait_for(stack.worker.close(), 4.0))
        # then it gave up on that call in time, and closed the app after it (the exit's
        # bound cut the close short inside its wait: the app stayed open)
        assert time.monotonic() - began < 4.0
        assert stack.app._users == users - 1
    finally:
        call.stubborn = False  # (its task ends as the fixture ends the loop's tasks)


RUN_ON_SCRIPT = """
import sys, threading, time
from offload import App, Message, Settings, SyncContext
from offload.serverless.aws import sqs_handler

app = App("script", settings=Settings(url=sys.argv[1], blobs_url=sys.argv[2], lease_s=3.0))
said = []

@app.message("script.slow")
class Slow(Message):
    steps: int

@app.handles(Slow, timeout=0.3, max_attempts=1)
def slow(msg, ctx: SyncContext):
    # works on past its timeout, reporting as it goes, and returns once told to stop
    for i in range(msg.steps):
        time.sleep(0.2)
        said.append(ctx.progress(i / msg.steps))
        if ctx.cancelled.is_set() and len(said) > 5:
            return

class Lambda:
    def __init__(self, s):
        self.until = time.monotonic() + s
    def get_remaining_time_in_millis(self):
        return int((self.until - time.monotonic()) * 1000)

fn = sqs_handler(app, margin_s=0.5)
event = {"Records": [__RECORD__]}
print(fn(event, Lambda(2.0)), flush=True)
late = threading.Timer(60, lambda: print("said", said, flush=True))
late.daemon = True  # (says only whether the exit still waits a minute on)
late.start()
"""


def test_a_script_whose_handler_thread_reports_on_after_the_invocation_exits(
    schema: PgSchema, moto_endpoint: str, sqs: Any, queue_url: str, tmp_path: Path
) -> None:
    import os
    import subprocess
    import sys

    import offload

    # Given a script that calls the queue-triggered function once, whose plain handler
    # runs on past its timeout and the invocation, reporting progress (to a loop that runs
    # no more once the invocation has returned),
    name = queue_url.rsplit("/", 1)[1]
    url = f"sqs://{name}?endpoint_url={moto_endpoint}&region=us-east-1&relay_every=0&store={schema.url}"
    app = App("sender", settings=Settings(url=url, blobs_url=str(tmp_path / "blobs")))
    app.message("script.slow")(SlowSteps)
    app.enqueue_sync(SlowSteps(steps=50))
    got = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1)["Messages"]
    record = orjson.dumps(_record(got[0], queue_url)).decode()
    script = tmp_path / "run_on.py"
    script.write_text(RUN_ON_SCRIPT.replace("__RECORD__", record))
    source = str(Path(offload.__file__).resolve().parents[1])
    # when the script ends,
    ran = subprocess.run(
        [sys.executable, str(script), url, str(tmp_path / "blobs")],
        env={**os.environ, "PYTHONPATH": source}, capture_output=True, text=True, timeout=90,
    )  # fmt: skip  # (a hang is killed there, before the test's own timeout)
    # then it exits (its exit waited for ever on the thread, which waited on the loop):
    # the thread's reports are answered False once the interpreter exits, and it returns
    assert ran.returncode == 0, ran.stderr
    assert "batchItemFailures" in ran.stdout
    assert "said" not in ran.stdout, "the exit waited for the handler's 50 steps"
    assert "Traceback" not in ran.stderr, ran.stderr


class SlowSteps(Message):
    steps: int


def test_a_plain_postgresql_backend_writes_no_outbox_rows(schema: PgSchema) -> None:
    import psycopg

    # Given the same schema used through postgresql:// (no SQS)
    app = App("plain", settings=Settings(url=schema.url))
    app.message("sls.hello")(Hello)

    async def enqueue_and_count() -> int:
        async with app:
            await app.enqueue(Hello(name="pg"))
        async with await psycopg.AsyncConnection.connect(schema.url) as conn:
            cur = await conn.execute("SELECT count(*) FROM offload_outbox")
            row = await cur.fetchone()
            assert row is not None
            return int(row[0])

    # Then its connections write no outbox row (the triggers' WHEN reads a setting it lacks)
    assert asyncio.run(enqueue_and_count()) == 0


def test_an_enqueue_while_sqs_is_down_waits_for_it_briefly_and_leaves_the_outbox_row(
    schema: PgSchema, moto_endpoint: str, tmp_path: Path
) -> None:
    """The web function's request is not held by the SDK's retries (five tries with backoff,
    10.8 s in a trial) while SQS does not answer: the outbox row holds the job, and the
    relay sends it once SQS is back."""
    from moto.server import ThreadedMotoServer

    own = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # stopped below
    own.start()
    host, port = own.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")
    client.create_queue(QueueName="down")
    url = f"sqs://down?endpoint_url={endpoint}&region=us-east-1&relay_every=0&store={schema.url}"
    app = App("sls-down", settings=Settings(url=url, blobs_url=str(tmp_path / "blobs")))
    app.message("sls.hello")(Hello)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(app.open())
        own.stop()  # SQS goes away
        began = time.monotonic()
        job = loop.run_until_complete(app.enqueue(Hello(name="while down")))
        took = time.monotonic() - began
        assert job.created
        broker: Any = app._require_backend()
        assert loop.run_until_complete(broker.relay(older_than_s=0)) == 0  # still down: kept
        assert took < 8, f"the enqueue waited {took:.1f} s for SQS"
    finally:
        loop.run_until_complete(app.close())
        loop.close()


def test_a_cold_start_while_sqs_is_down_serves_reads_and_keeps_enqueues_for_the_relay(
    schema: PgSchema, moto_endpoint: str, tmp_path: Path
) -> None:
    """(`moto_endpoint`: its fixture gives the SDK its test credentials.)

    The HTTP function's first request, with SQS not answering: the job rows are
    PostgreSQL's, so reads are served and an enqueue is stored in the outbox, sent once SQS
    answers again; it answered 503 to everything until then (found by a trial)."""
    from moto.server import ThreadedMotoServer

    own = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    own.start()
    host, port = own.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")
    queue_url = client.create_queue(QueueName="cold")["QueueUrl"]
    own.stop()  # SQS goes away before the function's first request
    url = f"sqs://cold?endpoint_url={endpoint}&region=us-east-1&relay_every=0&store={schema.url}"
    app = App("sls-cold", settings=Settings(url=url, blobs_url=str(tmp_path / "blobs")))
    app.message("sls.hello")(Hello)
    loop = asyncio.new_event_loop()
    again = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    try:
        # Given a cold start (the app opens) while SQS does not answer,
        loop.run_until_complete(app.open())
        # an enqueue is stored (its message kept in the outbox), and reads are served;
        job = loop.run_until_complete(app.enqueue(Hello(name="cold")))
        assert job.created
        row = loop.run_until_complete(app.get(job.id))
        assert row is not None and row.state.value == "queued"
        # when SQS answers again (its queue kept), the relay sends the message.
        again.start()
        broker: Any = app._require_backend()
        assert loop.run_until_complete(broker.relay(older_than_s=0)) == 1
        got = client.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1)["Messages"]
        assert [orjson.loads(m["Body"])["job"] for m in got] == [job.id]
    finally:
        loop.run_until_complete(app.close())
        loop.close()
        again.stop()


def test_a_queue_sqs_says_does_not_exist_fails_the_open(
    schema: PgSchema, moto_endpoint: str, tmp_path: Path
) -> None:
    url = (
        f"sqs://no-such-queue?endpoint_url={moto_endpoint}&region=us-east-1&relay_every=0"
        f"&store={schema.url}"
    )
    app = App("sls-none", settings=Settings(url=url, blobs_url=str(tmp_path / "blobs")))
    with pytest.raises(BackendError, match="no-such-queue"):
        asyncio.run(app.open())
