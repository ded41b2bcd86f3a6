"""The /v1 HTTP API: submit, inspect, follow, fetch results of and cancel jobs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Match, Route

from ..app import App
from ..contract import JobRow, JobState
from ..errors import InvalidTransition, JobNotFound
from .auth import admin_only, authenticated
from .models import (
    JobPage,
    JobResult,
    Queues,
    Schedules,
    StatusRecord,
    StatusRecordWithDeliveries,
    Workers,
)
from .origins import cross_site_guard
from .present import presenter_of, result_refs, root_of
from .problems import JSONResponse, Problem, job_not_found
from .responses import API_ERRORS, STRING, header, problems
from .runtime import opened

#: Development mode refuses cross-site writes on every route here (see `origins`).
router = APIRouter(
    prefix="/v1",
    dependencies=[Depends(cross_site_guard), Depends(opened), Depends(authenticated)],
)
#: A job id (a UUID, as offload writes them): what `cursor` of a job list takes.
JOB_ID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
JOB_ID_PATTERN = f"^{JOB_ID}$"
#: Text without a NUL character (no kind holds one: PostgreSQL cannot store one, and a
#: filter holding one was answered as a backend outage there, a 503).
NO_NUL_PATTERN = "^[^\\u0000]*$"
#: Marks an operation for operators only (`admin_only`) in the OpenAPI document, which
#: states how anyone else is answered (`openapi._security`); the marker itself is dropped.
OPERATORS_ONLY = "x-offload-operators-only"


def operators_only(request: Request, routes: Iterable[BaseRoute]) -> list[Route]:
    """The routes at the request's path where every one is an operators' route
    (`OPERATORS_ONLY`); none where any is not."""
    scope = {**request.scope, "path_params": {}}
    found = [
        route
        for route in routes
        if isinstance(route, Route) and route.matches(scope)[0] is not Match.NONE
    ]
    if all((getattr(route, "openapi_extra", None) or {}).get(OPERATORS_ONLY) for route in found):
        return found
    return []


def allowed_methods(request: Request, routes: Iterable[BaseRoute]) -> list[str]:
    """The methods the resource at the request's path answers (a 405's `Allow`): those of
    each of `routes` whose path matches it, where Starlette names the first one's only. A
    path both /v1/jobs/{kind} and /v1/jobs/{job_id} match is the submit route of a kind when
    it names one (POST), else a job's (GET, DELETE)."""
    kinds = {kind for kind, spec in _app(request).kinds.items() if spec.http}
    of_kinds: set[str] = set()
    others: set[str] = set()
    scope = {**request.scope, "path_params": {}}  # matches() adds the routed one's params
    for route in routes:
        if not isinstance(route, Route):
            continue
        match, child = route.matches(scope)
        if match is Match.NONE:
            continue
        if "kind" not in route.param_convertors:
            others |= route.methods or set()
        elif child["path_params"]["kind"] in kinds:
            of_kinds |= route.methods or set()
    return sorted(of_kinds or others)


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
        raise job_not_found(job_id)
    return row


@router.get(
    "/jobs/{job_id}",
    response_model=StatusRecordWithDeliveries,
    responses=problems(*API_ERRORS, 404),
)
async def show(request: Request, job_id: str) -> Response:
    """The status record, with `deliveries`: each webhook and email and its attempts."""
    principal = _state(request).auth.principal(request)
    present = presenter_of(request)
    try:
        record = await _app(request).status(job_id, owner=principal, tracebacks=present.tracebacks)
    except JobNotFound:
        raise job_not_found(job_id) from None
    return JSONResponse(present.record(record))


@router.get(
    "/jobs/{job_id}/result",
    response_model=JobResult,
    response_description="The result, once succeeded (unless it is one file)",
    responses={
        303: {
            "description": "Succeeded with one file: its signed, expiring link",
            "headers": {"Location": header("the file's signed link", STRING)},
        },
        **problems(
            *API_ERRORS, 404, 409, meaning={409: "Not succeeded (yet): `job` is its status"}
        ),
    },
)
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
    refs = result_refs(row.result, row.id)
    if len(refs) == 1:
        return RedirectResponse(present.link(refs[0]), status_code=303)
    return JSONResponse({"id": row.id, "result": present.sign_refs(row.result, row.id)})


@router.delete(
    "/jobs/{job_id}",
    response_model=StatusRecord,
    response_description="Cancelled: it will never run",
    responses={
        202: {"model": StatusRecord, "description": "Running: the handler is signalled"},
        **problems(*API_ERRORS, 403, 404, 409, meaning={409: "Already in a final state"}),
    },
)
async def cancel(request: Request, job_id: str) -> Response:
    """Cancel: a waiting job never runs (200); a running one is signalled (202)."""
    await _owned(request, job_id)
    try:
        row = await _app(request).cancel(job_id)
    except InvalidTransition as exc:
        raise Problem(409, str(exc), slug="already-final") from None
    except JobNotFound:
        raise job_not_found(job_id) from None
    status = 200 if row.state is JobState.CANCELLED else 202
    return JSONResponse(presenter_of(request).row(row), status_code=status)


@router.get(
    "/jobs",
    response_model=JobPage,
    responses={
        200: {
            "headers": {"Link": header('the next page: `<…>; rel="next"`', STRING, required=False)}
        },
        **problems(*API_ERRORS, 422),
    },
)
async def list_jobs(
    request: Request,
    state: JobState | None = None,
    kind: Annotated[str | None, Query(pattern=NO_NUL_PATTERN)] = None,
    cursor: Annotated[str | None, Query(pattern=JOB_ID_PATTERN)] = None,
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


@router.get("/queues", response_model=Queues, responses=problems(*API_ERRORS))
async def queues(request: Request) -> Response:
    """Per-queue stats: queued, scheduled, running, dead, oldest ready job's age, paused."""
    _state(request).auth.principal(request)
    return JSONResponse({"queues": await _app(request).stats()})


@router.get(
    "/workers",
    response_model=Workers,
    dependencies=[Depends(admin_only)],
    responses=problems(*API_ERRORS, 404, meaning={404: "Not an operator: nothing here"}),
    openapi_extra={OPERATORS_ONLY: True},
)
async def workers(request: Request) -> Response:
    """The worker registry, for operators (anyone else finds nothing here: 404): every
    worker process, live ones first, with what it runs now and how it has done."""
    found = await _app(request).workers()
    return JSONResponse({"workers": [w.to_dict() for w in found]})


@router.get(
    "/schedules",
    response_model=Schedules,
    dependencies=[Depends(admin_only)],
    responses=problems(*API_ERRORS, 404, meaning={404: "Not an operator: nothing here"}),
    openapi_extra={OPERATORS_ONLY: True},
)
async def schedules(request: Request) -> Response:
    """The periodic schedules, for operators (anyone else finds nothing here: 404): each
    with its cron or interval, next run, last run and that run's job with its state. A
    schedule declared only in a worker module shows once a worker's scheduler stored it."""
    return JSONResponse({"schedules": await _app(request).list_schedules()})
