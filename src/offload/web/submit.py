"""POST /v1/jobs/{kind}: validate a job submission, enqueue it, answer 202.

The web tier's hot path, served by a plain Starlette route: FastAPI would solve the /v1
routers' dependencies and validate each option on every request, which cost more than
all the rest of a submission (bench/RESULTS.md, the web tier). `submit` makes the same
checks in the same order, with the same answers: refuse a cross-site write (403), open the
backend (503), ask who is calling, refuse a kind the caller's token may not submit (404),
validate the options (422, as FastAPI words it), then 401, 404, 415, 422 from the handler.
The OpenAPI document shows the route once per kind, its options from `job_options`.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, get_type_hints

import orjson
from fastapi import Header, Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, BeforeValidator, ValidationError, create_model
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from .._claim_check import ClaimCheckError, check_out, claim_of
from .._links import JOBS_PATH
from .._options import LATEST_RUN_AT, MAX_PRIORITY
from .._text import JSON_STRING
from ..app import App, MessageSpec
from ..contract import MAX_NESTING, JobRow, Message, UnstorableMessage, nested_deeper
from ..notify.targets import MAX_CALLBACK_URL_LENGTH, refused_delivery_options
from .auth import kind_allowed
from .fleet import require_live_worker
from .origins import first_headers, refuse_cross_site
from .present import presenter_of, root_of
from .problems import NO_STORE, Problem

#: Seconds a client is told to wait before polling a new job.
DEFAULT_RETRY_AFTER_S = 1
RawHeader = tuple[bytes, bytes]
_RETRY_AFTER: RawHeader = (b"retry-after", str(DEFAULT_RETRY_AFTER_S).encode())
_REPLAYED: RawHeader = (b"idempotent-replayed", b"true")
#: The request headers a submission reads itself (the origin check reads its own).
_SUBMIT_HEADERS = frozenset({b"content-type", b"idempotency-key"})
#: Nineteen digits in a row: perhaps an integer past 64 bits, which orjson reads as a float.
_LONG_RUN = re.compile(rb"[0-9]{19}")
#: A JSON string (skipped as it is), or an integer of nineteen digits or more.
_LONG_INTEGER = re.compile(JSON_STRING + rb"|(?<![0-9.eE+\-])-?[0-9]{19,}(?![0-9.eE])")

log = logging.getLogger("offload.web")


def _app(request: Request) -> App:
    app: App = request.app.state.offload
    return app


@dataclass(frozen=True, slots=True)
class JobOptions:
    """The job options of a submission: query parameters, and the Idempotency-Key header."""

    priority: int
    delay: float | None
    run_at: datetime | None
    callback_url: str | None
    notify_email: str | None
    idempotency_key: str | None


def _no_unix_time(value: Any) -> Any:
    """`run_at` is an RFC 3339 date-time: not the number pydantic would read as a Unix time."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
        raise ValueError("run_at must be an RFC 3339 date-time with a timezone, not a number")
    return value


async def job_options(
    priority: Annotated[
        int, Query(ge=-MAX_PRIORITY, le=MAX_PRIORITY, description="lower runs first")
    ] = 0,
    delay: Annotated[
        float | None,
        Query(
            ge=0,
            le=366 * 86400,
            allow_inf_nan=False,
            description="seconds to wait before it runs",
        ),
    ] = None,
    run_at: Annotated[
        Annotated[datetime, BeforeValidator(_no_unix_time)] | None,
        Query(description="not before this time (RFC 3339, with a timezone); not with delay"),
    ] = None,
    callback_url: Annotated[
        str | None,
        Query(max_length=MAX_CALLBACK_URL_LENGTH, description="a webhook called when it ends"),
    ] = None,
    notify_email: Annotated[
        str | None, Query(max_length=254, description="an address emailed when it ends")
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=255,
            description="a repeat with the same key returns the first job",
        ),
    ] = None,
) -> JobOptions:
    """The options of a submission as the OpenAPI document shows them (`submit` validates
    them with `OPTIONS_MODEL`, made from this signature)."""
    return JobOptions(priority, delay, run_at, callback_url, notify_email, idempotency_key)


