"""The web tier: an ASGI app that validates, enqueues, answers 202, and reports status."""

from __future__ import annotations

from .app import check_bind, create_app

__all__ = ["check_bind", "create_app"]
