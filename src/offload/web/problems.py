"""RFC 9457 problem details: every HTTP error of offload is one of these."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import HTTPException
from starlette import responses
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from .._problems import PROBLEM_MEDIA_TYPE, problem_document
from ..errors import BackendError, BlobStoreError

log = logging.getLogger("offload.web")

#: The headers of a 503 while the backend is unreachable: when to try again.
BACKEND_RETRY_AFTER = {"Retry-After": "5"}
#: The headers of a 503 while the backend's storage is full: space comes back when someone
#: frees it, not in seconds.
STORAGE_FULL_RETRY_AFTER = {"Retry-After": "30"}
#: The detail of that 503 (no path, no driver message: those are for the logs).
STORAGE_FULL_DETAIL = (
    "the job backend's storage is full: nothing new can be accepted until space is freed "
    "(accepted jobs are kept); try again later"
)
#: The detail of the 503 of a request the process ran short of memory or threads for.
SERVER_OVERLOADED_DETAIL = "the server is short of memory or threads; try again shortly"


#: The header of an answer no cache may keep.
NO_STORE = (b"cache-control", b"no-store")


class JSONResponse(responses.JSONResponse):
    """JSON encoded with orjson (fast, and datetimes come out as RFC 3339). A Starlette
    JSONResponse, so that FastAPI documents a route's `response_model` as its body."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)

    def init_headers(self, headers: Mapping[str, str] | None = None) -> None:
        """The given headers, and `Cache-Control: no-store` unless they say otherwise: an
        answer is one caller's (their jobs, signed links), for no cache to keep."""
        super().init_headers(headers)
        if headers is None or not any(k.lower() == "cache-control" for k in headers):
            self.raw_headers.append(NO_STORE)


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_MEDIA_TYPE


class Problem(HTTPException):
    """Raise inside a route to answer with a problem document. It is a FastAPI
    `HTTPException` (so a Starlette one), so an app without offload's handlers
    (`problem_details`) still answers with its status and headers, in that app's own error
    format, through its own handler of FastAPI's errors if it has one.

    Args:
        status: HTTP status code.
        detail: what went wrong, for a human.
        slug: the last segment of the problem `type` URI (e.g. `job-not-found`).
        headers: extra response headers.
        extra: extension members (e.g. `errors`, `job`).
    """

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(status, detail, headers)
        self.status = status
        self.detail = detail
        self.slug = slug
        self.headers = headers
        self.extra = extra

    def __str__(self) -> str:
        return self.detail

    def response(self, instance: str | None = None) -> ProblemResponse:
        return problem(
            self.status,
            self.detail,
            slug=self.slug,
            headers=dict(self.headers) if self.headers else None,
            instance=instance,
            **self.extra,
        )


def as_problem(exc: StarletteHTTPException) -> Problem:
    """`exc` as a Problem: itself, or one of its status, detail and headers (an
    `HTTPException` an auth hook raised)."""
    if isinstance(exc, Problem):
        return exc
    headers = dict(exc.headers) if exc.headers else None
    return Problem(exc.status_code, str(exc.detail), headers=headers)


def problem(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    headers: dict[str, str] | None = None,
    instance: str | None = None,
    **extra: Any,
) -> ProblemResponse:
    """A problem document response."""
    body = problem_document(status, detail, slug=slug)
    if instance:
        body["instance"] = instance
    body.update(extra)
    return ProblemResponse(body, status_code=status, headers=headers)


def backend_unavailable(exc: BackendError, *, write: bool = False) -> Problem:
    """The 503 problem of a backend that cannot be reached (its cause logged, not shown).
    Of a `write` to the job backend, it says how to send it again safely: a stalled server
    may still apply it."""
    log.error("backend error: %s", exc, extra={"action": "backend_error"})
    which = "blob store" if isinstance(exc, BlobStoreError) else "job backend"
    detail = f"the {which} is unavailable; try again shortly"
    if write and which == "job backend":
        detail += (
            " (whether this request was applied is not known: a submission sent again with "
            "the same Idempotency-Key is stored once)"
        )
    return Problem(
        503,
        detail,
        slug="backend-unavailable",
        headers=BACKEND_RETRY_AFTER,
    )


def job_not_found(job_id: str) -> Problem:
    """The 404 of a job that does not exist, or is another principal's (the same answer)."""
    return Problem(404, f"no job {job_id}", slug="job-not-found")


async def refuse_handshake(websocket: WebSocket, problem: Problem) -> None:
    """Answer a WebSocket handshake with the problem document (HTTP), where the server can
    (the `websocket.http.response` extension); else close it before accepting it (1008)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(problem.response(instance=websocket.url.path))
    else:
        await websocket.close(code=1008, reason=problem.detail[:120])


def http_only(app: ASGIApp) -> ASGIApp:
    """`app` for requests; a WebSocket handshake is answered `no_websocket` (the router's
    own fallback, and StaticFiles, close it unanswered: a server sends a bare `403`)."""

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await no_websocket(scope, receive, send)
        else:
            await app(scope, receive, send)

    return serve


async def no_websocket(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI answer to a WebSocket handshake at a path that has none: the `404` problem
    document of a path that does not exist, where Starlette closes the handshake unanswered
    (a server then sends a bare `403`, no body)."""
    await refuse_handshake(WebSocket(scope, receive, send), Problem(404, "Not Found"))


def server_overloaded(exc: BaseException, where: str) -> Problem:
    """The 503 of a request (`where`: what it asked for) the process ran short of memory
    or threads for (`out_of_resources`), logged: no fault of the request's, nor for good.
    Its connection is closed, a file less for a process that may be short of those too."""
    log.error(
        "%s: out of %s: %s",
        where,
        "memory" if isinstance(exc, MemoryError) else "threads",
        str(exc) or type(exc).__name__,
        extra={"action": "out_of_resources"},
    )
    return Problem(
        503,
        SERVER_OVERLOADED_DETAIL,
        slug="server-overloaded",
        headers={**BACKEND_RETRY_AFTER, "Connection": "close"},
    )


def out_of_resources(exc: BaseException) -> bool:
    """Whether `exc` says the process ran short of memory, or of threads (a container's
    process limit, say), rather than that something is wrong with the request or the code."""
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "can't start new thread" in str(exc)