def _check_options(request: Request, options: JobOptions) -> None:
    errors = []
    delay, run_at, callback_url = options.delay, options.run_at, options.callback_url
    if delay is not None and run_at is not None:
        errors.append({"loc": ["query", "run_at"], "msg": "give delay or run_at, not both"})
    if run_at is not None and run_at.tzinfo is None:
        errors.append({"loc": ["query", "run_at"], "msg": "run_at needs a timezone (…Z)"})
    elif run_at is not None and run_at.timestamp() > LATEST_RUN_AT:
        errors.append({"loc": ["query", "run_at"], "msg": "run_at is after 9999-12-31T23:59:59Z"})
    allow = _app(request).settings.webhook_allow_private
    refused = refused_delivery_options(callback_url, options.notify_email, allow_private=allow)
    errors += [{"loc": ["query", name], "msg": msg} for name, msg in refused.items()]
    if errors:
        raise options_problem(errors)


def options_problem(errors: list[dict[str, Any]]) -> Problem:
    """The 422 of refused job options, its detail naming each option and why (a host that
    shows only the detail, as FastAPI's own handler does, still says why)."""
    said = "; ".join(f"{error['loc'][-1]}: {error['msg']}" for error in errors)
    return Problem(422, f"invalid job options ({said})", slug="invalid-options", errors=errors)


def is_json_media_type(content_type: str) -> bool:
    """`application/json` or `application/<anything>+json`, parameters aside."""
    media = content_type.partition(";")[0].strip().lower()
    top, _, sub = media.partition("/")
    return top == "application" and (sub == "json" or (sub.endswith("+json") and sub != "+json"))


def _require_json(content_type: str) -> None:
    """A message comes as JSON, declared so: the bodies a page of another site may send
    without a CORS preflight (text/plain, forms) are refused before they are read.

    Raises:
        Problem: 415 for any other (or no) Content-Type.
    """
    if not is_json_media_type(content_type):
        raise Problem(
            415,
            "send the message as JSON, with Content-Type: application/json",
            slug="unsupported-media-type",
            headers={"Accept-Post": "application/json, application/*+json"},
        )


def _with_principal(data: Any, spec: MessageSpec, principal: str) -> Any:
    """The body with the caller's principal in each `FromPrincipal` field.

    Raises:
        Problem: 422 when the client sent such a field (even with its own name).
    """
    if not spec.principal_fields or not isinstance(data, dict):
        return data  # a body that is no object fails validation as it is
    sent = [key for key in spec.principal_fields if key in data]
    if sent:
        why = "set from the caller's credentials: leave it out"
        errors = [{"loc": [key], "msg": why, "type": "from_principal"} for key in sent]
        detail = f"the body is not a valid {spec.kind} message"
        raise Problem(422, detail, slug="invalid-payload", errors=errors)
    return {**data, **dict.fromkeys(spec.principal_fields, principal)}


def _refuse_principal(spec: MessageSpec, principal: str, errors: list[dict[str, Any]]) -> None:
    """Refuse the caller whose principal a `FromPrincipal` field of the kind does not
    accept (a pattern for user principals, a service token's caller): not the body's
    fault, nor one the client could mend by sending another.

    Raises:
        Problem: 403 (`principal-refused`), naming the field and why; logged for the
            operator, as a kind and an auth hook that disagree.
    """
    refused = [e for e in errors if e.get("loc") and e["loc"][0] in spec.principal_fields]
    if not refused:
        return
    said = "; ".join(f"{e['loc'][0]}: {e.get('msg', '')}" for e in refused)
    log.warning(
        "a caller was refused a %s job: its principal %r does not fit the kind (%s)",
        spec.kind,
        principal,
        said,
        extra={"action": "principal_refused", "kind": spec.kind},
    )
    raise Problem(
        403,
        f"the caller's principal cannot own a {spec.kind} job ({said})",
        slug="principal-refused",
        errors=[{"loc": e["loc"], "msg": e.get("msg"), "type": e.get("type")} for e in refused],
    )


def _options_model() -> type[BaseModel]:
    """`job_options`'s parameters as one pydantic model: the same types and constraints,
    so the same errors FastAPI would give."""
    hints = get_type_hints(job_options, include_extras=True)
    defaults = job_options.__defaults__ or ()
    names = [n for n in hints if n != "return"]
    fields: dict[str, Any] = {
        name: (hints[name], default) for name, default in zip(names, defaults, strict=True)
    }
    return create_model("SubmitOptions", **fields)


#: The validator of a submission's options (`job_options`).
OPTIONS_MODEL = _options_model()
#: The query parameters among them; the one header is the Idempotency-Key.
_QUERY_NAMES = tuple(n for n in OPTIONS_MODEL.model_fields if n != "idempotency_key")
_DEFAULT_OPTIONS = JobOptions(0, None, None, None, None, None)


