"""The /v1 HTTP API: submit, inspect, follow, fetch results of and cancel jobs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request
from pydantic import ValidationError
from starlette.responses import RedirectResponse, Response, StreamingResponse

from ..app import App, MessageSpec
from ..contract import JobRow, JobState
from ..errors import InvalidTransition, JobNotFound
from ..notify.targets import MAX_CALLBACK_URL_LENGTH, callback_url_refusal, delivery_option_errors
from .auth import authenticated, kind_allowed
from .events import job_stream
from .fleet import require_live_worker
from .origins import refuse_cross_site
from .present import blob_refs, presenter_of, root_of
from .problems import JSONResponse, Problem
from .runtime import opened

#: Development mode refuses cross-site writes on every route here (see `origins`).
router = APIRouter(
    prefix="/v1",
    dependencies=[Depends(refuse_cross_site), Depends(opened), Depends(authenticated)],
)
#: Seconds a client is told to wait before polling a new job.
DEFAULT_RETRY_AFTER_S = 1


def _state(request: Request) -> Any:
    return request.app.state


def _app(request: Request) -> App:
    app: App = request.app.state.offload
    return app


async def _owned(request: Request, job_id: str) -> JobRow:
    """The caller's job, or 404: another principal's job does not exist for them."""
    principal = _state(request).auth.principal(request)
    row = await _app(request).get(job_id, owner=principal)
    if row is None:
        raise _not_found(job_id)
    return row


def _not_found(job_id: str) -> Problem:
    return Problem(404, f"no job {job_id}", slug="job-not-found")


def _check_options(
    request: Request,
    delay: float | None,
    run_at: datetime | None,
    callback_url: str | None,
    notify_email: str | None,
) -> None:
    errors = []
    if delay is not None and run_at is not None:
        errors.append({"loc": ["query", "run_at"], "msg": "give delay or run_at, not both"})
    if run_at is not None and run_at.tzinfo is None:
        errors.append({"loc": ["query", "run_at"], "msg": "run_at needs a timezone (…Z)"})
    invalid = delivery_option_errors(callback_url, notify_email)
    errors += [{"loc": ["query", name], "msg": msg} for name, msg in invalid.items()]
    if callback_url is not None and "callback_url" not in invalid:
        allow = _app(request).settings.webhook_allow_private
        why = callback_url_refusal(callback_url, allow_private=allow)
        if why:
            errors.append({"loc": ["query", "callback_url"], "msg": why})
    if errors:
        raise Problem(422, "invalid job options", slug="invalid-options", errors=errors)


def is_json_media_type(content_type: str) -> bool:
    """`application/json` or `application/<anything>+json`, parameters aside."""
    media = content_type.partition(";")[0].strip().lower()
    top, _, sub = media.partition("/")
    return top == "application" and (sub == "json" or (sub.endswith("+json") and sub != "+json"))


def _require_json(request: Request) -> None:
    """A message comes as JSON, declared so: the bodies a page of another site may send
    without a CORS preflight (text/plain, forms) are refused before they are read.

    Raises:
        Problem: 415 for any other (or no) Content-Type.
    """
    if not is_json_media_type(request.headers.get("content-type", "")):
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


@router.post("/jobs/{kind}", status_code=202, dependencies=[Depends(kind_allowed)])
async def submit(
    request: Request,
    kind: str,
    priority: Annotated[int, Query(ge=-1000, le=1000)] = 0,
    delay: Annotated[float | None, Query(ge=0, le=366 * 86400)] = None,
    run_at: datetime | None = None,
    callback_url: Annotated[str | None, Query(max_length=MAX_CALLBACK_URL_LENGTH)] = None,
    notify_email: Annotated[str | None, Query(max_length=254)] = None,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Response:
    """Validate the body against the kind's message class, enqueue, answer 202."""
    principal = _state(request).auth.principal(request)
    app = _app(request)
    spec = app.kinds.get(kind)
    if spec is None or not spec.http:  # a kind off the API is indistinguishable from none
        raise Problem(404, f"no job kind {kind!r}", slug="unknown-kind")
    _require_json(request)
    _check_options(request, delay, run_at, callback_url, notify_email)
    try:
        data = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise Problem(422, f"the body is not JSON: {exc}", slug="invalid-payload") from None
    data = _with_principal(data, spec, principal)
    try:
        message = spec.cls.model_validate(data)
    except ValidationError as exc:
        errors = orjson.loads(exc.json(include_url=False))
        raise Problem(
            422, f"the body is not a valid {kind} message", slug="invalid-payload", errors=errors
        ) from None
    # OFFLOAD_REQUIRE_WORKER_VERSION=1: 503 unless a live worker runs this version.
    await require_live_worker(app, spec)
    envelope = app.envelope(
        message,
        owner=principal,
        priority=priority,
        delay=delay,
        run_at=run_at,
        idempotency_key=idempotency_key,
        callback_url=callback_url,
        notify_email=notify_email,
    )
    job, row = await app.submit(envelope)
    location = f"{root_of(request)}/v1/jobs/{job.id}"
    headers = {"Location": location, "Retry-After": str(DEFAULT_RETRY_AFTER_S)}
    if not job.created:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(presenter_of(request).row(row), status_code=202, headers=headers)


