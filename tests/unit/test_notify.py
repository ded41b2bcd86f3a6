"""Pure parts of notifications: Standard Webhooks signing, planning delivery jobs, email
composition, SMTP URLs, stream tickets and the new settings."""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from offload import App, Message
from offload.contract import JobState
from offload.errors import ConfigurationError
from offload.notify import NOTIFY_OWNER, NOTIFY_QUEUE, notification_id
from offload.notify.base import Notification
from offload.notify.email import EmailNotifier, EmailTemplate, parse_smtp_url
from offload.notify.plan import follow_ups
from offload.notify.webhook import sign, verify
from offload.settings import Settings, parse_webhook_secrets
from offload.web.feeds import cursor_of, make_ticket, read_ticket
from offload.web.problems import Problem

# The example of the Standard Webhooks specification (and its reference libraries).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TS = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
OTHER = "whsec_" + base64.b64encode(b"x" * 32).decode()


# -- signing -------------------------------------------------------------------------------


def test_signature_matches_the_specification_example() -> None:
    assert sign([SPEC_SECRET], SPEC_ID, SPEC_TS, SPEC_BODY) == SPEC_SIGNATURE


def test_each_secret_signs_so_receivers_can_rotate() -> None:
    header = sign([SPEC_SECRET, OTHER], SPEC_ID, SPEC_TS, SPEC_BODY)
    first, second = header.split(" ")
    assert first == SPEC_SIGNATURE and second.startswith("v1,") and second != first
    headers = {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TS)}
    for secret in (SPEC_SECRET, OTHER):
        assert verify(secret, {**headers, "webhook-signature": header}, SPEC_BODY, now=SPEC_TS)


def test_the_reference_library_accepts_our_signature() -> None:
    body = b'{"type":"job.succeeded","data":{"id":"j1"}}'
    now = int(datetime.now(UTC).timestamp())
    headers = {
        "webhook-id": "msg_abc",
        "webhook-timestamp": str(now),
        "webhook-signature": sign([OTHER], "msg_abc", now, body),
    }
    assert Webhook(OTHER).verify(body, headers) == {"type": "job.succeeded", "data": {"id": "j1"}}


@pytest.mark.parametrize(
    "change",
    [
        {"body": b'{"test": 1}'},
        {"secret": OTHER},
        {"now": SPEC_TS + 301},
        {"headers": {"webhook-id": "msg_other"}},
        {"headers": {"webhook-timestamp": "yesterday"}},
        {"headers": {"webhook-timestamp": "²"}},  # a digit to str.isdigit, not to int()
        {"headers": {"webhook-timestamp": "9" * 5000}},  # past int()'s digit limit
        {"headers": {"webhook-timestamp": " " + str(SPEC_TS)}},
        {"headers": {"webhook-signature": "v2," + SPEC_SIGNATURE[3:]}},
        {"headers": {"webhook-signature": "v1,ünïcode"}},
    ],
)
def test_verify_refuses_anything_altered(change: dict[str, Any]) -> None:
    headers = {
        "webhook-id": SPEC_ID,
        "webhook-timestamp": str(SPEC_TS),
        "webhook-signature": SPEC_SIGNATURE,
    }
    headers.update(change.get("headers", {}))
    body = change.get("body", SPEC_BODY)
    secret = change.get("secret", SPEC_SECRET)
    now = change.get("now", SPEC_TS)
    assert verify(secret, headers, body, now=now) is False
    assert verify(SPEC_SECRET, {}, SPEC_BODY, now=SPEC_TS) is False


@pytest.mark.parametrize(
    "secret", ["", "whsec_", "whsec_!!!!", "whsec_" + base64.b64encode(b"short").decode(), "x"]
)
def test_verify_refuses_to_check_against_no_secret(secret: str) -> None:
    # An unset secret (`os.environ.get("WEBHOOK_SECRET", "")`) decoded to an empty key,
    # against which anyone can sign.
    forged = base64.b64encode(
        hmac.new(b"", f"{SPEC_ID}.{SPEC_TS}.".encode() + SPEC_BODY, hashlib.sha256).digest()
    ).decode()
    headers = {
        "webhook-id": SPEC_ID,
        "webhook-timestamp": str(SPEC_TS),
        "webhook-signature": "v1," + forged,
    }
    with pytest.raises(ValueError, match="24 to 64 bytes"):
        verify(secret, headers, SPEC_BODY, now=SPEC_TS)