def _loc(name: str) -> list[str]:
    if name == "idempotency_key":
        return ["header", "idempotency-key"]
    return ["query", name]


def _utf8(value: str | None) -> str | None:
    """A header's text as the client wrote it: UTF-8 where its bytes are (a browser's, or
    `requests`'), read Latin-1 as HTTP reads every header; else as it was read. The key
    `é` sent as UTF-8 was stored as `Ã©`, two characters (a key of 200 such was refused as
    longer than 255), and matched no key given from code."""
    if value is None or value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def read_options(request: Request, key: str | None) -> JobOptions:
    """The submission's options (`key`: its Idempotency-Key header), validated as FastAPI
    validates `job_options`.

    Raises:
        RequestValidationError: (422, `invalid-request`) an option is not valid, or not
            one (a misspelt `?dealy=600` would otherwise run the job at once).
    """
    if not request.scope["query_string"] and key is None:
        return _DEFAULT_OPTIONS
    query = request.query_params
    unknown = sorted(set(query) - set(_QUERY_NAMES))
    if unknown:
        known = ", ".join(_QUERY_NAMES)
        raise RequestValidationError(
            [
                {"loc": ["query", name], "msg": f"no such option (the options: {known})",
                 "type": "extra_forbidden"}
                for name in unknown
            ]
        )  # fmt: skip
    data = {name: query[name] for name in _QUERY_NAMES if name in query}
    if key is not None:
        data["idempotency_key"] = key
    try:
        valid = OPTIONS_MODEL.model_validate(data)
    except ValidationError as exc:
        errors = [
            {"loc": _loc(str(e["loc"][0])), "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False)
        ]
        raise RequestValidationError(errors) from None
    return JobOptions(**valid.model_dump())


async def _body(request: Request) -> bytes:
    """The whole body, as `request.body()` reads it, without its stream's machinery (a
    generator, its closing, a registry entry): a submission is one or a few chunks.

    Raises:
        ClientDisconnect: the client went away before sending all of it.
    """
    chunks: list[bytes] = []
    while True:
        message = await request.receive()
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()


async def submit(request: Request) -> Response:
    """Validate the body against the kind's message class, enqueue, answer 202 (200 with
    the job of the same unique key, for a kind declared `unique`, while that job is queued
    or active)."""
    state = request.app.state
    refuse_cross_site(request)
    await state.runtime.ensure()
    await state.auth.authenticate(request)
    kind: str = request.path_params["kind"]
    await kind_allowed(request, kind)
    sent = first_headers(request.scope, _SUBMIT_HEADERS)
    options = read_options(request, _utf8(sent.get("idempotency-key")))
    principal = state.auth.principal(request)
    app = _app(request)
    spec = app.kinds.get(kind)
    if spec is None or not spec.http:  # a kind off the API is indistinguishable from none
        raise Problem(404, f"no job kind {kind!r}", slug="unknown-kind")
    _require_json(sent.get("content-type", ""))
    _check_options(request, options)
    body = await _body(request)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "memory" in str(exc):  # ("Not enough memory to allocate buffer for parsing")
            raise MemoryError(str(exc)) from None  # no fault of the body's: a 503
        raise Problem(422, f"the body is not JSON: {exc}", slug="invalid-payload") from None
    data = _long_integers_exact(body, data)
    if nested_deeper(data):  # (nor is a refusal's `errors` to echo it)
        detail = f"the body nests objects and arrays more than {MAX_NESTING} levels deep"
        raise Problem(422, detail, slug="invalid-payload")
    data = _with_principal(data, spec, principal)
    try:
        message = spec.cls.model_validate(data)
    except ValidationError as exc:
        errors = _echoed(exc)
        _refuse_principal(spec, principal, errors)
        raise Problem(
            422, f"the body is not a valid {kind} message", slug="invalid-payload", errors=errors
        ) from None
    # OFFLOAD_REQUIRE_WORKER_VERSION=1: 503 unless a live worker runs this version.
    await require_live_worker(app, spec)
    try:
        envelope = app.envelope(
            message,
            owner=principal,
            priority=options.priority,
            delay=options.delay,
            run_at=options.run_at,
            idempotency_key=options.idempotency_key,
            callback_url=options.callback_url,
            notify_email=options.notify_email,
        )
        job, row = await app.submit(envelope)
    except UnstorableMessage as exc:  # as validated: nested deeper (a `Json` field), a NUL
        raise Problem(422, str(exc), slug="invalid-payload") from None
    if not job.created and not job.unique_repeat:
        await check_repeat(app, spec, row, message, envelope.idempotency_key)
    location = f"{root_of(request)}{JOBS_PATH}/{job.id}"
    record = presenter_of(request).row(row)
    headers = [(b"location", location.encode("latin-1"))]
    if job.unique_repeat:
        return _Answer(record, 200, headers)
    headers.append(_RETRY_AFTER)
    if not job.created:
        headers.append(_REPLAYED)
    return _Answer(record, 202, headers)


def _long_integers_exact(body: bytes, data: Any) -> Any:
    """`data`, read again exactly where the body holds an integer past 64 bits, which orjson
    reads as the nearest float: a `float` field takes the integer as the float it is (what
    JavaScript writes for 1e20), and an `Any` or `int` field keeps it exact, to be refused
    as a value offload cannot store (where a field typed `Any` took it, changed)."""
    if _LONG_RUN.search(body) is None:
        return data
    for found in _LONG_INTEGER.finditer(body):
        token = found[0]
        if token[:1] != b'"' and not -(2**63) <= int(token) < 2**64:
            return json.loads(body, parse_constant=_no_constant)  # valid JSON: orjson read it
    return data


def _echoed(exc: ValidationError) -> list[dict[str, Any]]:
    """A refusal's errors as the 422 echoes them: pydantic's JSON of them, where a number no
    JSON answer carries (an infinity, an integer past 64 bits, from a `Json` field's text
    say) is echoed as its text (orjson, which read them before, refused those: a 500)."""
    errors: list[dict[str, Any]] = json.loads(
        exc.json(include_url=False), parse_constant=str, parse_int=_int_or_text
    )
    return errors


def _int_or_text(text: str) -> int | str:
    number = int(text)
    return number if -(2**63) <= number < 2**64 else text


def _no_constant(name: str) -> Any:
    raise Problem(422, f"the body is not JSON: {name} is no JSON value", slug="invalid-payload")


async def check_repeat(
    app: App, spec: MessageSpec, row: JobRow, message: Message, key: str | None
) -> None:
    """Refuse a request whose Idempotency-Key `key` named another one: its first job `row`
    is of another kind than `spec`'s, or of this kind and version with another message.
    Across a version bump the message is not compared: a retry's body is the new
    version's, the first job's the old one's.

    Raises:
        Problem: 409 (`idempotency-key-reused`); nothing was stored.
    """
    if row.kind != spec.kind:
        raise Problem(
            409,
            f"Idempotency-Key {key!r} was used for a job of kind {row.kind!r} (job "
            f"{row.id}): a repeat must be the same request; use a new key",
            slug="idempotency-key-reused",
        )
    if row.version == spec.version and not await _same_message(app, spec, row, message):
        raise Problem(
            409,
            f"Idempotency-Key {key!r} was used for another {row.kind} message (job "
            f"{row.id}): a repeat must send the same body; use a new key for a new request",
            slug="idempotency-key-reused",
        )


async def _same_message(app: App, spec: MessageSpec, row: JobRow, message: Message) -> bool:
    """Whether the first job's message is `message`, compared as messages: each field the
    repeat sent equal as the class reads it (a set in any order, a mapping's keys in any
    order, a float however the engine gave it back), and a field it left out not compared
    (its default may be made anew, as a `default_factory`'s is). A first message that can
    no longer be read (its checked-in payload gone, or no longer this class's) is not
    compared: the repeat is answered with its job."""
    stored = row.payload
    claim = claim_of(stored)
    try:
        if claim is not None:  # BackendError: the blob store failed (503, tried again)
            stored = await check_out(app.blobs, claim)
        first = spec.cls.model_validate(stored)
    except (ClaimCheckError, ValidationError):
        return True
    return all(getattr(first, name) == getattr(message, name) for name in message.model_fields_set)


class _Answer(Response):
    """A submission's answer: its status record as JSON under the route's own headers,
    given ready to send (a Response would lower-case and encode each on every request)."""

    media_type = "application/json"

    def __init__(self, record: dict[str, Any], status_code: int, headers: list[RawHeader]) -> None:
        self.status_code = status_code
        self.background = None
        self.body = orjson.dumps(record)
        headers.append((b"content-length", str(len(self.body)).encode()))
        headers.append((b"content-type", b"application/json"))
        headers.append(NO_STORE)
        self.raw_headers = headers
