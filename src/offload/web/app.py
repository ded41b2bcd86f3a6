"""create_app: the FastAPI application, its lifespan, error handlers and signed file links."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, Response

from .._links import signing_key as signing_key  # re-exported: importers predate _links
from .._signing import check_signed
from ..app import App
from ..errors import BackendError, ConfigurationError, OffloadError
from ..settings import Settings
from ..stores.blobs import blob_path, content_type_of
from .auth import TokenAuth
from .events import Hub
from .feeds import router as feeds_router
from .limits import BodyLimitMiddleware
from .present import Presenter
from .problems import JSONResponse, Problem, problem
from .routes import router

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


def _install_error_handlers(api: FastAPI) -> None:
    @api.exception_handler(Problem)
    async def on_problem(request: Request, exc: Problem) -> Response:
        return exc.response(instance=request.url.path)

    @api.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
            for e in exc.errors()
        ]
        return problem(
            422,
            "the request is not valid",
            slug="invalid-request",
            instance=request.url.path,
            errors=errors,
        )

    @api.exception_handler(HTTPException)
    async def on_http(request: Request, exc: HTTPException) -> Response:
        return problem(
            exc.status_code,
            str(exc.detail),
            instance=request.url.path,
            headers=getattr(exc, "headers", None),
        )

    @api.exception_handler(BackendError)
    async def on_backend(request: Request, exc: BackendError) -> Response:
        log.error("backend error: %s", exc, extra={"action": "backend_error"})
        return problem(
            503,
            "the job backend is unavailable; try again shortly",
            slug="backend-unavailable",
            instance=request.url.path,
            headers={"Retry-After": "5"},
        )

    @api.exception_handler(OffloadError)
    async def on_offload(request: Request, exc: OffloadError) -> Response:
        return problem(400, str(exc), instance=request.url.path)

    @api.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", extra={"action": "web_error"})
        return problem(500, "internal error", instance=request.url.path)


def create_app(app: App, settings: Settings | None = None) -> FastAPI:
    """The web tier of `app`: the /v1 API, health checks and signed file downloads.

    The returned ASGI app opens the backend in its lifespan; mount it in your own app or
    serve it with `offload web`. It never imports handler modules.
    """
    if settings is not None:
        app.configure(settings)
    settings = app.settings

    @contextlib.asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        await app.open()
        hub = Hub(app, app.last_seq)
        await hub.start()
        api.state.hub = hub
        try:
            yield
        finally:
            await hub.stop()
            await app.close()

    api = FastAPI(
        title=f"offload: {app.name}",
        version="1",
        lifespan=lifespan,
        default_response_class=JSONResponse,
        docs_url="/docs",
        redoc_url=None,
    )
    api.state.offload = app
    api.state.auth = TokenAuth(settings)
    secret = signing_key(settings)
    api.state.present = Presenter(
        secret, settings.link_ttl_s, tracebacks=settings.expose_tracebacks
    )
    api.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    _install_error_handlers(api)
    api.include_router(router)
    api.include_router(feeds_router)

    @api.get("/healthz")
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @api.get("/readyz")
    async def readyz() -> Response:
        try:
            await app.ping()
        except (BackendError, ConfigurationError) as exc:
            return problem(503, f"backend unreachable: {exc}", slug="not-ready")
        return JSONResponse({"status": "ready"})

    @api.get("/files/{key:path}")
    async def files(key: str, expires: str = "", signature: str = "") -> Response:
        """A blob, for holders of a signed, unexpired link (no bearer token needed)."""
        try:
            path = blob_path(key)
        except ValueError:
            raise Problem(404, "no such file", slug="file-not-found") from None
        if not check_signed(secret, path, expires, signature, time.time()):
            raise Problem(403, "the link is invalid or has expired", slug="bad-signature")
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
                headers={
                    "Cache-Control": "private",
                    "Content-Disposition": f'attachment; filename="{name}"',
                },
            )
        if not local.is_file():
            raise Problem(404, "no such file", slug="file-not-found")
        return FileResponse(
            local,
            media_type=content_type_of(key),
            filename=local.name,
            headers={"Cache-Control": "private"},
        )

    return api
