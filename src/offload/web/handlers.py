"""problem_details: every error of a FastAPI app answered as an RFC 9457 problem document."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from ..errors import (
    BackendError,
    InvalidTransition,
    JobNotFound,
    OffloadError,
    StorageFull,
    UnknownKind,
)
from .problems import (
    STORAGE_FULL_DETAIL,
    STORAGE_FULL_RETRY_AFTER,
    Problem,
    backend_unavailable,
    out_of_resources,
    problem,
    server_overloaded,
)
from .responses import operations, under_problem_media_type

log = logging.getLogger("offload.web")

#: Errors about the job asked for that reach the error handler: their answers.
_JOB_ERRORS: tuple[tuple[type[OffloadError], int, str], ...] = (
    (JobNotFound, 404, "job-not-found"),
    (UnknownKind, 404, "unknown-kind"),
    (InvalidTransition, 409, "already-final"),
)


def storage_full(instance: str | None = None) -> Response:
    """The 503 while the backend's storage is full."""
    return problem(
        503,
        STORAGE_FULL_DETAIL,
        slug="storage-full",
        instance=instance,
        headers=STORAGE_FULL_RETRY_AFTER,
    )


def _as_problems(schema: dict[str, Any]) -> None:
    """Every answer of `schema` whose body is the `Problem` model: under the problem media
    type alone (with what the route's own media types held for it: examples)."""
    for operation in operations(schema):
        for response in operation.get("responses", {}).values():
            bodies = response.get("content", {}).values()
            if any(
                str(body.get("schema", {}).get("$ref", "")).endswith("/schemas/Problem")
                for body in bodies
            ):
                under_problem_media_type(response)


def _declared_as_problems(api: FastAPI) -> None:
    """`api`'s OpenAPI document with the answers of the `Problem` model (`problem_responses`)
    under `application/problem+json`, where FastAPI puts them under the route's media type
    (`application/json`, or `text/html` for an HTMLResponse route)."""
    make = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            _as_problems(make())
        return api.openapi_schema or make()

    api.openapi = openapi  # type: ignore[method-assign]


def problem_details(api: FastAPI) -> None:
    """Answer every error of `api` as offload's web tier does: an RFC 9457 problem document
    (`application/problem+json`). For your own app beside a mounted web tier, so that
    `Depends(offload_jobs)` refusals (401, 403), invalid requests (422), `HTTPException`s
    and offload's errors (an unreachable backend: 503) come as problem documents; nothing
    else of the app changes. No traceback reaches a client: a crash is a logged 500.
    The answers a route declares with `problem_responses` are problem documents in the
    app's OpenAPI document too (`application/problem+json`)."""
    _declared_as_problems(api)

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
        headers = getattr(exc, "headers", None)
        return problem(exc.status_code, str(exc.detail), instance=request.url.path, headers=headers)

    @api.exception_handler(BackendError)
    async def on_backend(request: Request, exc: BackendError) -> Response:
        write = request.method not in ("GET", "HEAD")
        return backend_unavailable(exc, write=write).response(instance=request.url.path)

    @api.exception_handler(StorageFull)
    async def on_storage_full(request: Request, exc: StorageFull) -> Response:
        log.error("storage full: %s", exc, extra={"action": "storage_full"})
        return storage_full(request.url.path)

    @api.exception_handler(OffloadError)
    async def on_offload(request: Request, exc: OffloadError) -> Response:
        for cls, status, slug in _JOB_ERRORS:
            if isinstance(exc, cls):
                return problem(status, str(exc), slug=slug, instance=request.url.path)
        # Anything else a route does not answer itself is a fault of the server (a setting
        # that cannot work, a bug), never the caller's: 500, logged.
        log.error("offload error: %s", exc, extra={"action": "web_error"}, exc_info=exc)
        return problem(500, "internal error", instance=request.url.path)

    @api.exception_handler(ClientDisconnect)
    async def on_gone(request: Request, exc: ClientDisconnect) -> Response:
        # The client went away before sending its whole body: nothing was done, nobody
        # reads the answer, and it is no fault of the server's (no error, no traceback).
        log.info(
            "%s %s: the client went away before sending the whole request",
            request.method,
            request.url.path,
            extra={"action": "client_gone"},
        )
        return problem(400, "the request ended before its body did", instance=request.url.path)

    @api.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> Response:
        if out_of_resources(exc):
            # A 503 to try again on, where a 500 (or a 422, orjson's refusal of a body it
            # had no memory to read) made clients give up on requests that were fine.
            where = f"{request.method} {request.url.path}"
            return server_overloaded(exc, where).response(instance=request.url.path)
        log.exception("unhandled error", extra={"action": "web_error"})
        return problem(500, "internal error", instance=request.url.path)