def test_a_secret_without_its_prefix_or_padding_or_with_a_newline_verifies_alike() -> None:
    headers = {
        "webhook-id": SPEC_ID,
        "webhook-timestamp": str(SPEC_TS),
        "webhook-signature": sign([OTHER], SPEC_ID, SPEC_TS, SPEC_BODY),
    }
    for secret in (OTHER, OTHER.removeprefix("whsec_"), OTHER.rstrip("="), f" {OTHER}\n"):
        assert verify(secret, headers, SPEC_BODY, now=SPEC_TS)


def test_webhook_secrets_setting_checks_each_secret() -> None:
    assert parse_webhook_secrets(f" {SPEC_SECRET} ,{OTHER}") == (SPEC_SECRET, OTHER)
    assert parse_webhook_secrets("") == ()
    for bad in ("secret", "whsec_", "whsec_!!!", "whsec_" + base64.b64encode(b"short").decode()):
        with pytest.raises(ConfigurationError, match="whsec_"):
            parse_webhook_secrets(bad)
    settings = Settings.from_env(
        {
            "OFFLOAD_WEBHOOK_SECRETS": SPEC_SECRET,
            "OFFLOAD_WEBHOOK_ALLOW_PRIVATE": "1",
            "OFFLOAD_SMTP_URL": "smtp://mail:25",
            "OFFLOAD_EMAIL_FROM": "jobs@example.com",
            "OFFLOAD_PUBLIC_URL": "https://jobs.example.com/",
        }
    )
    assert settings.webhook_secrets == (SPEC_SECRET,) and settings.webhook_allow_private
    assert settings.smtp_url == "smtp://mail:25" and settings.email_from == "jobs@example.com"
    assert settings.public_url == "https://jobs.example.com"
    assert Settings.from_env({}).webhook_allow_private is False


# -- planning ------------------------------------------------------------------------------


class Thing(Message):
    n: int = 1


def _app() -> App:
    app = App("plan", settings=Settings(url="memory://"))
    app.message("t.thing")(Thing)
    return app


def test_a_final_state_with_both_options_plans_two_delivery_jobs() -> None:
    app = _app()
    options = {"callback_url": "https://h.example.com/x", "notify_email": "a@example.com"}
    envs = follow_ups(
        app, job_id="j1", kind="t.thing", options=options, state=JobState.DEAD, marker="tok"
    )
    assert [e.kind for e in envs] == ["offload.webhook", "offload.email"]
    assert {e.queue for e in envs} == {NOTIFY_QUEUE} and {e.owner for e in envs} == {NOTIFY_OWNER}
    nid = notification_id("j1", "dead", "tok")
    assert envs[0].payload == {
        "job_id": "j1", "url": "https://h.example.com/x", "state": "dead", "notification_id": nid
    }  # fmt: skip
    assert [e.idempotency_key for e in envs] == [f"{nid}:webhook", f"{nid}:email"]
    assert envs[0].max_attempts == 12


def test_no_options_no_final_state_or_a_delivery_kind_plan_nothing() -> None:
    app = _app()
    hook = {"callback_url": "https://h.example.com/x"}
    for kind, options, state in (
        ("t.thing", {}, "succeeded"),
        ("t.thing", hook, "retrying"),
        ("t.thing", hook, "running"),
        ("offload.webhook", hook, "dead"),
    ):
        envs = follow_ups(app, job_id="j", kind=kind, options=options, state=state, marker="m")
        assert envs == (), (kind, options, state)


