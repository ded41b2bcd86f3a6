"""A worker's metrics endpoint (`offload worker --metrics-port`): the Prometheus text at
`GET /metrics` from a thread's HTTP server, every refusal a problem document like every
other HTTP error of offload, and no `Server` header (the standard library's names the exact
Python version, which tells a prober which of its flaws to try)."""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, make_server

import orjson

from ._hosts import loopback_bind, loopback_host
from ._problems import PROBLEM_MEDIA_TYPE, problem_document
from .errors import ConfigurationError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger("offload.metrics")

#: The one path that answers the metrics: the web tier's, and Prometheus's default.
METRICS_PATH = "/metrics"
#: The method it answers (a 405 names it).
METRICS_METHOD = "GET"
#: A worker's liveness check: `200` while its `health` says nothing is wrong, else `503`.
HEALTH_PATH = "/healthz"
#: What a health check is: why the process is not healthy, or None.
Health = Callable[[], "str | None"]
#: The detail of the 421 to a request sent to a name that is not loopback.
NOT_LOOPBACK = (
    "this endpoint answers loopback names only: a page whose name was rebound to "
    "127.0.0.1 would otherwise read it (bind --metrics-host elsewhere to serve other names)"
)
#: The HTTP server's own refusals, of requests it cannot parse (the endpoint never sees
#: them): their details and slugs, fixed (the parser's messages quote the request).
_SERVER_REFUSALS = {
    400: ("the request is not valid HTTP/1.1", "malformed-request"),
    414: ("the request line is too long", "request-head-too-large"),
    431: ("the request's header fields are too many or too long", "request-head-too-large"),
    505: ("the request's HTTP version is not supported", None),
}

StartResponse = Callable[..., Any]
#: Seconds a connection may take to send its request (and to read the answer), as the web
#: tier's `HEAD_TIMEOUT_S`: then it is closed. Without it, a connection that sent half a
#: request held a thread of the worker's process, and a file, for as long as it stayed open.
REQUEST_TIMEOUT_S = 10.0


