"""Email on completion in one process: a worker sends it to a real SMTP server (aiosmtpd on
127.0.0.1) as a retried job of its own, with a plain-text and an HTML part."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from offload import App, Context, Message, Settings
from offload.errors import DeliveryError, TargetRefused
from offload.notify import EmailTemplate
from offload.notify.base import Notification
from offload.notify.email import EmailNotifier, parse_smtp_url

from ..receivers import MailSink, parts

pytestmark = pytest.mark.anyio

PUBLIC = "https://jobs.example.test"


class Report(Message):
    user_id: str


@pytest.fixture
def sink() -> Iterator[MailSink]:
    with MailSink(credentials=("mailer", "s3cret pass")) as s:
        yield s


@pytest.fixture
def settings(tmp_path: Path, sink: MailSink) -> Settings:
    host, port = "127.0.0.1", sink.controller.port
    return Settings(
        url=f"sqlite:///{tmp_path / 'jobs.db'}",
        blobs_url=str(tmp_path / "blobs"),
        secret_key=b"test-secret-of-32-bytes-or-more!",
        lease_s=2.0,
        smtp_url=f"smtp://mailer:s3cret%20pass@{host}:{port}?timeout=5",
        email_from="reports@shop.example",
        public_url=PUBLIC,
        notify_backoff_s=0.05,
    )


def declare(app: App) -> None:
    app.message("t.report")(Report)

    @app.handles(Report)
    async def report(msg: Report, ctx: Context) -> dict[str, str]:
        key = f"reports/{msg.user_id}-{ctx.job_id}.pdf"  # names the job: its result links it
        return {"pdf": await ctx.blobs.put(key, b"%PDF-1.4 fake")}


async def deliveries_of(app: App, job_id: str) -> list[dict[str, Any]]:
    deliveries: list[dict[str, Any]] = (await app.status(job_id))["deliveries"]
    return deliveries


async def settled(
    read: Callable[[], Awaitable[list[dict[str, Any]]]], count: int = 1, timeout: float = 15.0
) -> list[dict[str, Any]]:
    """The job's deliveries once `count` of them are recorded delivered (the receiver has
    the message a moment before its answer is stored on the job)."""
    async with asyncio.timeout(timeout):
        while True:
            deliveries = await read()
            if len(deliveries) == count and all(d["state"] == "delivered" for d in deliveries):
                return deliveries
            await asyncio.sleep(0.02)


async def mail(sink: MailSink, count: int = 1, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while len(sink.messages) < count:
        assert time.monotonic() < deadline, "no email arrived"
        await asyncio.sleep(0.02)


async def test_completion_email_has_both_parts_and_the_result_link(
    app: App, start_worker: Callable[..., Any], web: httpx.AsyncClient, sink: MailSink
) -> None:
    declare(app)
    # Given a job submitted over HTTP with notify_email,
    response = await web.post(
        "/v1/jobs/t.report", params={"notify_email": "ann@example.com"}, json={"user_id": "ann"}
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    # when a worker runs it,
    await start_worker()
    await mail(sink)
    # then one email arrives, sent with the URL's credentials, from and to the right people,
    (message,) = sink.messages
    assert sink.logins == ["mailer"]
    assert sink.envelopes == [("reports@shop.example", ["ann@example.com"])]
    assert message["To"] == "ann@example.com" and message["From"] == "reports@shop.example"
    assert "t.report" in message["Subject"] and "is done" in message["Subject"]
    # with a plain-text and an HTML part that both carry the signed link to the result file,
    found = dict(parts(message))
    assert set(found) == {"text/plain", "text/html"}
    text, html = found["text/plain"], found["text/html"]
    link = next(w for w in text.split() if w.startswith(f"{PUBLIC}/files/"))
    assert f"reports/ann-{job_id}.pdf" in link and "signature=" in link
    assert f'href="{link.replace("&", "&amp;")}"' in html
    assert f"{PUBLIC}/v1/jobs/{job_id}" in text and f"{PUBLIC}/v1/jobs/{job_id}" in html
    # and the link serves the file.
    served = await web.get(urlsplit(link).path + "?" + urlsplit(link).query)
    assert served.status_code == 200 and served.content == b"%PDF-1.4 fake"

    # The Message-ID is the notification id, recorded on the job with the server's answer
    # (once the server has answered: the message may arrive before that is stored).
    async def recorded() -> list[dict[str, Any]]:
        deliveries: list[dict[str, Any]] = (await web.get(f"/v1/jobs/{job_id}")).json()[
            "deliveries"
        ]
        return deliveries

    (sent,) = await settled(recorded)
    assert message["Message-ID"] == f"<{sent['id']}@shop.example>"
    assert sent["channel"] == "email" and sent["target"] == "ann@example.com"
    assert sent["state"] == "delivered" and [a["code"] for a in sent["attempts"]] == [250]


async def test_an_app_overrides_the_template_of_a_kind(
    app: App, start_worker: Callable[..., Any], sink: MailSink
) -> None:
    declare(app)
    app.email_template(
        "t.report",
        EmailTemplate(
            subject="Your report {job_id} is ready",
            text="Download: {result_url}\n",
            html="<p>Download <a href='{result_url}'>here</a> <i>{kind}</i></p>",
        ),
    )
    job = await app.enqueue(Report(user_id="bo"), notify_email="bo@example.com")
    await start_worker()
    await mail(sink)
    (message,) = sink.messages
    assert message["Subject"] == f"Your report {job.id} is ready"
    found = dict(parts(message))
    assert found["text/plain"].startswith(f"Download: {PUBLIC}/files/reports/bo-{job.id}.pdf?")
    assert "<i>t.report</i>" in found["text/html"]


async def test_a_failed_job_email_tells_the_error(
    app: App, start_worker: Callable[..., Any], sink: MailSink
) -> None:
    app.message("t.broken", max_attempts=1)(Report)

    @app.handles(Report)
    async def broken(msg: Report, ctx: Context) -> None:
        raise ValueError("the <printer> is on fire")

    job = await app.enqueue(Report(user_id="cy"), notify_email="cy@example.com")
    await start_worker()
    await mail(sink)
    (message,) = sink.messages
    assert "failed" in message["Subject"]
    found = dict(parts(message))
    assert "the <printer> is on fire" in found["text/plain"]
    assert "the &lt;printer&gt; is on fire" in found["text/html"]
    # with its status, and no link to a result it does not have (the link would answer 409),
    assert f"{PUBLIC}/v1/jobs/{job.id}" in found["text/plain"]
    assert "/result" not in found["text/plain"] and "/result" not in found["text/html"]
    assert "Open the result" not in found["text/html"]
    assert message["Subject"].endswith("failed on its last attempt")


async def test_a_temporary_smtp_refusal_is_retried(
    app: App, start_worker: Callable[..., Any], sink: MailSink
) -> None:
    declare(app)
    sink.codes = ["451 4.3.0 try again later"]
    job = await app.enqueue(Report(user_id="di"), notify_email="di@example.com")
    await start_worker()
    await mail(sink)

    (sent,) = await settled(lambda: deliveries_of(app, job.id))
    assert [a["code"] for a in sent["attempts"]] == [451, 250]
    assert len(sink.messages) == 1


async def test_a_permanent_smtp_refusal_ends_refused_with_its_code(
    app: App, start_worker: Callable[..., Any], sink: MailSink
) -> None:
    declare(app)
    sink.rcpt_codes = ["550 5.1.1 no such mailbox"]
    job = await app.enqueue(Report(user_id="ed"), notify_email="ed@example.com")
    await start_worker()
    async with asyncio.timeout(15):
        while not (found := await deliveries_of(app, job.id)) or found[0]["state"] != "refused":  # noqa: ASYNC110 (a stored state)
            await asyncio.sleep(0.02)
    (refused,) = found
    assert [a["code"] for a in refused["attempts"]] == [550]  # (it recorded none)
    assert sink.messages == []


async def test_one_job_can_ask_for_a_webhook_and_an_email(
    app: App, settings: Settings, start_worker: Callable[..., Any], sink: MailSink
) -> None:
    from ..receivers import Receiver

    app.configure(settings.with_(webhook_allow_private=True))
    declare(app)
    with Receiver() as receiver:
        job = await app.enqueue(
            Report(user_id="ed"), callback_url=receiver.url, notify_email="ed@example.com"
        )
        await start_worker()
        await mail(sink)
        sent = await settled(lambda: deliveries_of(app, job.id), count=2)
    assert [d["channel"] for d in sent] == ["webhook", "email"]
    assert sent[0]["id"] == sent[1]["id"]  # one notification, two channels
    assert receiver.requests[0].headers["webhook-id"] == sent[0]["id"]


def succeeded_note(target: str) -> Notification:
    """The email notification of a succeeded job (no links) to `target`."""
    return Notification(
        id="msg_1",
        channel="email",
        target=target,
        event="job.succeeded",
        record={"id": "j1", "kind": "t.report", "state": "succeeded"},
        sent_at=time.time(),
        links={},
    )


async def test_a_target_of_several_addresses_is_refused_and_nothing_is_sent(
    settings: Settings, sink: MailSink
) -> None:
    # Given a delivery whose target is a list (as a job stored before the web tier refused
    # one held it: its To field would name `root` and `postmaster` to the relay too),
    notifier = EmailNotifier(parse_smtp_url(settings.smtp_url or ""), sender="r@shop.example")
    listed = succeeded_note("root,postmaster,ann@example.com")
    # then it is refused for good, with nothing handed to the server;
    with pytest.raises(TargetRefused, match="not an email address"):
        await notifier.deliver(listed)
    assert sink.envelopes == [] and sink.messages == []
    # and one address is the envelope's only recipient.
    receipt = await notifier.deliver(replace(listed, target="ann@example.com"))
    assert receipt.code == 250
    assert sink.envelopes == [("r@shop.example", ["ann@example.com"])]


async def test_a_mail_server_out_of_reach_is_not_named_to_the_jobs_owner(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The delivery record, which the job's owner reads, said "Error connecting to
    # relay.internal on port 25: [Errno 111] Connect call failed ('10.0.0.5', 25)".
    with socket.socket() as bound:  # (bound, not listening: a connection is refused)
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        config = parse_smtp_url(f"smtp://localhost:{port}?timeout=5")
        notifier = EmailNotifier(config, sender="r@shop.example")
        with pytest.raises(DeliveryError) as failed:
            await notifier.deliver(succeeded_note("ann@example.com"))
    said = str(failed.value)
    assert said == "SMTPConnectError: the mail server could not be reached or ended the exchange"
    assert "localhost" not in said and str(port) not in said and "127.0.0.1" not in said
    # The operators' log names the server.
    (logged,) = [r for r in caplog.records if getattr(r, "action", "") == "email_failed"]
    assert str(port) in logged.getMessage()


@pytest.mark.parametrize(
    ("answers", "refused", "said"),
    [
        ({"greeting": b"554 mx1.corp.internal ESMTP no mail (10.20.30.40)"}, DeliveryError,
         "SMTP 554: the mail server refused it (its answer is in the worker's log)"),
        ({"RCPT": b"451 4.3.0 mx1.corp.internal: lookup failure at 10.20.30.40"}, DeliveryError,
         "the mail server refused the recipient for now (451)"),
        ({"RCPT": b"550 5.1.1 mx1.corp.internal: no such user"}, TargetRefused,
         "the mail server refused ann@example.com (550)"),
        ({"MAIL": b"421 4.4.2 mx1.corp.internal Error: timeout exceeded"}, DeliveryError,
         "SMTP 421: the mail server refused it for now (its answer is in the worker's log)"),
    ],
)  # fmt: skip
async def test_a_mail_servers_answer_reaches_the_owner_as_its_code_only(
    answers: dict[str, bytes], refused: type[Exception], said: str
) -> None:
    # Postfix names its host (and at times its address) in its answers: the delivery
    # record, which the job's owner reads, carried them.
    async def converse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(answers.get("greeting", b"220 mx ESMTP") + b"\r\n")
        while line := await reader.readline():
            verb = line.split(b":")[0].split(b" ")[0].upper().decode()
            answer = answers.get(verb, b"354 go" if verb == "DATA" else b"250 ok")
            writer.write(answer + b"\r\n")
            await writer.drain()
            if verb == "QUIT" or (answer[:1] in (b"4", b"5") and verb != "RCPT"):
                break

    async with _mail_server(converse) as port:
        notifier = EmailNotifier(
            parse_smtp_url(f"smtp://127.0.0.1:{port}?timeout=10"), sender="r@shop.example"
        )
        with pytest.raises(DeliveryError) as failed:
            async with asyncio.timeout(30):
                await notifier.deliver(succeeded_note("ann@example.com"))
        assert type(failed.value) is refused and str(failed.value) == said


async def test_a_mail_server_that_answers_each_command_slowly_runs_out_of_the_timeout() -> None:
    # Given a mail server on loopback that answers every command, each after 0.4 s,
    async def converse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.4)
        writer.write(b"220 slow.example ESMTP\r\n")
        while line := await reader.readline():
            await asyncio.sleep(0.4)
            writer.write(b"250 ok\r\n" if not line.upper().startswith(b"DATA") else b"354 go\r\n")
            await writer.drain()

    async with _mail_server(converse) as port:
        config = parse_smtp_url(f"smtp://127.0.0.1:{port}?timeout=1")
        notifier = EmailNotifier(config, sender="r@shop.example")
        note = succeeded_note("ann@example.com")
        # the handing over ends at its timeout as a whole (each answer came within it),
        with pytest.raises(DeliveryError, match="no answer within 1s"):
            async with asyncio.timeout(30):
                await notifier.deliver(note)


@contextlib.asynccontextmanager
async def _mail_server(
    converse: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    """A mail server on loopback (its port) that holds each connection to `converse`, and
    closes it after (a client that hangs up ends it quietly)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await converse(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