def test_a_kind_default_callback_applies_unless_the_job_names_one() -> None:
    app = App("plan", settings=Settings(url="memory://"))
    app.message("t.hooked", callback_url="https://default.example.com/")(Thing)
    (default,) = follow_ups(
        app, job_id="j", kind="t.hooked", options=None, state="failed", marker="m"
    )
    own = {"callback_url": "https://own.example.com/"}
    (mine,) = follow_ups(app, job_id="j", kind="t.hooked", options=own, state="failed", marker="m")
    assert default.payload["url"] == "https://default.example.com/"
    assert mine.payload["url"] == "https://own.example.com/"
    with pytest.raises(ConfigurationError):
        app.message("t.bad", callback_url="ftp://x")(Thing)


def test_notification_ids_are_stable_per_final_state_and_short() -> None:
    job = "01a2229f-9ca6-7065-bb1a-9a899badf774"
    first = notification_id(job, "succeeded", "token-1")
    assert first == notification_id(job, "succeeded", "token-1")
    assert first != notification_id(job, "succeeded", "token-2")
    assert first != notification_id(job, "dead", "token-1")
    assert first.startswith("msg_01a2229f9ca67065") and len(first) <= 50


@pytest.mark.anyio
async def test_repeated_follow_ups_collapse_into_one_job() -> None:
    app = _app()
    async with app:
        for _ in range(2):
            envs = follow_ups(
                app, job_id="j9", kind="t.thing", options={"notify_email": "a@example.com"},
                state="succeeded", marker="tok",
            )  # fmt: skip
            (result,) = await app._require_backend().enqueue(envs)
        assert result.created is False
        assert len(await app.list_jobs(owner=NOTIFY_OWNER)) == 1


# -- email ---------------------------------------------------------------------------------


def test_smtp_urls() -> None:
    c = parse_smtp_url("smtp://user%40x:p%3Ass@mail.example.com:587?starttls=1&timeout=5")
    assert (c.host, c.port, c.username, c.password) == ("mail.example.com", 587, "user@x", "p:ss")
    assert c.start_tls and not c.use_tls and c.timeout_s == 5
    c = parse_smtp_url("smtps://mail.example.com")
    assert (c.port, c.use_tls, c.start_tls, c.username) == (465, True, False, None)
    assert parse_smtp_url("smtp://mail.example.com").port == 25
    assert parse_smtp_url("smtp://mail.example.com?starttls=1").port == 587
    for bad in ("http://mail", "smtp://", "smtp://h?timeout=soon"):
        with pytest.raises(ConfigurationError):
            parse_smtp_url(bad)


def _note(state: str = "succeeded", error: dict[str, str] | None = None) -> Notification:
    return Notification(
        id="msg_1",
        channel="email",
        target="a@example.com",
        event=f"job.{state}",
        record={"id": "j1", "kind": "t.thing", "state": state, "error": error,
                "finished_at": "2026-11-28T12:00:00.000Z"},
        sent_at=1_800_000_000.0,
        links={"job": "https://x/v1/jobs/j1", "result": "https://x/files/r.pdf?a=1&b=2"},
    )  # fmt: skip


def test_an_email_has_both_parts_the_links_and_the_notification_id() -> None:
    notifier = EmailNotifier(parse_smtp_url("smtp://h"), sender="jobs@shop.example")
    message = notifier.compose(_note())
    assert message["Message-ID"] == "<msg_1@shop.example>"
    assert (
        message["To"] == "a@example.com"
        and message["Subject"] == "offload: your t.thing job is done"
    )
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    assert "https://x/files/r.pdf?a=1&b=2" in text.get_content()
    assert 'href="https://x/files/r.pdf?a=1&amp;b=2"' in html.get_content()


def test_templates_escape_html_and_keep_the_subject_on_one_line() -> None:
    template = EmailTemplate(
        subject="Job\n{kind}\r\n{state}", text="{error}", html="<p>{error}</p>"
    )
    notifier = EmailNotifier(
        parse_smtp_url("smtp://h"), sender="a@b.example", templates=lambda kind: template
    )
    message = notifier.compose(_note("failed", {"message": "<script>x</script>"}))
    assert message["Subject"] == "Job t.thing failed"
    html = message.get_body(("html",))
    assert html is not None and "&lt;script&gt;" in html.get_content()


