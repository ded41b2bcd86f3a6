"""Requests a browser could forge: development mode refuses cross-site writes.

Without API tokens every caller is the principal `local`, with no credential a browser
would have to hold: any page the developer visits could post to the loopback server. A
browser marks what a page sends: `Origin` (every cross-origin request, every POST) and
`Sec-Fetch-Site`; a request with neither comes from no browser page (curl, scripts,
server-side clients). With API tokens a forged request lacks the bearer token, which a
browser never adds on its own, so no origin check is needed there.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .._hosts import loopback_host
from ..errors import ConfigurationError
from .problems import Problem, problem

if TYPE_CHECKING:
    from .auth import Auth

#: Methods that change state: refused cross-site in development mode.
STATE_CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: `Sec-Fetch-Site` values of requests made by a page of the same origin, or by the user.
OWN_FETCH_SITES = frozenset({"same-origin", "none"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_WEB_SCHEMES = {"ws": "http", "wss": "https"}
#: The headers `cross_site_reason` reads, with the `Host` the request came to.
_SITE_HEADERS = frozenset({b"origin", b"sec-fetch-site", b"host"})
_HOST = frozenset({b"host"})


def _mode(auth: Auth) -> str:
    """The mode whose rule refused a cross-site request, as the refusal says it."""
    if auth.hook is not None:
        return "behind an auth hook"
    return "with API tokens" if auth.required else "without API tokens (development mode)"


def first_headers(scope: Scope, names: frozenset[bytes]) -> dict[str, str]:
    """The first value the request sent of each header in `names` (lower case, as ASGI
    gives names), in one pass over its headers: a request's `headers.get` builds its
    headers and scans them again for each name, and raises inside for every one not sent.
    """
    found: dict[str, str] = {}
    for name, value in scope["headers"]:
        if name in names:
            found.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return found


def _origin(scheme: str, netloc: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin, default port filled in; None if malformed."""
    scheme = _WEB_SCHEMES.get(scheme.lower(), scheme.lower())
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None
    return scheme, parts.hostname.lower(), port


def allowed_origin(text: str) -> tuple[str, str, int]:
    """An origin of OFFLOAD_CORS_ORIGINS, as (scheme, host, port) to compare with a request's
    `Origin`.

    Raises:
        ConfigurationError: not `http(s)://host[:port]` (a path, a wildcard, a user, or
            another scheme: an allow-list names the pages it lets in, exactly).
    """
    parts = urlsplit(text.strip())
    origin = _origin(parts.scheme, parts.netloc) if "://" in text else None
    if (
        origin is None
        or origin[0] not in _DEFAULT_PORTS
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
        or "*" in text
    ):
        raise ConfigurationError(
            f"OFFLOAD_CORS_ORIGINS: {text.strip()[:100]!r} is no origin; name each page's "
            "origin as scheme://host[:port] (https://app.example.com)"
        )
    return origin


def sent_origin(headers: Mapping[str, str]) -> tuple[str, str, int] | None:
    """The request's `Origin`, as `allowed_origin` gives one; None when not sent (or not
    one: `null`, a path)."""
    origin = headers.get("origin")
    if origin is None or "://" not in origin:
        return None
    parts = urlsplit(origin)
    return None if parts.path else _origin(parts.scheme, parts.netloc)


def cross_site_reason(headers: Mapping[str, str], scheme: str, host: str) -> str | None:
    """Why a request is cross-site, or None when it is not (or comes from no browser).

    Args:
        headers: the request's headers (lower-case names).
        scheme: the scheme the request came in on (http, https, ws, wss).
        host: its `Host` header.
    """
    origin = headers.get("origin")
    if origin is not None:
        sent = sent_origin(headers)
        if sent is None or sent != _origin(scheme, host):
            return f"a request from another origin ({origin[:100]})"
    site = headers.get("sec-fetch-site")
    if site is not None and site.lower() not in OWN_FETCH_SITES:
        return f"a {site[:20]} request"
    return None


def refuse_cross_site(conn: HTTPConnection) -> None:
    """In development mode, and behind an auth hook, refuse a state-changing request (or a
    WebSocket handshake) that a page of another site made. A FastAPI dependency of the /v1
    routers.

    Raises:
        Problem: 403 for a cross-site request.
    """
    check_same_site(conn, conn.app.state.auth)


def check_same_site(conn: HTTPConnection, auth: Auth) -> None:
    """`refuse_cross_site` with the authentication of a web tier given (a host's route
    that uses one mounted beside it).

    Raises:
        Problem: 403 for a cross-site request.
    """
    websocket = conn.scope["type"] == "websocket"
    if not websocket and conn.scope["method"] not in STATE_CHANGING_METHODS:
        return  # reads: the same-origin policy keeps their answers from other sites
    if auth.hook is None and auth.required and not websocket:
        return  # bearer tokens: a browser never adds one on its own
    # (A WebSocket is checked in every mode: no CORS applies to it, so a page of another
    # site holding a ticket, which travels in URLs, could read the stream.)
    # Development mode (no credential at all) and an auth hook (it may read a cookie of the
    # host's, which a browser sends along with a forged request) refuse them.
    # The scheme as `conn.url` gives it, without building the whole URL on every write.
    scheme = conn.scope.get("scheme", "http")
    sent = first_headers(conn.scope, _SITE_HEADERS)
    if auth.cors_origins and sent_origin(sent) in auth.cors_origins:
        return  # a page of an origin OFFLOAD_CORS_ORIGINS lets in
    why = cross_site_reason(sent, scheme, sent.get("host", ""))
    if why is not None:
        raise Problem(
            403,
            f"refused {why}: {_mode(auth)} only pages of this server (and of the origins "
            "OFFLOAD_CORS_ORIGINS names) and clients that are not browsers may change jobs "
            "or follow them",
            slug="cross-site-request",
        )


