"""create_app: the FastAPI app, its error handlers, health checks and signed file links."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from .. import tracing
from .._links import JOBS_PATH, key_fallbacks
from .._links import signing_key as signing_key  # re-exported: importers predate _links
from .._signing import check_signed
from ..app import App
from ..errors import (
    BackendError,
    ConfigurationError,
    StorageFull,
)
from ..metrics import Metrics, available
from ..settings import Settings
from ..stores.blobs import blob_path, content_type_of, url_of
from .access import HttpMetrics, RedactedQuery
from .auth import Auth, AuthHook, caller_is_admin
from .dashboard import router as dashboard_router
from .docs import install_docs
from .feeds import router as feeds_router
from .handlers import problem_details, storage_full
from .kinds import router as kinds_router
from .limits import BodyLimitMiddleware
from .models import Health, Readiness
from .origins import CorsMiddleware, LoopbackHostMiddleware, refused_preflight
from .present import Presenter
from .problems import (
    BACKEND_RETRY_AFTER,
    STORAGE_FULL_DETAIL,
    JSONResponse,
    Problem,
    http_only,
    problem,
)
from .responses import STRING, header, problems
from .routes import allowed_methods, operators_only, router
from .runtime import lifespan, runtime_of
from .scrape import may_scrape
from .scrape import metrics as scrape_metrics
from .scrape import router as scrape_router
from .submit import submit

log = logging.getLogger("offload.web")


def check_bind(host: str, settings: Settings) -> None:
    """Development mode (no API tokens) serves loopback only.

    Raises:
        ConfigurationError: a non-loopback host without OFFLOAD_API_TOKENS.
    """
    if not settings.dev_mode:
        return
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigurationError(
            f"refusing to serve on {host!r} without authentication: set OFFLOAD_API_TOKENS "
            "(token=principal,…) or bind to 127.0.0.1"
        )


#: An operation that asks no credentials (in a document that declares some).
_PUBLIC: dict[str, Any] = {"security": []}
#: Longest GET /readyz waits for the backend's answer (seconds): a probe's own timeout is
#: short, and a stalled backend's retries run to their deadline (10 s).
READY_WITHIN_S = 3.0
#: What GET /readyz answers besides ready.
_NOT_READY = problems(
    500,
    503,
    meaning={503: "The backend is unreachable (`not-ready`) or its storage is full"},
    types={503: {"not-ready": "backend unreachable", "storage-full": STORAGE_FULL_DETAIL}},
)
#: What GET /files/{key} answers: the file, as the type its name tells.
_FILE_ANSWERS: dict[int | str, Any] = {
    200: {
        "description": "The file",
        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
    },
    303: {
        "description": "The blob store serves its own links (S3): its presigned, expiring URL",
        "headers": {"Location": header("the presigned URL", STRING)},
    },
    206: {
        "description": "The part of the file a `Range` asked for (a Range it cannot read is "
        "ignored: the whole file)",
        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
        "headers": {
            "Content-Range": header("the part sent: `bytes <first>-<last>/<size>`", STRING)
        },
    },
    **problems(
        403,
        404,
        416,
        500,
        meaning={403: "The link is invalid or has expired", 404: "No such file"},
    ),
}


class _Download(FileResponse):
    """A file, as `FileResponse` sends it, except where it cannot serve the `Range` asked
    for: a Range it cannot read is ignored (the whole file, as RFC 9110 lets a server
    answer), one past the file's end is the API's 416 problem document, where both were
    plain text, and the parts of a multi-part Range that start past the end are left out
    when another part can be sent (RFC 9110, 14.1.1), where any one made the whole a 416."""

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        unit, equals, ranges = http_range.partition("=")
        if equals and "," in ranges:
            parts = [(part, _past_the_end(part, file_size)) for part in ranges.split(",")]
            within = [part for part, past in parts if past is False]
            if within and any(past for _, past in parts):
                http_range = f"{unit}={','.join(within)}"
        return super()._parse_range_header(http_range, file_size)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not any(name == b"range" for name, _ in scope.get("headers", ())):
            return await super().__call__(scope, receive, send)
        refused: list[Message] = []

        async def unless_refused(message: Message) -> None:
            start = message["type"] == "http.response.start"
            if refused or (start and message["status"] in (400, 416)):
                refused.append(message)  # its plain-text answer is held back
            else:
                await send(message)

        await super().__call__(scope, receive, unless_refused)
        if not refused:
            return None
        if refused[0]["status"] == 400:
            headers = [(k, v) for k, v in scope["headers"] if k != b"range"]
            return await super().__call__({**scope, "headers": headers}, receive, send)
        sent = dict(refused[0].get("headers", ()))
        answer = problem(
            416,
            "the range asked for is not within the file",
            slug="range-not-satisfiable",
            headers={"Content-Range": sent.get(b"content-range", b"").decode("latin-1")},
            instance=scope.get("path"),
        )
        return await answer(scope, receive, send)


def _past_the_end(part: str, size: int) -> bool | None:
    """Whether one range of a `Range` header (`first-last`, `first-` or `-suffix`) starts
    at or past the end of a file of `size` bytes, so that it cannot be satisfied; None for
    one that cannot be read (ignored, as a bad header is)."""
    first, dash, last = part.strip().partition("-")
    if not dash:
        return None
    try:
        return int(first) >= size if first.strip() else int(last) == 0
    except ValueError:
        return None


async def _serve_blob(app: App, key: str, ttl: timedelta) -> Response:
    """The blob behind a valid signed link: a redirect to the store's own link (S3,
    presigned for the rest of `ttl`), the local file, or else its bytes relayed."""
    own = url_of(app.blobs, key, ttl)
    if own is not None:  # the store serves its own links (S3): send the caller there
        return RedirectResponse(own, status_code=303, headers={"Cache-Control": "private"})
    local = app.blobs.path_of(key)
    if local is None:  # a store off this filesystem: relay the bytes
        try:
            data = await app.blobs.get(key)
        except FileNotFoundError:
            raise Problem(404, "no such file", slug="file-not-found") from None
        name = key.rsplit("/", 1)[-1]
        return Response(
            data,
            media_type=content_type_of(key),
            headers={**DOWNLOAD_HEADERS, "Content-Disposition": f'attachment; filename="{name}"'},
        )
    if not local.is_file():
        raise Problem(404, "no such file", slug="file-not-found")
    return _Download(
        local,
        media_type=content_type_of(key),
        filename=local.name,
        headers=DOWNLOAD_HEADERS,
    )


#: A download's headers: for the caller's cache only; its type as declared, never sniffed
#: (a text file that looks like HTML is not run as a page).
DOWNLOAD_HEADERS = {"Cache-Control": "private", "X-Content-Type-Options": "nosniff"}


class _Readiness:
    """Why readiness last found the backend unreachable: logged once for each new reason,
    not at every probe of a monitor polling meanwhile."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def unready(self, exc: Exception) -> None:
        reason = str(exc)
        level = logging.DEBUG if reason == self.reason else logging.WARNING
        log.log(level, "not ready: %s", reason, extra={"action": "not_ready"})
        self.reason = reason

    def ready(self) -> None:
        if self.reason is not None:
            self.reason = None
            log.info("ready again", extra={"action": "ready"})


