"""Email on completion: SMTP URLs, per-kind templates, and EmailNotifier (aiosmtplib)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib

from ..errors import ConfigurationError, DeliveryError, TargetRefused
from .base import DEFAULT_TEMPLATE as DEFAULT_TEMPLATE  # re-exported (older home)
from .base import DEFAULT_TEMPLATE_NO_RESULT, Notification, Receipt
from .base import SAMPLE_CONTEXT as SAMPLE_CONTEXT  # re-exported (older home)
from .base import EmailTemplate as EmailTemplate  # re-exported (older home)
from .targets import notify_email_error

log = logging.getLogger("offload.notify")

#: Longest wait for the SMTP server, per command (seconds).
DEFAULT_SMTP_TIMEOUT_S = 30.0

_OUTCOMES = {
    "succeeded": "is done",
    "failed": "failed",
    "dead": "failed on its last attempt",
    "cancelled": "was cancelled",
}


@dataclass(frozen=True, slots=True)
class SMTPConfig:
    """Where and how to send mail, from `smtp://` or `smtps://` URLs."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    use_tls: bool = False
    start_tls: bool = False
    timeout_s: float = DEFAULT_SMTP_TIMEOUT_S


def parse_smtp_url(url: str) -> SMTPConfig:
    """`smtp://user:pass@host:587?starttls=1` (STARTTLS required), `smtp://host:25` (plain),
    `smtps://user:pass@host:465` (TLS from the start); `?timeout=` in seconds.

    Raises:
        ConfigurationError: another scheme, or no host.
    """
    parts = urlsplit(url)
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ConfigurationError(
            "OFFLOAD_SMTP_URL must look like smtp://user:pass@host:587?starttls=1 or "
            "smtps://user:pass@host:465"
        )
    tls = parts.scheme == "smtps"
    starttls = options.get("starttls", "0").lower()
    if starttls not in ("1", "true", "yes", "0", "false", "no"):
        raise ConfigurationError("OFFLOAD_SMTP_URL: starttls must be 1 or 0")
    start_tls = starttls in ("1", "true", "yes")
    try:
        timeout = float(options.get("timeout", DEFAULT_SMTP_TIMEOUT_S))
        port = parts.port or (465 if tls else 587 if start_tls else 25)
    except ValueError as exc:
        raise ConfigurationError(f"bad OFFLOAD_SMTP_URL: {exc}") from None
    return SMTPConfig(
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        use_tls=tls,
        start_tls=start_tls and not tls,
        timeout_s=timeout,
    )


async def send_message(
    message: EmailMessage, smtp: SMTPConfig, *, recipients: Sequence[str] | None = None
) -> tuple[Any, str]:
    """Hand `message` to the SMTP server; returns aiosmtplib's (refusals, answer).
    `recipients` are the envelope's, else those its To, Cc and Bcc fields name.

    Raises:
        aiosmtplib.SMTPException: the server refused it or could not be reached.
    """
    result: tuple[Any, str] = await aiosmtplib.send(
        message,
        recipients=recipients,
        hostname=smtp.host,
        port=smtp.port,
        username=smtp.username,
        password=smtp.password,
        use_tls=smtp.use_tls,
        start_tls=smtp.start_tls,
        timeout=smtp.timeout_s,
    )
    return result


def template_context(n: Notification, app_name: str) -> dict[str, str]:
    """The values a template fills in, from a notification."""
    record = n.record
    state = str(record["state"])
    error = record.get("error") or {}
    message = str(error.get("message", "")) if state != "succeeded" else ""
    if message and error.get("traceback"):  # only in records shown with tracebacks
        message += f"\n\n{error['traceback']}"
    return {
        "app": app_name,
        "kind": str(record["kind"]),
        "state": state,
        "outcome": _OUTCOMES.get(state, state),
        "job_id": str(record["id"]),
        "job_url": n.links.get("job", ""),
        "result_url": n.links.get("result", ""),
        "finished_at": str(record.get("finished_at") or ""),
        "error": f"Error: {message}\n\n" if message else "",
    }