@router.get("/jobs/{job_id}")
async def show(request: Request, job_id: str) -> Response:
    """The status record, with `deliveries`: each webhook and email and its attempts."""
    principal = _state(request).auth.principal(request)
    present = presenter_of(request)
    try:
        record = await _app(request).status(job_id, owner=principal, tracebacks=present.tracebacks)
    except JobNotFound:
        raise _not_found(job_id) from None
    return JSONResponse(present.record(record))


@router.get("/jobs/{job_id}/result")
async def result(request: Request, job_id: str) -> Response:
    """303 to the file once succeeded (one blob), the JSON result otherwise; 409 until then."""
    row = await _owned(request, job_id)
    present = presenter_of(request)
    if row.state is not JobState.SUCCEEDED:
        raise Problem(
            409,
            f"job {job_id} is {row.state}, not succeeded",
            slug="not-done",
            job=present.row(row),
        )
    refs = blob_refs(row.result)
    if len(refs) == 1:
        return RedirectResponse(present.link(refs[0]), status_code=303)
    return JSONResponse({"id": job_id, "result": present.sign_refs(row.result)})


@router.get("/jobs/{job_id}/events")
async def events(
    request: Request,
    job_id: str,
    last_event_id: Annotated[str | None, Header()] = None,
    since: Annotated[int | None, Query(ge=0)] = None,
) -> Response:
    """Server-sent events of every change of the job, until its final state."""
    await _owned(request, job_id)
    cursor = since or 0
    if last_event_id:
        if not last_event_id.isdigit():
            raise Problem(
                400, "Last-Event-ID must be an event id of this stream", slug="bad-event-id"
            )
        cursor = int(last_event_id)
    hub = _state(request).runtime.hub
    stream = job_stream(hub, _app(request), job_id, cursor, presenter_of(request).row)
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.delete("/jobs/{job_id}")
async def cancel(request: Request, job_id: str) -> Response:
    """Cancel: a waiting job never runs (200); a running one is signalled (202)."""
    await _owned(request, job_id)
    try:
        row = await _app(request).cancel(job_id)
    except InvalidTransition as exc:
        raise Problem(409, str(exc), slug="already-final") from None
    except JobNotFound:
        raise _not_found(job_id) from None
    status = 200 if row.state is JobState.CANCELLED else 202
    return JSONResponse(presenter_of(request).row(row), status_code=status)


@router.get("/jobs")
async def list_jobs(
    request: Request,
    state: JobState | None = None,
    kind: str | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Response:
    """The caller's jobs, newest first; follow `next` for the following page."""
    principal = _state(request).auth.principal(request)
    rows = await _app(request).list_jobs(
        owner=principal,
        state=state.value if state else None,
        kind=kind,
        before=cursor,
        limit=limit + 1,
    )
    page, more = rows[:limit], len(rows) > limit
    present = presenter_of(request)
    nxt = None
    if more:
        query = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"]
        nxt = f"{root_of(request)}/v1/jobs?" + urlencode([*query, ("cursor", page[-1].id)])
    headers = {"Link": f'<{nxt}>; rel="next"'} if nxt else None
    return JSONResponse({"items": [present.row(r) for r in page], "next": nxt}, headers=headers)


@router.get("/queues")
async def queues(request: Request) -> Response:
    """Per-queue stats: queued, scheduled, running, dead, oldest ready job's age."""
    _state(request).auth.principal(request)
    return JSONResponse({"queues": await _app(request).stats()})
