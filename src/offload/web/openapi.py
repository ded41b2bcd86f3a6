"""The OpenAPI document of the web tier: every route, every answer it may give.

FastAPI writes it from the routes (their `response_model` and `responses=`); a few rules
make it say what offload does where FastAPI's defaults would not: each kind a client may
submit is an operation of its own with its message as the body, every error answer is a
problem document, parameters are never null, an event stream's schema is its event's, and
the bearer tokens of OFFLOAD_API_TOKENS are its security scheme.
"""

from __future__ import annotations

import hashlib
import inspect
import re
from collections.abc import Sequence
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Body, Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel, create_model
from starlette.routing import BaseRoute

from .._links import JOBS_PATH
from .._problems import PROBLEM_MEDIA_TYPE
from ..app import App, MessageSpec
from .models import StatusRecord
from .responses import (
    API_ERRORS,
    SECONDS,
    STRING,
    described,
    header,
    problems,
    under_problem_media_type,
)
from .responses import operations as _operations
from .routes import OPERATORS_ONLY
from .submit import JobOptions, job_options, submit

#: The schema of the 422 answer FastAPI declares on its own.
FASTAPI_422 = "#/components/schemas/HTTPValidationError"
#: The document's description.
DESCRIPTION = (
    "Submit jobs, follow them and fetch their results. Every error is an RFC 9457 problem "
    "document (`application/problem+json`)."
)

#: What POST /v1/jobs/{kind} answers, as the OpenAPI document shows each kind's route.
SUBMIT_ANSWERS: dict[str, Any] = {
    "status_code": 202,
    "response_model": StatusRecord,
    "response_description": "Enqueued (or, for a repeated Idempotency-Key, the first job)",
    "responses": {
        200: {
            "model": StatusRecord,
            "description": (
                "Not enqueued: the kind is unique and a job with the same unique key is "
                "queued (or active); this is that job"
            ),
            "headers": {"Location": header("the existing job", STRING)},
        },
        202: {
            "headers": {
                "Location": header("the job", STRING),
                "Retry-After": header("seconds to wait before polling it", SECONDS),
                "Idempotent-Replayed": header(
                    "`true`: the Idempotency-Key was seen; this is the first job",
                    {"type": "string", "enum": ["true"]},
                    required=False,
                ),
            }
        },
        **problems(
            *API_ERRORS,
            403,
            404,
            409,
            413,
            415,
            422,
            meaning={
                404: "No job kind of that name",
                409: "The Idempotency-Key was used for another request: a job of another "
                "kind, or another message of this kind (`idempotency-key-reused`): nothing "
                "stored",
            },
        ),
    },
}


#: What a kind that is not unique answers: never the 200 of a unique key held.
_NOT_UNIQUE_ANSWERS: dict[str, Any] = {
    **SUBMIT_ANSWERS,
    "responses": {k: v for k, v in SUBMIT_ANSWERS["responses"].items() if k != 200},
}


def _message_body(spec: MessageSpec) -> type[BaseModel]:
    """The kind's message as a client sends it: without the fields filled from the caller."""
    if not spec.principal_fields:
        return spec.cls
    fields: dict[str, Any] = {
        name: (info.annotation, info)
        for name, info in spec.cls.model_fields.items()
        if (info.alias or name) not in spec.principal_fields
    }
    return create_model(
        spec.cls.__name__,
        __config__=spec.cls.model_config,
        __doc__=spec.cls.__doc__,
        __module__=spec.cls.__module__,
        **fields,
    )


def _kind_route(spec: MessageSpec, operation_id: str) -> APIRoute:
    """POST /v1/jobs/{kind} of one kind as the OpenAPI document shows it, the kind's message
    as its body. Documentation only: `submit` serves every kind."""

    async def endpoint(**_: Any) -> None:  # never called
        raise NotImplementedError

    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                "message", positional, annotation=Annotated[_message_body(spec), Body()]
            ),
            inspect.Parameter(
                "options", positional, annotation=Annotated[JobOptions, Depends(job_options)]
            ),
        ]
    )
    doc = inspect.cleandoc(spec.cls.__doc__ or "")
    return APIRoute(
        kind_path(spec.kind),
        endpoint,
        methods=["POST"],
        operation_id=operation_id,
        summary=f"Submit a {spec.kind} job",
        description="\n\n".join(filter(None, [doc, inspect.getdoc(submit)])),
        **(SUBMIT_ANSWERS if spec.unique else _NOT_UNIQUE_ANSWERS),
    )


