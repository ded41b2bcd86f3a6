"""Which delivery jobs a job's final state calls for: the follow-ups of a transition."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..contract import Envelope, JobState
from .base import (
    EMAIL_KIND,
    NOTIFY_OWNER,
    WEBHOOK_KIND,
    EmailDelivery,
    WebhookDelivery,
    notification_id,
)

if TYPE_CHECKING:
    from ..app import App

#: Kinds that never call for notifications of their own (no webhook about a webhook).
DELIVERY_KINDS = frozenset({WEBHOOK_KIND, EMAIL_KIND})


def targets(app: App, kind: str, options: Mapping[str, Any] | None) -> dict[str, str]:
    """The channels a job of `kind` with these options asks for: {channel: target}.

    The job's own `callback_url` wins over its kind's default; `notify_email` is per job.
    """
    if kind in DELIVERY_KINDS:
        return {}
    options = options or {}
    spec = app.kinds.get(kind)
    callback = options.get("callback_url") or (spec.callback_url if spec else None)
    found = {"webhook": callback, "email": options.get("notify_email")}
    return {channel: str(target) for channel, target in found.items() if target}


def follow_ups(
    app: App,
    *,
    job_id: str,
    kind: str,
    options: Mapping[str, Any] | None,
    state: JobState | str,
    marker: str,
) -> tuple[Envelope, ...]:
    """The delivery jobs for one final state of a job, to enqueue with that transition.

    Each carries an idempotency key per (notification, channel), so a repeat collapses.

    Args:
        marker: tells this final state apart from an earlier one of the same job (the
            settling lease's token, or a timestamp of the transition).
    """
    state = JobState(state)
    if not state.final:
        return ()
    wanted = targets(app, kind, options)
    if not wanted:
        return ()
    nid = notification_id(job_id, state.value, marker)
    messages: list[tuple[str, WebhookDelivery | EmailDelivery]] = []
    if "webhook" in wanted:
        messages.append(
            (
                "webhook",
                WebhookDelivery(
                    job_id=job_id, url=wanted["webhook"], state=state.value, notification_id=nid
                ),
            )
        )
    if "email" in wanted:
        messages.append(
            (
                "email",
                EmailDelivery(
                    job_id=job_id, to=wanted["email"], state=state.value, notification_id=nid
                ),
            )
        )
    return tuple(
        app.envelope(message, owner=NOTIFY_OWNER, idempotency_key=f"{nid}:{channel}")
        for channel, message in messages
    )


def follow_ups_of_row(app: App, row: Mapping[str, Any], marker: str) -> tuple[Envelope, ...]:
    """`follow_ups` for a stored row that has just reached a final state."""
    return follow_ups(
        app,
        job_id=row["id"],
        kind=row["kind"],
        options=row.get("options"),
        state=row["state"],
        marker=marker,
    )
