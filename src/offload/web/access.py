"""What each request was answered: the access log of `offload web --access-log` (a line per
request once it is answered) and the web tier's request metrics (`HttpMetrics`).

Each line names the client, the method, the path (never the query string: a WebSocket ticket,
a signed link's signature or a webhook's secret may travel there), the status, how long the
answer took and the principal who asked. An event stream's line comes when the stream ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import tracing
from ..metrics import HTTP_METHODS, UNMATCHED
from .auth import _PRINCIPAL, TICKET_PRINCIPAL
from .problems import out_of_resources

if TYPE_CHECKING:
    from ..app import App

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
        answer = _Answer(send)
        try:
            await self.app(scope, receive, answer)
        finally:
            _record(scope, answer.status, (time.perf_counter() - started) * 1000)


class HttpMetrics:
    """ASGI middleware: count each request and time its answer in the app's metrics
    (`offload_http_requests_total`, `offload_http_request_duration_seconds`), labelled by its
    route's template, never its path (`/v1/jobs/{id}`, not a series per job). A request that
    raised is counted as the `500` it is answered with.

    Args:
        app: the ASGI app it wraps.
        offload: the App whose metrics count (read at each request: it may be swapped).
        routes: every route of the web tier, read at the first request: a plain route's
            request names its endpoint, not its route, which gives the template.
    """

    def __init__(
        self, app: ASGIApp, offload: App, routes: Callable[[], Iterable[BaseRoute]]
    ) -> None:
        self.app = app
        self.offload = offload
        self.routes = routes
        self._paths: dict[Any, str] | None = None  # endpoint → template, of plain routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        entered = scope.get("route")  # mounted: the mount's route in the app around this one
        started = time.perf_counter()
        answer = _Answer(send)
        try:
            await self.app(scope, receive, answer)
        except Exception as exc:
            if not answer.status:  # as the handler outside answers it (`on_crash`)
                answer.status = 503 if out_of_resources(exc) else 500
            raise
        finally:
            route = scope.get("route")
            if route is not entered:
                template = getattr(route, "path", UNMATCHED)
            else:
                template = self._path_of(scope.get("endpoint"))
            method = "WS" if scope["type"] == "websocket" else _http_method(scope["method"])
            took = time.perf_counter() - started
            self.offload.metrics.answered(method, template, answer.status, took)

    def _path_of(self, endpoint: Any) -> str:
        """The template of the plain route `endpoint` answers at (`UNMATCHED`: none)."""
        if endpoint is None:
            return UNMATCHED
        if self._paths is None:
            self._paths = {}
            for route in self.routes():
                path = getattr(route, "path", None)
                # a route's endpoint; a mount's app (its requests name that as endpoint)
                answers = getattr(route, "endpoint", None) or getattr(route, "app", None)
                if path is not None and answers is not None:
                    self._paths.setdefault(answers, path)
        return self._paths.get(endpoint, UNMATCHED)


def _http_method(method: str) -> str:
    """An HTTP request's method as a label: one of HTTP's own, else `other` (so a request
    whose method is `WS` is not counted as a WebSocket)."""
    return method if method in HTTP_METHODS else "other"


class _Answer:
    """A request's `send`, noting the status it answered with (0: none yet)."""

    __slots__ = ("send", "status")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status = 0  # no answer: the client went away first, or the app raised

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
        elif kind == "websocket.accept":
            self.status = WS_ACCEPTED
        elif kind == "websocket.close" and not self.status:
            self.status = WS_REFUSED
        elif kind == "websocket.http.response.start":
            self.status = message["status"]
        await self.send(message)


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