def kind_path(kind: str) -> str:
    """The path of a kind's submit route as the document shows it: the kind encoded, so
    that a `%`, `#`, `?`, `{` or space in it is taken as written."""
    return f"{JOBS_PATH}/{quote(kind, safe='')}"


def _routes(api: FastAPI) -> list[BaseRoute]:
    """The app's routes, the submit route shown once per kind a client may submit."""
    app: App = api.state.offload
    specs = [spec for spec in app.kinds.values() if spec.http]
    ids = _operation_ids([spec.kind for spec in specs])
    return [*(_kind_route(spec, ids[spec.kind]) for spec in specs), *api.routes]


def _operation_ids(kinds: Sequence[str]) -> dict[str, str]:
    """Each kind's submit operation id, in the order the kinds were declared: `submit_` and
    its name with every character that is no word character as `_`; a kind whose id that
    makes is taken already (`mail_send` after `mail.send`) gets hex digits of its name's
    hash after it, as many as make it unique (a client generator, and the document's
    validators, refuse twins). A kind declared first keeps its id whatever comes after."""
    taken: set[str] = set()
    ids = {}
    for kind in kinds:
        made = "submit_" + re.sub(r"\W", "_", kind)
        digest, n = hashlib.sha256(kind.encode()).hexdigest(), 8
        unique = made
        while unique in taken:
            unique, n = f"{made}_{digest[:n]}", n + 1
        taken.add(unique)
        ids[kind] = unique
    return ids


#: The operation ids of the fixed routes (FastAPI's own, made of the path and method, gave
#: client generators names like `showV1JobsJobIdGet`); a kind's submit is `submit_<kind>`.
OPERATION_IDS = {
    ("get", "/v1/jobs/{job_id}"): "get_job",
    ("delete", "/v1/jobs/{job_id}"): "cancel_job",
    ("get", "/v1/jobs/{job_id}/result"): "get_job_result",
    ("get", "/v1/jobs/{job_id}/events"): "stream_job_events",
    ("get", "/v1/jobs"): "list_jobs",
    ("get", "/v1/events"): "stream_events",
    ("post", "/v1/ws-ticket"): "create_ws_ticket",
    ("get", "/v1/kinds"): "list_kinds",
    ("get", "/v1/queues"): "list_queues",
    ("get", "/v1/workers"): "list_workers",
    ("get", "/v1/schedules"): "list_schedules",
    ("get", "/metrics"): "get_metrics",
    ("get", "/healthz"): "check_health",
    ("head", "/healthz"): "check_health_head",
    ("get", "/readyz"): "check_ready",
    ("head", "/readyz"): "check_ready_head",
    ("get", "/files/{key}"): "get_file",
    ("head", "/files/{key}"): "get_file_head",
}


def _named_operations(schema: dict[str, Any]) -> None:
    """The fixed routes' operation ids (`OPERATION_IDS`)."""
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            if named := OPERATION_IDS.get((method, path)):
                operation["operationId"] = named


def _problems_as_problems(schema: dict[str, Any]) -> None:
    """Every error answer is a problem document, of its own media type (FastAPI puts a
    response's model under the route's media type, and its examples where `responses.py`
    put them: merged here)."""
    for operation in _operations(schema):
        for status, response in operation.get("responses", {}).items():
            if status[0] in "45" and response.get("content"):
                under_problem_media_type(response)


def _no_default_422(schema: dict[str, Any]) -> None:
    """FastAPI declares its own 422 on every route with parameters; offload's 422 is a
    problem document, declared by the routes that validate something."""
    for operation in _operations(schema):
        answer = operation.get("responses", {}).get("422", {})
        ref = answer.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")
        if ref == FASTAPI_422:
            del operation["responses"]["422"]
    for name in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(name, None)


def _parameters_never_null(schema: dict[str, Any]) -> None:
    """A query parameter or header left out is absent, never null: `str | None = None` in a
    route's signature is an optional string (FastAPI writes `anyOf: [string, null]`)."""
    for operation in _operations(schema):
        for parameter in operation.get("parameters", []):
            types = parameter["schema"].get("anyOf", [])
            if {"type": "null"} in types:
                types.remove({"type": "null"})
                if len(types) == 1:
                    del parameter["schema"]["anyOf"]
                    parameter["schema"].update(types[0])


