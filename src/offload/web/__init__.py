"""The web tier: an ASGI app that validates, enqueues, answers 202, and reports status."""

from __future__ import annotations

from .app import check_bind, create_app
from .auth import Admin, AuthHook, TokenAuth
from .runtime import lifespan

__all__ = ["Admin", "AuthHook", "TokenAuth", "check_bind", "create_app", "lifespan"]