class EmailNotifier:
    """Sends a notification as a multipart (plain text and HTML) email over SMTP.

    Args:
        config: the SMTP server (see `parse_smtp_url`).
        sender: the From address.
        templates: the template of a kind (the app's override, else the default).
        app_name: shown in the default subject.
    """

    def __init__(
        self,
        config: SMTPConfig,
        *,
        sender: str,
        templates: Callable[[str], EmailTemplate] | None = None,
        app_name: str = "offload",
    ) -> None:
        self.config = config
        #: Longest one email's handing over may take, connection and all (seconds).
        self.timeout_s = config.timeout_s
        self.sender = sender
        self.templates = templates or (lambda _kind: DEFAULT_TEMPLATE)
        self.app_name = app_name

    def compose(self, n: Notification) -> EmailMessage:
        template = self.templates(str(n.record["kind"]))
        if not n.links.get("result") and (template.text, template.html) == (
            DEFAULT_TEMPLATE.text,
            DEFAULT_TEMPLATE.html,
        ):  # a job that did not succeed, and the default bodies (an app's own subject kept)
            template = dataclasses.replace(
                template, text=DEFAULT_TEMPLATE_NO_RESULT.text, html=DEFAULT_TEMPLATE_NO_RESULT.html
            )
        subject, text, body = template.render(template_context(n, self.app_name))
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = n.target
        message["Subject"] = subject
        message["Date"] = formatdate(n.sent_at, usegmt=True)
        domain = self.sender.rpartition("@")[2] or "offload"
        # The notification id is the Message-ID: a stable id receivers can drop repeats by.
        message["Message-ID"] = f"<{n.id}@{domain}>"
        message["X-Offload-Job"] = str(n.record["id"])
        message.set_content(text)
        message.add_alternative(body, subtype="html")
        return message

    async def deliver(self, notification: Notification) -> Receipt:
        # The one address a job names, checked again (a job stored before the web tier
        # checked as closely), and the envelope's only recipient whatever the header says.
        if why := notify_email_error(notification.target):
            raise TargetRefused(f"{notification.target!r}: {why}")
        message = self.compose(notification)
        try:
            # The whole exchange within the timeout (aiosmtplib's bounds each command alone).
            async with asyncio.timeout(self.timeout_s):
                _refused, answer = await send_message(
                    message, self.config, recipients=[notification.target]
                )
        except TimeoutError:
            raise DeliveryError(f"no answer within {self.timeout_s:g}s") from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise _unsaid(exc, notification) from None
        return Receipt(code=250, detail=answer[:200])


def _unsaid(exc: BaseException, notification: Notification) -> DeliveryError:
    """What a failed handing over says in the delivery record, which the job's owner reads:
    the mail server's answer code, not its text (Postfix names its host, and at times its
    address, in its answers) nor a connection error's host, port and address. The
    operators' log says them. All the recipients refused for good (5xx): `TargetRefused`."""
    log.warning(
        "email to the mail server failed: %s: %s",
        type(exc).__name__,
        exc,
        extra={"action": "email_failed", "job_id": notification.record.get("id")},
    )
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        if codes and all(500 <= code < 600 for code in codes):
            return TargetRefused(
                f"the mail server refused {notification.target} ({codes[0]})", code=codes[0]
            )
        code = codes[0] if codes else None
        return DeliveryError(f"the mail server refused the recipient for now ({code})", code=code)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        kind = {4: "refused it for now", 5: "refused it"}.get(exc.code // 100, "answered so")
        return DeliveryError(  # (a greeting, a login, the message: the log says which)
            f"SMTP {exc.code}: the mail server {kind} (its answer is in the worker's log)",
            code=exc.code,
        )
    said = "the mail server could not be reached or ended the exchange"
    return DeliveryError(f"{type(exc).__name__}: {said}")