def _events_as_events(schema: dict[str, Any]) -> None:
    """An event stream's schema is its event's (OpenAPI 3.1: the schema of each event);
    FastAPI writes `type: string` beside a streamed response's model."""
    for operation in _operations(schema):
        for response in operation.get("responses", {}).values():
            stream = response.get("content", {}).get("text/event-stream", {}).get("schema", {})
            if "$ref" in stream:
                stream.pop("type", None)


def _answered_everywhere(schema: dict[str, Any], api: FastAPI) -> None:
    """What a request may be answered before its route runs, whatever the route: 408 and
    431 (the head's bounds in time and size, where `offload web` serves), 413 (the body
    limit), and in development mode 421 (a `Host` that is no loopback name)."""
    statuses = [408, 413, 421, 431] if api.state.auth.dev_mode else [408, 413, 431]
    content = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for operation in _operations(schema):
        answers = operation.setdefault("responses", {})
        for status in statuses:
            answers.setdefault(str(status), {"description": described(status), "content": content})


def _security(schema: dict[str, Any], api: FastAPI) -> None:
    """Bearer tokens (OFFLOAD_API_TOKENS), where they decide who calls: every /v1 operation
    asks for one (the event streams take a ticket instead). An auth hook's credentials are
    the host's own: the document names none, nor does development mode (no credentials)."""
    auth = api.state.auth
    if auth.hook is not None or not auth.required:
        return
    schema.setdefault("components", {})["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "an API token"},
        "ticket": {
            "type": "apiKey",
            "in": "query",
            "name": "ticket",
            "description": "a ticket from POST /v1/ws-ticket",
        },
    }
    schema["security"] = [{"bearer": []}]
    for path in ("/v1/events", "/v1/jobs/{job_id}/events"):
        schema["paths"][path]["get"]["security"] = [{"bearer": []}, {"ticket": []}]
    for operation in _operations(schema):
        if operation.get(OPERATORS_ONLY):
            # An operators' route answers every caller who is no admin, with a token or
            # without, as a path that does not exist (404): no token is no 401 there.
            operation["security"] = [{"bearer": []}, {}]


def _operators_marked(schema: dict[str, Any]) -> None:
    """Drop the marker of the operators' routes (`OPERATORS_ONLY`), once read."""
    for operation in _operations(schema):
        operation.pop(OPERATORS_ONLY, None)


def for_caller(schema: dict[str, Any], hidden: set[str]) -> dict[str, Any]:
    """The document without the paths `hidden` (the submission routes of kinds the caller
    may not submit) and without the schemas only those reached: for a token limited to
    kinds, the others do not exist, here as on the routes. `schema` is left as it is."""
    if not hidden:
        return schema
    paths = {path: item for path, item in schema["paths"].items() if path not in hidden}
    components = schema.get("components", {})
    schemas: dict[str, Any] = components.get("schemas", {})
    reached: set[str] = set()
    todo = [paths, {k: v for k, v in components.items() if k != "schemas"}]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith(_SCHEMA_REF):
                name = ref.removeprefix(_SCHEMA_REF)
                if name not in reached and name in schemas:
                    reached.add(name)
                    todo.append(schemas[name])
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    kept = {name: body for name, body in schemas.items() if name in reached}
    return {**schema, "paths": paths, "components": {**components, "schemas": kept}}


#: How a document refers to one of its schemas.
_SCHEMA_REF = "#/components/schemas/"


def openapi_document(api: FastAPI) -> dict[str, Any]:
    """The OpenAPI document of the web tier (made once, on first use)."""
    if api.openapi_schema is None:
        schema = get_openapi(
            title=api.title,
            version=api.version,
            description=DESCRIPTION,
            routes=_routes(api),
        )
        _named_operations(schema)
        _no_default_422(schema)
        _parameters_never_null(schema)
        _problems_as_problems(schema)
        _events_as_events(schema)
        _answered_everywhere(schema, api)
        _security(schema, api)
        _operators_marked(schema)
        api.openapi_schema = schema
    return api.openapi_schema
