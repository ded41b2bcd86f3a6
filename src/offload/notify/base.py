"""The Notifier seam, the notification record, the built-in delivery message kinds, the
email template type, and the keys of a job's delivery record.

The small types the App needs (it registers the delivery kinds and email templates, and
shows a job's deliveries): nothing here sends anything or imports a client library.
"""

from __future__ import annotations

import hashlib
import html
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..contract import Message

if TYPE_CHECKING:
    from ..brokers.base import JobStore

#: The queue every webhook and email delivery job goes to (claimed by workers by default).
NOTIFY_QUEUE = "offload.notify"
#: Message kind of a webhook delivery job.
WEBHOOK_KIND = "offload.webhook"
#: Message kind of an email delivery job.
EMAIL_KIND = "offload.email"
#: The principal that owns delivery jobs (so they never show in a user's job list or stream).
NOTIFY_OWNER = "offload.notify"
#: Attempts a delivery gets before it ends `dead` (with the default backoff: about 3 hours).
DEFAULT_NOTIFY_ATTEMPTS = 12
#: Longest a single delivery attempt may run, connection and all (seconds).
DEFAULT_NOTIFY_TIMEOUT_S = 60.0


class WebhookDelivery(Message):
    """Deliver the final status of job `job_id` to `url` (a delivery job's payload)."""

    job_id: str
    url: str
    state: str
    notification_id: str


class EmailDelivery(Message):
    """Email the final status of job `job_id` to `to` (a delivery job's payload)."""

    job_id: str
    to: str
    state: str
    notification_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Notification:
    """One notification of a job's final state, as a notifier delivers it.

    Args:
        id: stable across retries (`msg_…`): receivers drop repeats by it.
        channel: `webhook` or `email`.
        target: the URL or the email address.
        event: the event type, `job.<state>` (e.g. `job.succeeded`).
        record: the job's status record, with signed absolute links to its files.
        sent_at: when this attempt is made (epoch seconds).
        links: absolute URLs of the web tier: `job`, and `result` for a job that
            succeeded (the one place a result is).
    """

    id: str
    channel: str
    target: str
    event: str
    record: dict[str, Any]
    sent_at: float
    links: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Receipt:
    """A delivery the receiver accepted: its answer code and a short description."""

    code: int | None
    detail: str = ""


@runtime_checkable
class Notifier(Protocol):
    """Delivers one notification over one channel."""

    async def deliver(self, notification: Notification) -> Receipt:
        """Deliver once; the caller (a delivery job) retries.

        Raises:
            TargetRefused: the target is not allowed; retrying cannot help.
            DeliveryError: this attempt failed (with the receiver's code when it answered).
        """
        ...


def notification_id(job_id: str, state: str, marker: str) -> str:
    """The stable id of the notification of one final state of a job.

    `marker` tells apart two final states of one job (it may be re-queued and end again):
    the lease token of the attempt that settled it, or a timestamp of the transition. The
    id stays short, so that as an email Message-ID it fits one header line.
    """
    digest = hashlib.blake2s(f"{state}:{marker}".encode(), digest_size=5).hexdigest()
    return f"msg_{job_id.replace('-', '')}_{digest}"


# -- email templates --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EmailTemplate:
    """Subject, plain-text and HTML bodies as `str.format` templates.

    Fields: `{app}`, `{kind}`, `{state}`, `{outcome}` (e.g. "is done"), `{job_id}`,
    `{job_url}`, `{result_url}`, `{finished_at}`, `{error}`. In `html` every value is
    HTML-escaped. Subclass and override `render` for anything a format string cannot do.
    """

    subject: str = "{app}: your {kind} job {outcome}"
    text: str = (
        "Your {kind} job {outcome}.\n\n"
        "Result: {result_url}\n"
        "Status: {job_url}\n\n"
        "{error}"
        "Job {job_id}, finished {finished_at}.\n"
    )
    html: str = (
        "<!doctype html><html><body>"
        "<p>Your <b>{kind}</b> job {outcome}.</p>"
        '<p><a href="{result_url}">Open the result</a> · <a href="{job_url}">Status</a></p>'
        "<p>{error}</p>"
        "<p><small>Job {job_id}, finished {finished_at}.</small></p>"
        "</body></html>"
    )

    def render(self, context: Mapping[str, str]) -> tuple[str, str, str]:
        """(subject, text, html) for one notification."""
        escaped = {k: html.escape(v) for k, v in context.items()}
        subject = " ".join(self.subject.format_map(context).split())  # one header line
        return subject, self.text.format_map(context), self.html.format_map(escaped)


#: The template of kinds the app did not give one.
DEFAULT_TEMPLATE = EmailTemplate()
#: The default's body for a job that did not succeed: no result to open.
DEFAULT_TEMPLATE_NO_RESULT = EmailTemplate(
    text=DEFAULT_TEMPLATE.text.replace("Result: {result_url}\n", ""),
    html=DEFAULT_TEMPLATE.html.replace('<a href="{result_url}">Open the result</a> · ', ""),
)
#: Values a template is checked against when it is registered.
SAMPLE_CONTEXT = {
    k: k
    for k in (
        "app",
        "kind",
        "state",
        "outcome",
        "job_id",
        "job_url",
        "result_url",
        "finished_at",
        "error",
    )
}


# -- the delivery record ----------------------------------------------------------------------

#: Channels, in the order a job's record lists them.
CHANNELS = ("webhook", "email")


def delivery_key(channel: str) -> str:
    """The JobStore key (`remember`/`recall`) of a job's record of one channel."""
    return f"offload.deliveries.{channel}"


async def deliveries(store: JobStore, job_id: str) -> list[dict[str, Any]]:
    """Every recorded notification of the job, oldest first within each channel."""
    out: list[dict[str, Any]] = []
    if "\x00" in job_id:  # no job's id (nor a query's text, on PostgreSQL)
        return out
    for channel in CHANNELS:
        found, value = await store.recall(job_id, delivery_key(channel))
        if found and isinstance(value, list):
            out.extend(value)
    return out