#: Why development mode answers loopback names only (the 421's detail).
DEV_MODE_HOSTS = (
    "without API tokens (development mode) it serves this machine alone; set "
    "OFFLOAD_API_TOKENS to serve other names"
)


class LoopbackHostMiddleware:
    """Development mode answers only requests sent to a loopback name (`Host`).

    Its server listens on loopback, but a page of any site can reach it through a DNS name
    it rebinds to 127.0.0.1: to the browser that page and the server are then one origin,
    so the cross-site checks above pass and the page reads every job. Such a request
    carries the page's name in `Host`, which this refuses (`421`); a WebSocket handshake
    is closed before it is accepted. A request without `Host` (HTTP/1.0) comes from no
    browser and is served.
    """

    def __init__(self, app: ASGIApp, why: str = DEV_MODE_HOSTS) -> None:
        self.app = app
        self.why = why

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = first_headers(scope, _HOST).get("host")
            if host is not None and not loopback_host(host):
                refused = problem(
                    421,
                    f"this server answers loopback names only, not {host[:100]!r}: {self.why}",
                    slug="not-loopback-host",
                    instance=scope["path"],  # the mount path included (Starlette, uvicorn)
                )
                if scope["type"] == "http":
                    await refused(scope, receive, send)
                elif "websocket.http.response" in scope.get("extensions", {}):
                    await receive()  # the handshake (websocket.connect), then the refusal
                    await refused(scope, receive, send)  # as HTTP: the problem document
                else:
                    await send({"type": "websocket.close", "code": 1008})
                return
        await self.app(scope, receive, send)


async def cross_site_guard(conn: HTTPConnection) -> None:
    """`refuse_cross_site` as a route dependency, run on the event loop: FastAPI runs a
    plain function dependency in its thread pool, a thread hop on every request."""
    refuse_cross_site(conn)


#: What a page of an allowed origin may send and read (OFFLOAD_CORS_ORIGINS).
CORS_METHODS = ("GET", "HEAD", "POST", "DELETE")
#: (`Range` and `If-Range`: a download resumed from a page, as its signed link allows.)
CORS_REQUEST_HEADERS = (
    "Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID", "Range", "If-Range"
)  # fmt: skip
#: (`Content-Range`: which part a resumed download got; `WWW-Authenticate`: why a 401.)
CORS_EXPOSED_HEADERS = (
    "Location", "Retry-After", "Idempotent-Replayed", "Link", "Content-Disposition",
    "Content-Range", "Accept-Ranges", "ETag", "WWW-Authenticate",
)  # fmt: skip
#: Seconds a browser may keep a granted preflight.
CORS_MAX_AGE_S = 600


def _serialized(origin: tuple[str, str, int]) -> str:
    """An origin as a browser's `Origin` header writes it (no default port)."""
    scheme, host, port = origin
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" + ("" if _DEFAULT_PORTS[scheme] == port else f":{port}")


class CorsMiddleware(CORSMiddleware):
    """Starlette's CORS for the origins OFFLOAD_CORS_ORIGINS names (`allowed_origin`),
    credentials allowed (a host's auth hook may read a cookie), whose refusal of a preflight
    is a problem document (`403`, `cross-origin-refused`), not Starlette's plain text."""

    def __init__(self, app: ASGIApp, origins: Collection[tuple[str, str, int]]) -> None:
        super().__init__(
            app,
            allow_origins=sorted(_serialized(o) for o in origins),
            allow_methods=CORS_METHODS,
            allow_headers=CORS_REQUEST_HEADERS,
            allow_credentials=True,
            expose_headers=CORS_EXPOSED_HEADERS,
            max_age=CORS_MAX_AGE_S,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The API's routes alone: the dashboard and /metrics are operators' pages, which
        # no page of another site may read with an operator's cookie.
        if scope["type"] == "http" and _under_api(scope):
            await super().__call__(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def preflight_response(self, request_headers: Headers) -> Response:
        answer = super().preflight_response(request_headers)
        if answer.status_code < 400:
            return answer
        origin = request_headers.get("origin", "")[:100]
        why = bytes(answer.body).decode("latin-1", "replace").lower()
        hint = (
            "OFFLOAD_CORS_ORIGINS names the pages that may call"
            if "origin" in why
            else f"a page may send {', '.join(CORS_METHODS)} with the headers "
            f"{', '.join(CORS_REQUEST_HEADERS)}"
        )
        return problem(
            403,
            f"refused a preflight from {origin!r}: {why} ({hint})",
            slug="cross-origin-refused",
        )


def refused_preflight(request: Request) -> Response | None:
    """The answer to a browser's preflight for the API where OFFLOAD_CORS_ORIGINS names no
    origin (`CorsMiddleware` answers them where it does): the `403` it would give any
    origin it does not name, not the route's `405`. None for any other request."""
    headers = request.headers
    if (
        request.method != "OPTIONS"
        or "origin" not in headers
        or "access-control-request-method" not in headers
        or not _under_api(request.scope)
    ):
        return None
    origin = headers["origin"][:100]
    return problem(
        403,
        f"refused a preflight from {origin!r}: no page of another origin may call this API "
        "(OFFLOAD_CORS_ORIGINS names the pages that may call)",
        slug="cross-origin-refused",
    )


def _under_api(scope: Scope) -> bool:
    """Whether the request is for the API (`/v1/…`) or a signed download (`/files/…`),
    the mount path (`root_path`) aside."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path.startswith(("/v1/", "/files/"))
