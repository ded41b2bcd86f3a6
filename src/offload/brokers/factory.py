"""Pick a backend by URL scheme, importing its driver only when asked for."""

from __future__ import annotations

import secrets
from typing import cast
from urllib.parse import urlsplit, urlunsplit

from ..clock import Clock
from ..errors import ConfigurationError
from .base import Backend


def name_memory(url: str) -> str:
    """`url`, or for a bare in-memory SQLite URL (`memory://`, `sqlite://`,
    `sqlite:///:memory:`: a fresh database at each open) a name of its own,
    `memory://NAME`: the backends opened on the URL returned share one database while one
    of them is open."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if parts.netloc or scheme not in ("sqlite", "memory"):
        return url
    if scheme == "sqlite" and parts.path not in ("", "/", "/:memory:"):
        return url
    return urlunsplit(("memory", f"app-{secrets.token_hex(6)}", "", parts.query, ""))


def open_backend(
    url: str,
    *,
    clock: Clock | None = None,
    connect_timeout_s: float | None = None,
    retry_deadline_s: float | None = None,
) -> Backend:
    """A backend (not yet opened) for `url`.

    Args:
        clock: the time source of run_at, leases and timestamps when it stands in for
            the server's (`Clock.stands_in_for_server`: tests inject a `FakeClock` and
            move it instead of sleeping); else each backend keeps its server's clock for
            them (PostgreSQL `now()`, Redis `TIME` for leases, SQLite this host's).
        connect_timeout_s: how long `open` waits for a server (the backend's default when
            None); SQLite has no server and ignores it.
        retry_deadline_s: how long a call to a server tries again after a lost connection
            (the backend's default when None); SQLite ignores it.

    Raises:
        ConfigurationError: unknown scheme or a missing extra.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("sqlite", "memory"):
        from .sqlite import SQLiteBackend

        return SQLiteBackend.from_url(url, clock=clock)
    if scheme in ("postgres", "postgresql"):
        try:
            from .postgres import PostgresBackend
        except ImportError as exc:
            raise ConfigurationError(
                "the backend URL (OFFLOAD_URL, --url or url=) names PostgreSQL but psycopg is not "
                "installed: "
                "pip install 'offload[postgres]'"
            ) from exc
        return PostgresBackend.from_url(
            url,
            clock=clock,
            connect_timeout_s=connect_timeout_s,
            retry_deadline_s=retry_deadline_s,
        )
    if scheme in ("redis", "rediss"):
        try:
            from .redis import RedisBackend
        except ImportError as exc:
            if not (exc.name or "").startswith("redis"):
                raise
            raise ConfigurationError(
                "the backend URL (OFFLOAD_URL, --url or url=) names Redis but the redis package "
                "is not installed: "
                "pip install 'offload[redis]'"
            ) from exc
        return RedisBackend.from_url(
            url,
            clock=clock,
            connect_timeout_s=connect_timeout_s,
            retry_deadline_s=retry_deadline_s,
        )
    if scheme == "sqs":
        try:
            from .sqs import SQSBackend
        except ImportError as exc:
            raise ConfigurationError(
                "the backend URL (OFFLOAD_URL, --url or url=) names SQS but aioboto3 or psycopg "
                "is not installed: "
                "pip install 'offload[aws,postgres]'"
            ) from exc
        sqs = SQSBackend.from_url(
            url,
            clock=clock,
            connect_timeout_s=connect_timeout_s,
            retry_deadline_s=retry_deadline_s,
        )
        return cast(Backend, sqs)  # the store's methods reach it through __getattr__
    raise ConfigurationError(
        f"unsupported backend URL scheme {scheme!r} (OFFLOAD_URL or --url); "
        "expected sqlite://, memory://, postgresql://, redis://, rediss:// or sqs://"
    )