def _answer_allow(api: FastAPI, routers: tuple[APIRouter, ...]) -> None:
    """A 405 names the methods the path answers (`Allow`), as the routes say (`routers`:
    those included, whose routes `api.routes` does not list one by one); at an operators'
    route it is the 404 of a path that does not exist, to anyone but an operator."""

    @api.exception_handler(HTTPException)
    async def on_http(request: Request, exc: HTTPException) -> Response:
        headers = getattr(exc, "headers", None)
        if exc.status_code in (404, 405) and (refused := refused_preflight(request)) is not None:
            return refused
        if exc.status_code == 405:
            routes = (*(r for included in routers for r in included.routes), *api.routes)
            found = operators_only(request, routes)
            try:
                if found and not await _operator(request, found):
                    return problem(404, "Not Found", instance=request.url.path)
            except HTTPException as refused:  # the auth hook's own answer (401, its challenge)
                exc, headers = refused, refused.headers
            else:
                allow = ", ".join(allowed_methods(request, routes))
                headers = {**(headers or {}), "Allow": allow}
        return problem(exc.status_code, str(exc.detail), instance=request.url.path, headers=headers)


async def _operator(request: Request, routes: list[Route]) -> bool:
    """Whether the caller may know of these operators' routes: the metrics route's holders
    of the metrics token, and admins (as the routes themselves let in)."""
    if any(getattr(route, "endpoint", None) is scrape_metrics for route in routes):
        return await may_scrape(request)
    return await caller_is_admin(request)


