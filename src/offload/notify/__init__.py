"""Delivering results: webhooks and email as retried jobs of their own.

The web tier streams changes itself (server-sent events, WebSocket); this package holds
the channels that leave the system: the `Notifier` seam, `WebhookNotifier` (Standard
Webhooks signing, private targets refused), `EmailNotifier` (SMTP), and the planning of
delivery jobs when a job ends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import (
    EMAIL_KIND,
    NOTIFY_OWNER,
    NOTIFY_QUEUE,
    WEBHOOK_KIND,
    EmailDelivery,
    EmailTemplate,
    Notification,
    Notifier,
    Receipt,
    WebhookDelivery,
    notification_id,
)

if TYPE_CHECKING:  # (loaded on first use: `__getattr__`; their types for type checkers)
    from .dispatch import Dispatcher
    from .email import EmailNotifier, SMTPConfig, parse_smtp_url
    from .webhook import WebhookNotifier, check_target, sign, verify

_LAZY = {
    "EmailNotifier": "email",
    "SMTPConfig": "email",
    "parse_smtp_url": "email",
    "WebhookNotifier": "webhook",
    "check_target": "webhook",
    "sign": "webhook",
    "verify": "webhook",
    "Dispatcher": "dispatch",
}

__all__ = [
    "EMAIL_KIND",
    "NOTIFY_OWNER",
    "NOTIFY_QUEUE",
    "WEBHOOK_KIND",
    "Dispatcher",
    "EmailDelivery",
    "EmailNotifier",
    "EmailTemplate",
    "Notification",
    "Notifier",
    "Receipt",
    "SMTPConfig",
    "WebhookDelivery",
    "WebhookNotifier",
    "check_target",
    "notification_id",
    "parse_smtp_url",
    "sign",
    "verify",
]


def __getattr__(name: str) -> Any:
    """The notifiers load on first use, so `import offload` does not import httpx or SMTP."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
