"""The handlers of the built-in delivery kinds: read the job, notify, record the attempt."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .. import tracing
from .._links import Presenter, result_refs, signing_key
from ..contract import JobRow
from ..errors import Cancel, DeliveryError, TargetRefused
from ..retry import Backoff
from . import ledger
from .base import (
    DEFAULT_NOTIFY_TIMEOUT_S,
    EMAIL_KIND,
    WEBHOOK_KIND,
    EmailDelivery,
    Notification,
    Notifier,
    WebhookDelivery,
)
from .targets import targets

if TYPE_CHECKING:
    import httpx

    from ..app import App, HandlerSpec
    from ..context import Context

#: How long links in an email stay valid (seconds): mail is read later than webhooks.
DEFAULT_EMAIL_LINK_TTL_S = 7 * 86400.0
#: Longest delay between two delivery attempts (seconds).
DEFAULT_NOTIFY_BACKOFF_CAP_S = 3600.0
#: A delivery job's timeout beyond its notifier's bound on an attempt, where that is longer
#: than the kind's: time to record the attempt that ran out.
BACKSTOP_MARGIN_S = 30.0


class Dispatcher:
    """Runs delivery jobs for one worker: one notifier per channel, shared by all jobs.

    Args:
        app: the app whose jobs are notified (its settings and store).
        webhook: the webhook notifier; by default a WebhookNotifier from the settings.
        email: the email notifier; by default an EmailNotifier when OFFLOAD_SMTP_URL is set.
    """

    def __init__(
        self, app: App, *, webhook: Notifier | None = None, email: Notifier | None = None
    ) -> None:
        self.app = app
        s = app.settings
        self._client: httpx.AsyncClient | None = None
        if email is None and s.smtp_url:
            from .email import EmailNotifier, parse_smtp_url

            email = EmailNotifier(
                parse_smtp_url(s.smtp_url),
                sender=s.email_from,
                templates=app.email_template_of,
                app_name=app.name,
            )
        # The default webhook notifier (and httpx) is made by the first webhook delivery:
        # a worker that sends none starts without importing an HTTP client.
        self.notifiers: dict[str, Notifier | None] = {"webhook": webhook, "email": email}
        key = signing_key(s)
        # A notification leaves for a third party: tracebacks only when exposed on purpose.
        shown = s.expose_tracebacks
        email_ttl_s = max(s.link_ttl_s, DEFAULT_EMAIL_LINK_TTL_S)
        # Links that leave the web tier point at its public URL: the files' and the jobs'.
        base = s.public_url
        self.presenters = {
            channel: Presenter(key, ttl_s, base, mount=base, tracebacks=shown, blobs=app.blobs)
            for channel, ttl_s in (("webhook", s.link_ttl_s), ("email", email_ttl_s))
        }

    def handlers(self) -> dict[str, HandlerSpec]:
        """Handler specs of the delivery kinds, for the worker's handler table."""
        from ..app import HandlerSpec

        backoff = Backoff(
            base_s=self.app.settings.notify_backoff_s, cap_s=DEFAULT_NOTIFY_BACKOFF_CAP_S
        )
        return {
            kind: HandlerSpec(
                fn=fn,
                message=self.app.spec_of(kind),
                max_attempts=None,
                timeout=self._backstop(channel),
                backoff=backoff,
                is_async=True,
            )
            for kind, channel, fn in (
                (WEBHOOK_KIND, "webhook", self.webhook),
                (EMAIL_KIND, "email", self.email),
            )
        }

    def _backstop(self, channel: str) -> float:
        """The timeout of a delivery job of `channel`: the notifier's own bound on an attempt
        ends it first, and the attempt is recorded (the kind's 60 s, or that bound and
        `BACKSTOP_MARGIN_S` where it is longer)."""
        notifier = self.notifiers[channel]
        bound = getattr(notifier, "timeout_s", None)
        if notifier is None and channel == "webhook":
            bound = self.app.settings.webhook_timeout_s  # the default notifier's, made later
        if not isinstance(bound, int | float):
            return DEFAULT_NOTIFY_TIMEOUT_S
        return max(DEFAULT_NOTIFY_TIMEOUT_S, bound + BACKSTOP_MARGIN_S)

    def _notifier(self, channel: str) -> Notifier | None:
        notifier = self.notifiers[channel]
        if notifier is None and channel == "webhook":
            from .webhook import WebhookNotifier, new_client

            s = self.app.settings
            self._client = new_client(s.webhook_timeout_s)
            notifier = self.notifiers[channel] = WebhookNotifier(
                self._client,
                secrets=s.webhook_secrets,
                allow_private=s.webhook_allow_private,
                timeout_s=s.webhook_timeout_s,
            )
        return notifier

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def webhook(self, msg: WebhookDelivery, ctx: Context) -> dict[str, Any]:
        return await self._deliver(
            "webhook", msg.url, msg.job_id, msg.state, msg.notification_id, ctx
        )

    async def email(self, msg: EmailDelivery, ctx: Context) -> dict[str, Any]:
        return await self._deliver("email", msg.to, msg.job_id, msg.state, msg.notification_id, ctx)

    def _notification(
        self, channel: str, target: str, row: JobRow, state: str, nid: str
    ) -> Notification:
        """The notification, from the job's status record as it is now.

        Raises:
            Cancel: the job no longer asks for this delivery, or it moved on.
        """
        job_id = row.id
        if targets(self.app, row.kind, row.options).get(channel) != target:
            raise Cancel(f"job {job_id} does not ask for this {channel} delivery")
        if row.state != state:
            raise Cancel(f"job {job_id} is {row.state} now, no longer {state}")
        presenter = self.presenters[channel]
        record = presenter.row(row)
        base = presenter.prefix
        links = {"job": f"{base}/v1/jobs/{job_id}"}
        if state == "succeeded":  # only a succeeded job has a result to open
            refs = result_refs(row.result, job_id)
            one = len(refs) == 1
            links["result"] = presenter.link(refs[0]) if one else f"{base}/v1/jobs/{job_id}/result"
        return Notification(
            id=nid,
            channel=channel,
            target=target,
            event=f"job.{state}",
            record=record,
            sent_at=time.time(),
            links=links,
        )

    async def _deliver(
        self, channel: str, target: str, job_id: str, state: str, nid: str, ctx: Context
    ) -> dict[str, Any]:
        shown = traced = target
        if channel == "webhook":
            from .webhook import redact

            shown, traced = redact(target), redact(target, query="REDACTED")

        async def record(state: str, **attempt: Any) -> None:
            self.app.metrics.delivered(channel, state)
            await ledger.record_attempt(
                self.app._require_backend(),
                job_id,
                channel=channel,
                notification=nid,
                target=shown,
                state=state,
                at=time.time(),
                attempt=ctx.attempt,
                **attempt,
            )

        row = await self.app.get(job_id)
        if row is None:
            raise Cancel(f"job {job_id} no longer exists")
        try:
            notification = self._notification(channel, target, row, state, nid)
        except Cancel as stop:
            await record("superseded", error=stop.reason)
            raise
        notifier = self._notifier(channel)
        started = time.monotonic()
        try:
            if notifier is None:
                raise DeliveryError("OFFLOAD_SMTP_URL is not set: this worker cannot send email")
            with tracing.deliver(channel, traced, job_id=job_id, notification=nid) as span:
                receipt = await notifier.deliver(notification)
                tracing.delivered(span, channel, receipt.code)
        except TargetRefused as exc:  # (the receiver's code, where it answered: SMTP's 550)
            elapsed = time.monotonic() - started
            await record("refused", code=exc.code, error=str(exc), duration_s=elapsed)
            raise Cancel(f"{channel} target refused: {exc}") from None
        except Exception as exc:
            last = ctx.attempt >= ctx.max_attempts
            await record(
                "failed" if last else "retrying",
                code=getattr(exc, "code", None),
                error=str(exc) or type(exc).__name__,
                duration_s=time.monotonic() - started,
            )
            raise
        await record("delivered", code=receipt.code, duration_s=time.monotonic() - started)
        return {"notification": nid, "channel": channel, "target": shown, "code": receipt.code}
