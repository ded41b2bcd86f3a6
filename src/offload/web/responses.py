"""What the routes declare they may answer besides success: each error a problem document
(RFC 9457, `application/problem+json`), with the headers that come with it. FastAPI's
`responses=` of a route, built here so every route says the same thing the same way."""

from __future__ import annotations

from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

from .._problems import PROBLEM_MEDIA_TYPE, PROBLEM_TYPE_BASE
from .models import Problem
from .problems import SERVER_OVERLOADED_DETAIL, STORAGE_FULL_DETAIL
from .serve import HEAD_TIMEOUT_S


def header(description: str, schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    """An OpenAPI response header."""
    return {"description": description, "required": required, "schema": schema}


STRING = {"type": "string"}
SECONDS = {"type": "integer", "minimum": 0}

#: Each error status an offload route may answer: what it means there, and its headers.
_ERRORS: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("Last-Event-ID (or `since`) is no event id of this stream", {}),
    401: (
        "Not signed in: a valid bearer token (or ticket) is required",
        {"WWW-Authenticate": header('the challenge: `Bearer realm="offload"`', STRING)},
    ),
    403: ("A cross-site request, refused (development mode, or behind an auth hook)", {}),
    404: ("No such job for the caller", {}),
    409: ("The job is not in a state that allows this", {}),
    408: (
        f"The request's line and headers did not arrive within {HEAD_TIMEOUT_S:g} s "
        "(`request-timeout`), refused by the server `offload web` runs before any route",
        {},
    ),
    413: ("The request body is larger than OFFLOAD_MAX_BODY_BYTES", {}),
    415: (
        "The body is not declared as JSON",
        {"Accept-Post": header("the media types a message may come as", STRING)},
    ),
    416: (
        "The `Range` asked for is not within the file",
        {"Content-Range": header("the file's size: `bytes */<size>`", STRING)},
    ),
    421: (
        "Development mode (no API tokens): the request's `Host` is no loopback name, as a "
        "page of a DNS name rebound to this machine would send",
        {},
    ),
    422: ("The request is not valid: `errors` says where and why", {}),
    431: (
        "The request's line and headers exceed 64 KiB (`request-head-too-large`), refused "
        "by the server `offload web` runs before any route",
        {},
    ),
    500: ("An internal error (logged; no traceback reaches the client)", {}),
    501: ("Not available in this installation (an optional extra is missing)", {}),
    503: (
        "The job backend is unavailable (`backend-unavailable`), or its storage is full "
        "(`storage-full`: nothing new is accepted until space is freed), or the server is "
        "short of memory or threads (`server-overloaded`), or has as many event streams "
        "open as it can keep (`too-many-streams`): try again later",
        {"Retry-After": header("seconds to wait before trying again", SECONDS)},
    ),
}
#: The problem types an error status comes as, where it has more than one: their examples.
_TYPES: dict[int, dict[str, str]] = {
    503: {
        "backend-unavailable": "the job backend is unavailable; try again shortly",
        "storage-full": STORAGE_FULL_DETAIL,
        "server-overloaded": SERVER_OVERLOADED_DETAIL,
        "too-many-streams": "this server has 768 event streams open, the most it can keep; "
        "try again shortly",
    },
}


def _examples(status: int, types: dict[str, str]) -> dict[str, Any]:
    phrase = HTTPStatus(status).phrase
    return {
        slug: {
            "summary": slug,
            "value": {
                "type": PROBLEM_TYPE_BASE + slug,
                "title": phrase,
                "status": status,
                "detail": detail,
            },
        }
        for slug, detail in types.items()
    }


def problems(
    *statuses: int,
    meaning: dict[int, str] | None = None,
    types: dict[int, dict[str, str]] | None = None,
) -> dict[int | str, Any]:
    """The `responses=` entries of these error statuses, each a problem document.

    Args:
        statuses: the error statuses the route may answer.
        meaning: what a status means on this route, where it differs from the usual.
        types: the problem types (slug: detail) a status comes as on this route, where
            they differ from the usual; shown as examples.
    """
    types = {**_TYPES, **(types or {})}
    out: dict[int | str, Any] = {}
    for status in statuses:
        description, headers = _ERRORS[status]
        entry: dict[str, Any] = {"model": Problem, "description": description}
        if meaning and status in meaning:
            entry["description"] = meaning[status]
        if headers:
            entry["headers"] = headers
        if status in types:
            # Under the media type FastAPI gives the model, so that it adds the schema;
            # the document then moves both to the problem media type.
            examples = _examples(status, types[status])
            entry["content"] = {"application/json": {"examples": examples}}
        out[status] = entry
    return out


def operations(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every operation of an OpenAPI document (a path's own `parameters` aside)."""
    for item in schema.get("paths", {}).values():
        yield from (operation for operation in item.values() if isinstance(operation, dict))


def under_problem_media_type(response: dict[str, Any]) -> None:
    """An error answer's content under the problem media type alone: FastAPI puts a
    response's model under the route's media type, and its examples where `problems` put
    them (`application/json`): merged here."""
    merged: dict[str, Any] = {}
    for body in response.get("content", {}).values():
        merged.update(body)
    response["content"] = {PROBLEM_MEDIA_TYPE: merged}


def described(status: int) -> str:
    """What an error status means wherever it is answered (its usual description)."""
    return _ERRORS[status][0]


#: What every /v1 route may answer besides its own: no caller, a backend down, a fault.
API_ERRORS = (401, 500, 503)