#: Seconds after which readiness probes stop waiting for a ping still under way and send
#: another (the backend's retry deadline, 10 s by default, and a call's own bounds, pass
#: well within it).
PING_GIVEN_UP_S = 60.0


class _Pings:
    """`App.ping` for readiness probes: one at a time, shared by the probes that come while
    it runs, and waited for at most a bound (a stalled backend's ping goes on retrying to
    its deadline, 10 s by default, past a probe's own timeout)."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._ping: asyncio.Future[None] | None = None
        self._began = 0.0

    async def answered(self, within_s: float) -> None:
        """Return once the backend answered a ping. A ping still waiting `PING_GIVEN_UP_S`
        on is cancelled (its connection, on PostgreSQL, closed) and a new one sent: one
        stuck on a connection whose peer never answers held every probe's answer at 503
        for good, with the server reachable again on new connections.

        Raises:
            BackendError: it failed, or did not answer within `within_s`.
        """
        now = asyncio.get_running_loop().time()
        ping = self._ping
        stale = ping is not None and not ping.done() and now - self._began > PING_GIVEN_UP_S
        if ping is None or ping.done() or stale:
            if stale:
                ping.cancel()  # type: ignore[union-attr]  # (not None when stale)
            ping = self._ping = asyncio.ensure_future(self.app.ping())
            ping.add_done_callback(_taken)
            self._began = now
        try:
            await asyncio.wait_for(asyncio.shield(ping), within_s)
        except TimeoutError:
            raise BackendError(f"no answer to a ping within {within_s:g}s") from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the probe's own
            # the ping it shared was given up on (a later probe's, as above)
            raise BackendError("no answer to a ping, given up on") from None


def _taken(ping: asyncio.Future[None]) -> None:
    """Take a ping's error, which no probe may have waited for (it ran past their wait)."""
    if not ping.cancelled():
        ping.exception()


def _guard(api: FastAPI, auth: Auth, settings: Settings) -> None:
    """The middleware around every route: a bounded body; in development mode, loopback
    names only (DNS rebinding); the CORS of the origins OFFLOAD_CORS_ORIGINS names; where
    OpenTelemetry's API is installed, the query's secrets out of the request's span."""
    api.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if tracing.API:
        api.add_middleware(RedactedQuery)
    if auth.dev_mode:
        api.add_middleware(LoopbackHostMiddleware)
    if auth.cors_origins:  # outermost: a preflight is answered before anything else
        api.add_middleware(CorsMiddleware, origins=auth.cors_origins)