def serve_registry(
    registry: CollectorRegistry, port: int, host: str, health: Health | None = None
) -> Callable[[], None]:
    """Serve `registry` on `host:port` from a thread, and `health` at `HEALTH_PATH` where
    given; returns the function that stops it.

    Raises:
        ConfigurationError: the port cannot be bound.
    """
    from prometheus_client.exposition import ThreadingWSGIServer

    app = _endpoint(registry, loopback_only=loopback_bind(host), health=health)
    try:
        # The address family of what `host` resolves to, as prometheus-client's own server
        # picks it (a name may stand for an IPv6 address alone).
        family, *_, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]

        class Server(ThreadingWSGIServer):
            address_family = family

        server = make_server(str(address[0]), port, app, Server, handler_class=_RequestHandler)
    except OSError as exc:
        raise ConfigurationError(f"cannot serve metrics on {host}:{port}: {exc}") from None
    thread = threading.Thread(target=server.serve_forever, name="offload-metrics", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join()

    return stop


def _endpoint(
    registry: CollectorRegistry, *, loopback_only: bool, health: Health | None = None
) -> Callable[..., Any]:
    """The WSGI app of the endpoint: a loopback name (`loopback_only`), then the path, then
    the method, else a problem document (421, 404, 405); then prometheus-client's answer,
    or the health check's."""
    from prometheus_client import make_wsgi_app

    # What each path serves, and the methods it answers (a health check: HEAD too, as
    # uptime monitors ask).
    paths: dict[str, tuple[Callable[..., Iterable[bytes]], tuple[str, ...]]] = {
        METRICS_PATH: (make_wsgi_app(registry), (METRICS_METHOD,))
    }
    if health is not None:
        paths[HEALTH_PATH] = (functools.partial(_health, health), ("GET", "HEAD"))

    def answer(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        host = environ.get("HTTP_HOST")
        path = environ.get("PATH_INFO", "")
        if loopback_only and host is not None and not loopback_host(host):
            return _refuse(start_response, 421, NOT_LOOPBACK, slug="not-loopback-host", at=path)
        if path not in paths:
            return _refuse(start_response, 404, "Not Found", at=path)
        served, methods = paths[path]
        if environ["REQUEST_METHOD"] not in methods:
            allow = {"Allow": ", ".join(methods)}
            return _refuse(start_response, 405, "Method Not Allowed", at=path, headers=allow)
        return served(environ, start_response)

    def endpoint(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        body = answer(environ, start_response)
        return [] if environ["REQUEST_METHOD"] == "HEAD" else body  # wsgiref sends any body

    return endpoint


def _health(health: Health, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    """`200 {"status": "ok"}`, or the `503` problem document that says what is wrong."""
    fault = health()
    if fault is not None:
        at = environ.get("PATH_INFO")
        return _refuse(start_response, 503, fault, slug="unhealthy", at=at)
    body = b'{"status":"ok"}'
    head = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
    ]
    start_response("200 OK", head)
    return [body]


def _problem(status: int, detail: str, slug: str | None, at: str | None) -> bytes:
    """The problem document, its `instance` the path asked for (`at`), as the web tier's."""
    document = problem_document(status, detail, slug=slug)
    if at:
        document["instance"] = at
    return orjson.dumps(document)


def _refuse(
    start_response: StartResponse,
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    at: str | None = None,
    headers: dict[str, str] | None = None,
    exc_info: Any = None,
) -> list[bytes]:
    """Answer a problem document (no cache keeps it, as the web tier's)."""
    body = _problem(status, detail, slug, at)
    head = {
        "Content-Type": PROBLEM_MEDIA_TYPE,
        "Content-Length": str(len(body)),
        "Cache-Control": "no-store",
        **(headers or {}),
    }
    start_response(f"{status} {HTTPStatus(status).phrase}", list(head.items()), exc_info)
    return [body]


class _ServerHandler(ServerHandler):
    """wsgiref's handler of one request, without its `Server` header, and whose 500 (the
    metrics could not be read: a collector raised) is a problem document, logged."""

    server_software = ""  # no Server header (wsgiref's names the Python version)

    def error_output(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        at = environ.get("PATH_INFO")
        return _refuse(start_response, 500, "internal error", at=at, exc_info=sys.exc_info())

    def log_exception(self, exc_info: Any) -> None:
        if isinstance(exc_info[1], TimeoutError):  # a client too slow to read the answer
            return
        log.error("metrics endpoint error", exc_info=exc_info, extra={"action": "metrics_error"})


class _RequestHandler(WSGIRequestHandler):
    """wsgiref's request handler, with `_ServerHandler`, quiet, and whose refusals of a
    request it cannot parse are problem documents (its own are HTML pages that name the
    server and the Python version). A request that does not arrive within
    `REQUEST_TIMEOUT_S` has its connection closed."""

    def setup(self) -> None:
        super().setup()
        # The whole head within REQUEST_TIMEOUT_S, whatever each read takes (a timeout of
        # the socket bounds one read: a byte every few seconds held a thread for ever);
        # each read of the answer's, and of the head's, too.
        self.connection.settimeout(REQUEST_TIMEOUT_S)
        self._late = threading.Timer(REQUEST_TIMEOUT_S, self._head_late)
        self._late.daemon = True
        self._late.start()

    def _head_late(self) -> None:
        """The head has not all come in time: the connection is shut (its reads end)."""
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        self._late.cancel()
        super().finish()

    def handle(self) -> None:
        # wsgiref's `handle`, which names its ServerHandler class (the Server header) inline.
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(414)
                return
            if not self.parse_request():  # refused already (send_error)
                return
        except OSError:  # (its head too slow: shut, or timed out; nothing to answer)
            return
        self._late.cancel()  # (the head came whole)
        handler = _ServerHandler(
            self.rfile,
            self.wfile,  # type: ignore[arg-type]  # a socket's file (typeshed: BufferedIOBase)
            self.get_stderr(),
            self.get_environ(),
            multithread=False,
        )
        handler.request_handler = self  # type: ignore[attr-defined]  # wsgiref's, for its log
        handler.run(self.server.get_app())  # type: ignore[attr-defined]

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        detail, slug = _SERVER_REFUSALS.get(code, (HTTPStatus(code).description, None))
        body = _problem(code, detail, slug, None)  # no path: the request line may not parse
        self.close_connection = True
        self.send_response_only(code)  # send_response would add a Server header
        for name, value in (
            ("Date", self.date_time_string()),
            ("Content-Type", PROBLEM_MEDIA_TYPE),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("Connection", "close"),
        ):
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # the base class names it
        pass  # a scrape every few seconds is no news
