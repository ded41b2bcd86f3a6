"""The access log of `offload web --access-log`: a line per request once it is answered.

Each line names the client, the method, the path (never the query string: a WebSocket ticket,
a signed link's signature or a webhook's secret may travel there), the status, how long the
answer took and the principal who asked. An event stream's line comes when the stream ends.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import tracing
from .auth import _PRINCIPAL, TICKET_PRINCIPAL

log = logging.getLogger("offload.access")

#: The status logged for a WebSocket: accepted, or closed before it was.
WS_ACCEPTED, WS_REFUSED = 101, 403


class AccessLog:
    """ASGI middleware: log each HTTP request and WebSocket handshake at INFO on
    `offload.access`, with its fields as the record's extras (`method`, `path`, `status`,
    `duration_ms`, `principal`, `client`) for a structured formatter."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0  # no answer: the client went away first, or the app raised

        async def sending(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
            elif kind == "websocket.accept":
                status = WS_ACCEPTED
            elif kind == "websocket.close" and not status:
                status = WS_REFUSED
            elif kind == "websocket.http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            _record(scope, status, (time.perf_counter() - started) * 1000)


def _shown(raw: bytes) -> str:
    """A request's path as it was sent, fit for a log line: each byte that is no printable
    ASCII (a line break, an escape sequence) and each `"` as its %XX, so that a path cannot
    forge a line or a field (the path as decoded would print `%0A` as a line break)."""
    return "".join(chr(b) if 0x20 < b < 0x7F and b != 0x22 else f"%{b:02X}" for b in raw)


def _record(scope: Scope, status: int, duration_ms: float) -> None:
    client = scope.get("client")
    host = f"{client[0]}:{client[1]}" if client else "-"
    method = scope.get("method", "WS") if scope["type"] == "http" else "WS"
    path = _shown(scope.get("raw_path") or scope.get("path", "").encode("utf-8"))
    state = scope.get("state", {})
    principal = state.get(_PRINCIPAL) or state.get(TICKET_PRINCIPAL)
    who = principal if isinstance(principal, str) else "-"
    log.info(
        '%s "%s %s" %d %.1f ms %s',
        host,
        method,
        path,
        status,
        duration_ms,
        who,
        extra={
            "action": "http_request",
            "client": host,
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round(duration_ms, 3),
            "principal": who,
        },
    )


class RedactedQuery:
    """ASGI middleware: keep the secrets of a request's query (a ticket, a signature, a
    `callback_url`) out of its tracing span as the access log keeps them out of its lines
    (`tracing.redact_query`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("query_string"):
            tracing.redact_query(scope["query_string"])
        await self.app(scope, receive, send)
