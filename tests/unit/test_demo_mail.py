"""The demo's SMTP settings and its confirmation email."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from offload import ConfigurationError
from offload.demo.data import USERS
from offload.demo.mail import DEFAULT_SENDER, ReportSummary, SmtpSettings, confirmation


def test_smtp_url_defaults() -> None:
    smtp = SmtpSettings.from_url("smtp://mail.example.com")
    server = smtp.server
    assert (server.host, server.port, server.use_tls, server.start_tls) == (
        "mail.example.com",
        25,
        False,
        False,
    )
    assert server.username is None and smtp.sender == DEFAULT_SENDER


def test_smtps_url_with_credentials_and_options() -> None:
    smtp = SmtpSettings.from_url(
        "smtps://me%40example.com:p%3Ass@smtp.example.com?from=me@example.com&timeout=5"
    )
    assert (smtp.server.port, smtp.server.use_tls) == (465, True)
    assert (smtp.server.username, smtp.server.password) == ("me@example.com", "p:ss")
    assert smtp.sender == "me@example.com" and smtp.server.timeout_s == 5.0


def test_starttls_can_be_required() -> None:
    smtp = SmtpSettings.from_url("smtp://smtp.example.com:587?starttls=1")
    assert (smtp.server.port, smtp.server.start_tls) == (587, True)
    assert SmtpSettings.from_url("smtp://h?starttls=true").server.start_tls


def test_sender_comes_from_the_url_then_the_setting() -> None:
    assert SmtpSettings.from_url("smtp://h", "ops@shop.example").sender == "ops@shop.example"
    assert SmtpSettings.from_url("smtp://h?from=a@b.example", "ops@x.example").sender == (
        "a@b.example"
    )


@pytest.mark.parametrize(
    "url",
    ["http://example.com", "smtp://", "smtp://h?starttls=maybe", "smtp://h?timeout=soon"],
)
def test_bad_smtp_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError):
        SmtpSettings.from_url(url)


def test_confirmation_says_what_was_made_and_keeps_its_message_id() -> None:
    summary = ReportSummary("job-1", "2025-Q2", 12, 1234567, 321)
    now = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    message = confirmation(
        USERS["carol"], summary, sender=DEFAULT_SENDER, base_url="http://h:1/", now=now
    )
    assert message["To"] == "Carol Nguyen <carol@example.com>"
    assert message["Subject"] == "Your sales report is ready: Q2 2025 (Apr–Jun)"
    assert message["Message-ID"] == "<report-job-1@offload-demo>"
    text = message.get_body(("plain",))
    assert text is not None
    content = text.get_content()
    assert "$12,345.67" in content and "321 orders" in content and "12 pages" in content
    assert "http://h:1/reports" in content
    html = message.get_body(("html",))
    assert html is not None and "<b>Copper Kettle Tea Co.</b>" in html.get_content()
    again = confirmation(USERS["carol"], summary, sender=DEFAULT_SENDER, base_url="x", to="t@x.org")
    assert again["Message-ID"] == message["Message-ID"] and again["To"] == "t@x.org"
