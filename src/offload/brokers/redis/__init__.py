"""Redis: every transition one Lua script, wake-ups over pub/sub (needs redis-py)."""

from __future__ import annotations

from .backend import RedisBackend

__all__ = ["RedisBackend"]
