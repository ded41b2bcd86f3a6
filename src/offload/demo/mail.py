"""The confirmation email: SMTP settings from OFFLOAD_SMTP_URL, the message, and sending it."""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from urllib.parse import parse_qs, urlsplit

from ..notify.email import SMTPConfig, parse_smtp_url, send_message
from .config import DemoConfig
from .data import DemoUser, money, period_label

#: Where mail goes when OFFLOAD_SMTP_URL is unset (aiosmtpd's usual port on loopback).
DEFAULT_SMTP_URL = "smtp://127.0.0.1:8025"
#: The sender of the demo's emails, unless the URL's `from` parameter names another.
DEFAULT_SENDER = "Tally reports <reports@tally.example>"


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    """How to reach the SMTP server (offload's own URL forms: `notify.email.parse_smtp_url`)
    and who the demo's mail comes from.

    `smtp://user:pass@host:587?starttls=1`: STARTTLS required; `smtp://host:25`: plain;
    `smtps://user:pass@host:465`: TLS from the start. `timeout` sets the seconds allowed and
    `from` the sender (else OFFLOAD_EMAIL_FROM, else the demo's own).
    """

    server: SMTPConfig
    sender: str

    @classmethod
    def from_url(cls, url: str | None, sender: str | None = None) -> SmtpSettings:
        """The settings of `url`; `sender` when the URL names none (OFFLOAD_EMAIL_FROM).

        Raises:
            ConfigurationError: not an smtp:// or smtps:// URL, or a bad option.
        """
        url = url or DEFAULT_SMTP_URL
        named = parse_qs(urlsplit(url).query).get("from", [""])[-1]
        return cls(parse_smtp_url(url), named or sender or DEFAULT_SENDER)


@dataclass(frozen=True, slots=True)
class ReportSummary:
    """What the confirmation email says about the report."""

    job_id: str
    period: str
    pages: int
    revenue_cents: int
    orders: int


def confirmation(
    user: DemoUser,
    report: ReportSummary,
    *,
    sender: str,
    base_url: str,
    to: str | None = None,
    now: datetime | None = None,
) -> EmailMessage:
    """The "your report is ready" email, as text and HTML.

    Its Message-ID derives from the report's job id, so a re-sent copy (a retried job) is
    recognisably the same message.
    """
    label = period_label(report.period)
    link = f"{base_url.rstrip('/')}/reports"
    message = EmailMessage()
    message["Subject"] = f"Your sales report is ready: {label}"
    message["From"] = sender
    message["To"] = to or str(Address(user.name, addr_spec=user.email))
    message["Date"] = format_datetime(now or datetime.now(UTC))
    message["Message-ID"] = f"<report-{report.job_id}@offload-demo>"
    text = (
        f"Hi {user.name.split()[0]},\n\n"
        f"Your sales report for {user.shop} ({label}) is ready: {report.pages} pages, "
        f"{report.orders:,} orders, total revenue {money(report.revenue_cents)}.\n\n"
        f"Download it from your reports page: {link}\n\n"
        "Tally, sales reports for small shops\n"
    )
    message.set_content(text)
    message.add_alternative(
        f"""<p>Hi {html.escape(user.name.split()[0])},</p>
<p>Your sales report for <b>{html.escape(user.shop)}</b> ({html.escape(label)}) is ready:
{report.pages} pages, {report.orders:,} orders,
total revenue <b>{money(report.revenue_cents)}</b>.</p>
<p><a href="{html.escape(link)}">Open your reports page</a> to download it.</p>
<p style="color:#64748b">Tally, sales reports for small shops</p>""",
        subtype="html",
    )
    return message


def confirmation_for(
    config: DemoConfig, user: DemoUser, report: ReportSummary
) -> tuple[SmtpSettings, EmailMessage]:
    """Where to send, and the confirmation email, as the demo's settings say."""
    smtp = SmtpSettings.from_url(config.smtp_url, config.mail_from)
    message = confirmation(
        user, report, sender=smtp.sender, base_url=config.base_url, to=config.mail_to
    )
    return smtp, message


async def send(message: EmailMessage, smtp: SmtpSettings) -> None:
    """Hand `message` to the SMTP server.

    Raises:
        aiosmtplib.SMTPException: the server refused it or could not be reached (the job
            retries).
    """
    await send_message(message, smtp.server)