def create_app(app: App, *, auth: AuthHook | None = None) -> FastAPI:
    """The web tier of `app`: the /v1 API, health checks, signed file downloads, docs and
    the operators' dashboard (/dashboard, admins only).

    Serve it alone (`offload web`) or mount it at any path of your own ASGI app: links,
    `Location` headers and signed file URLs follow the mount path. Its lifespan opens the
    backend; where no lifespan runs (a mounted app), it opens on the first request and
    closes when the event loop ends, or enter `offload.web.lifespan(app)` in your app's
    lifespan. It never imports handler modules.

    Args:
        app: the App whose kinds it serves.
        auth: `(request) -> principal | None`, sync or async: who is calling (None: 401).
            Without one, the bearer tokens of OFFLOAD_API_TOKENS decide.
    """
    settings = app.settings
    if not app.metrics.enabled and available():
        app.metrics = Metrics()  # counted from here on, served at GET /metrics

    api = FastAPI(
        title=f"offload: {app.name}",
        version="1",
        lifespan=lambda _api: lifespan(app),
        default_response_class=JSONResponse,
        # A path with a slash too many is a 404, not a redirect built from the Host header
        # that tells an operators' route from a path that does not exist.
        redirect_slashes=False,
        openapi_url=None,  # served by install_docs: offline, and behind the API's auth
        docs_url=None,
        redoc_url=None,
    )
    api.router.default = http_only(api.router.default)  # a handshake: the 404 problem
    api.state.offload = app
    api.state.runtime = runtime_of(app)
    api.state.auth = Auth(auth, settings)
    secret = signing_key(settings)
    api.state.present = Presenter(
        secret,
        settings.link_ttl_s,
        tracebacks=settings.expose_tracebacks,
        blobs=app.blobs,
        fallbacks=key_fallbacks(settings),
    )
    keys = api.state.present.keys
    _guard(api, api.state.auth, settings)
    problem_details(api)
    included = (router, feeds_router, kinds_router, scrape_router, dashboard_router)
    _answer_allow(api, included)
    # The hot path: a plain route (submit.py says why), first in line.
    api.add_route(f"{JOBS_PATH}/{{kind}}", submit, ["POST"], "submit", include_in_schema=False)
    for each in included:  # /dashboard: admins only, not in the schema
        api.include_router(each)
    install_docs(api)
    if app.metrics.enabled:  # outermost of offload's own: a refused preflight counts too
        routes = lambda: (*api.routes, *(r for each in included for r in each.routes))  # noqa: E731
        api.add_middleware(HttpMetrics, offload=app, routes=routes)

    @api.get("/healthz", response_model=Health, openapi_extra=_PUBLIC)
    async def healthz() -> Response:
        """Liveness: the process serves."""
        return JSONResponse({"status": "ok"})

    readiness = _Readiness()

    pings = _Pings(app)

    @api.get("/readyz", response_model=Readiness, responses=_NOT_READY, openapi_extra=_PUBLIC)
    async def readyz() -> Response:
        """Readiness: the process serves, its backend answers (within `READY_WITHIN_S`), and
        its storage has room (after a write failed for want of space, until a small write
        fits again)."""
        try:
            await api.state.runtime.ensure()
            await pings.answered(READY_WITHIN_S)
        except StorageFull:
            return storage_full()
        except (BackendError, ConfigurationError) as exc:
            readiness.unready(exc)  # the reason names the backend's address: logged only
            return problem(
                503, "the job backend is unreachable", slug="not-ready", headers=BACKEND_RETRY_AFTER
            )
        readiness.ready()
        return JSONResponse({"status": "ready"})

    # HEAD too, as uptime monitors ask (the same answer, its body left out by the server).
    for path, probe, model, answers in (
        ("/healthz", healthz, Health, None),
        ("/readyz", readyz, Readiness, _NOT_READY),
    ):
        api.add_api_route(
            path,
            probe,
            methods=["HEAD"],
            response_model=model,
            responses=answers,
            openapi_extra=_PUBLIC,
            name=f"{probe.__name__}_head",
        )

    @api.get(
        "/files/{key:path}",
        response_class=Response,
        responses=_FILE_ANSWERS,
        openapi_extra=_PUBLIC,
    )
    async def files(key: str, expires: str = "", signature: str = "") -> Response:
        """A blob, for holders of a signed, unexpired link (no bearer token needed)."""
        try:
            path = blob_path(key)
        except ValueError:
            raise Problem(404, "no such file", slug="file-not-found") from None
        now = time.time()
        if not check_signed(keys, path, expires, signature, now):
            raise Problem(403, "the link is invalid or has expired", slug="bad-signature")
        ttl = timedelta(seconds=max(1.0, float(expires) - now))
        return await _serve_blob(app, key, ttl)

    api.add_api_route(  # HEAD too: a download manager asks for the size first
        "/files/{key:path}",
        files,
        methods=["HEAD"],
        response_class=Response,
        responses=_FILE_ANSWERS,
        openapi_extra=_PUBLIC,
        name="files_head",
    )

    return api