def test_an_app_refuses_a_template_with_an_unknown_field() -> None:
    app = _app()
    with pytest.raises(ConfigurationError, match="nope"):
        app.email_template("t.thing", EmailTemplate(subject="{nope}"))
    app.email_template("*", EmailTemplate(subject="all: {kind}"))
    assert app.email_template_of("t.other").subject == "all: {kind}"


# -- stream tickets ------------------------------------------------------------------------


def test_tickets_name_their_principal_until_they_expire() -> None:
    key = b"k" * 32
    ticket = make_ticket(key, "alice.smith@example.com", 1000)
    assert read_ticket(key, ticket, now=999.5) == "alice.smith@example.com"
    assert read_ticket(key, ticket, now=1000.5) is None  # expired
    assert read_ticket(b"other key" * 4, ticket, now=999) is None
    who, expires, signature = ticket.split(".")
    assert read_ticket(key, f"{who}.{int(expires) + 100}.{signature}", now=999) is None
    forged = base64.urlsafe_b64encode(b"bob").rstrip(b"=").decode()
    assert read_ticket(key, f"{forged}.{expires}.{signature}", now=999) is None
    for junk in ("", "a.b", "..", "a.1000.", "%%%.1000.x", "a.99999999999999999999.x", "a.²³.x"):
        assert read_ticket(key, junk, now=0) is None


@pytest.mark.parametrize("position", ["x", "-1", "²", "١٢", "1" * 19])
def test_a_feed_position_is_up_to_18_ascii_digits(position: str) -> None:
    # ² and other digits that str.isdigit() takes and int() refuses: 400, not a crash
    with pytest.raises(Problem) as refused:
        cursor_of(position, None)
    assert refused.value.status == 400
    assert cursor_of(None, "42") == 42 and cursor_of("", None) is None


def test_python_enqueue_takes_and_checks_delivery_options() -> None:
    app = _app()
    env = app.envelope(Thing(), callback_url="https://h.example.com/x", notify_email="a@b.example")
    assert env.options == {"callback_url": "https://h.example.com/x", "notify_email": "a@b.example"}
    assert app.envelope(Thing()).options == {}
    with pytest.raises(ValueError, match="callback_url"):
        app.envelope(Thing(), callback_url="javascript:alert(1)")
    with pytest.raises(ValueError, match="notify_email"):
        app.envelope(Thing(), notify_email="not an address")


def test_an_email_for_a_job_that_did_not_succeed_links_no_result_subject_of_its_own_or_not() -> (
    None
):
    dead = replace(
        _note("dead", {"type": "ValueError", "message": "no paper"}),
        links={"job": "https://x/v1/jobs/j1"},
    )
    for template in (None, EmailTemplate(subject="Report {kind}: {state}")):
        templates = None if template is None else (lambda _kind, t=template: t)
        notifier = EmailNotifier(
            parse_smtp_url("smtp://h"), sender="jobs@shop.example", templates=templates
        )
        message = notifier.compose(dead)
        text, html = message.get_body(("plain",)), message.get_body(("html",))
        assert text is not None and html is not None
        assert "Result:" not in text.get_content() and "Open the result" not in html.get_content()
        assert "https://x/v1/jobs/j1" in text.get_content() and "no paper" in text.get_content()
    assert message["Subject"] == "Report t.thing: dead"


@pytest.mark.anyio
async def test_a_webhook_target_resolves_in_offloads_own_threads() -> None:
    import threading

    from offload.errors import DeliveryError
    from offload.notify.webhook import WebhookNotifier

    seen: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        seen.append(threading.current_thread().name)
        raise OSError("no such name")

    async with httpx.AsyncClient() as client:
        notifier = WebhookNotifier(client, resolve=resolve, timeout_s=5)
        note = replace(_note(), channel="webhook", target="https://hooks.example.com/in")
        with pytest.raises(DeliveryError):
            await notifier.deliver(note)
    # (not the event loop's shared pool, which a resolver that stalls would fill)
    assert len(seen) == 1 and seen[0].startswith("offload-resolve")
