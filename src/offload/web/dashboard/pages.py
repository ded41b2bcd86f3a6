"""The dashboard's pages: overview, workers, jobs (list, confirmation, one job), their live
event streams and their assets. Admins only; everyone else finds nothing here (404)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request
from starlette.responses import FileResponse, RedirectResponse, Response

from ...app import DEFAULT_COUNT_CAP
from ...contract import (
    CANCELLABLE_STATES,
    FINAL_STATES,
    RETRYABLE_STATES,
    JobFilter,
    JobState,
    Throughput,
)
from ...notify.base import NOTIFY_QUEUE
from ...notify.targets import DELIVERY_KINDS
from ..auth import admin_only
from ..events import EventStreamResponse, job_events_response, owner_stream
from ..feeds import admit_stream, cursor_of, opening, unless_streaming, within_feed
from ..present import presenter_of
from ..problems import Problem
from ..routes import JOB_ID
from ..runtime import opened
from .chart import Minute, throughput_svg
from .filters import DEFAULT_PAGE_SIZE, JobQuery
from .site import DASHBOARD_PATH, STATIC, app_of, base_of, readonly, render

#: Every page and action: for admins only (404 to anyone else, as for no such path), and
#: not in the OpenAPI document (HTML for people; its errors are problem documents still).
GUARDS = [Depends(admin_only), Depends(opened)]
router = APIRouter(prefix=DASHBOARD_PATH, dependencies=GUARDS, include_in_schema=False)

#: The assets the pages load, and their media types: all served from the package.
ASSETS = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
#: The bulk actions, and how the confirmation names them.
BULK_ACTIONS = {"retry": "Retry", "cancel": "Cancel", "purge": "Purge"}
#: The states of the jobs each bulk action changes (others matching the filter stay).
BULK_STATES = {"retry": RETRYABLE_STATES, "cancel": CANCELLABLE_STATES, "purge": FINAL_STATES}
#: Changes the overview lists when it loads (newest first).
DEFAULT_RECENT_CHANGES = 20
#: Minutes of history the overview's chart shows.
DEFAULT_HISTORY_MINUTES = 60


def _minutes(history: list[Throughput]) -> list[Minute]:
    """Every queue's minutes added up, oldest first."""
    by_minute: dict[datetime, Minute] = {}
    for b in history:
        had = by_minute.get(b.minute, Minute(b.minute.timestamp(), 0, 0))
        by_minute[b.minute] = Minute(
            had.start, had.succeeded + b.succeeded, had.failed + b.failed, had.dead + b.dead
        )
    return [by_minute[m] for m in sorted(by_minute)]


async def _overview(request: Request) -> dict[str, Any]:
    app = app_of(request)
    # The feed's position before anything is read: the page's stream starts there, so a
    # change made while the page loads still redraws it.
    position = await app.last_seq()
    stats = await app.stats()
    history = _minutes(await app.history(minutes=DEFAULT_HISTORY_MINUTES))
    return {
        "queues": [{"name": name, **stats[name]} for name in sorted(stats)],
        "chart": throughput_svg(history),
        "finished": sum(m.succeeded for m in history),
        "failed": sum(m.failed for m in history),
        "dead": sum(m.dead for m in history),
        "position": position,
    }


@router.get("")
async def overview(request: Request, part: str = "") -> Response:
    """Per queue: depth by state, oldest age, paused; the last hour's throughput; the
    periodic schedules (when there are any)."""
    context = await _overview(request)
    if part == "live":  # the part the page's script fetches again when the feed moves
        return render(request, "_overview_live.html", **context)
    # The latest changes up to the page's position; its script adds those that follow.
    start = max(0, context["position"] - DEFAULT_RECENT_CHANGES)
    recent = await app_of(request).changes_since(start, limit=DEFAULT_RECENT_CHANGES)
    recent = [c for c in recent if c.seq <= context["position"]][::-1]
    schedules = await app_of(request).list_schedules()
    return render(
        request, "overview.html", active="overview", recent=recent, schedules=schedules, **context
    )


@router.get("/workers")
async def workers(request: Request) -> Response:
    """The worker registry: heartbeat age, what each runs; lost ones marked."""
    app = app_of(request)
    found = await app.workers()  # live ones first
    now = app.clock.now()
    ages = {w.id: now - w.heartbeat_at.timestamp() for w in found}
    return render(request, "workers.html", active="workers", workers=found, ages=ages)


def _choices(request: Request, query: JobQuery) -> dict[str, Any]:
    """What the filter's menus offer: every state, the app's kinds and queues, offload's
    own (the deliveries' kinds and queue), and the one asked for, if it is none of them."""
    app = app_of(request)
    return {
        "states": [state.value for state in JobState],
        "kinds": sorted({*app.kinds, *DELIVERY_KINDS, query.kind} - {""}),
        "queues_known": sorted({*app.queues, NOTIFY_QUEUE, query.queue} - {""}),
    }


@router.get("/jobs")
async def jobs(
    request: Request, cursor: Annotated[str, Query(pattern=f"^(?:{JOB_ID})?$")] = ""
) -> Response:
    """Jobs matching the filter, newest first, a page at a time (keyset: `cursor` is the
    last id of the previous page); how many match, and the actions on all of them."""
    app = app_of(request)
    query = JobQuery.of(request.query_params)
    wanted = query.to_filter()
    rows = await app.search_jobs(wanted, before=cursor or None, limit=DEFAULT_PAGE_SIZE + 1)
    page, more = rows[:DEFAULT_PAGE_SIZE], len(rows) > DEFAULT_PAGE_SIZE
    nxt = query.query_string(cursor=page[-1].id) if more else None
    # Counted up to a cap, so a page over millions of jobs stays fast (the confirmation of
    # an action counts them all).
    count = await app.count_jobs(wanted, cap=DEFAULT_COUNT_CAP)
    return render(
        request,
        "jobs.html",
        active="jobs",
        query=query,
        rows=page,
        count=f"{count:,}+" if count >= DEFAULT_COUNT_CAP else f"{count:,}",
        any_match=count > 0,
        next_query=nxt,
        first_query=query.query_string() if cursor else None,
        bulk=BULK_ACTIONS,
        **_choices(request, query),
    )


@router.get("/jobs/confirm")
async def confirm(request: Request, action: Annotated[str, Query(max_length=20)] = "") -> Response:
    """The confirmation of an action on every job matching the filter: how many."""
    if readonly(request):
        raise Problem(403, "the dashboard is read-only", slug="dashboard-read-only")
    if action not in BULK_ACTIONS:
        raise Problem(422, f"no bulk action {action[:20]!r}", slug="invalid-action")
    query = JobQuery.of(request.query_params)
    # What the action would change: of the matching jobs, those in a state it acts on.
    app = app_of(request)
    # Stamped first: the jobs counted are those created before it, and the action, when
    # confirmed, takes only those (a job created since was never shown to the operator).
    confirmed_at = f"{app.clock.now():.6f}"
    count = await app.count_jobs(
        confirmed(query.to_filter(), confirmed_at), states=BULK_STATES[action]
    )
    return render(
        request,
        "confirm.html",
        active="jobs",
        action=action,
        verb=BULK_ACTIONS[action],
        query=query,
        count=count,
        confirmed_at=confirmed_at,
    )


def confirmed(wanted: JobFilter, confirmed_at: str) -> JobFilter:
    """`wanted`, narrowed to the jobs created before the confirmation page was made (an
    epoch time it carried; anything else narrows nothing)."""
    try:
        stamp = datetime.fromtimestamp(float(confirmed_at), UTC)
    except (ValueError, OverflowError, OSError):
        return wanted
    if wanted.created_before is not None and wanted.created_before <= stamp:
        return wanted
    return dataclasses.replace(wanted, created_before=stamp)


def _pretty(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


@router.get("/jobs/{job_id}")
async def job(request: Request, job_id: str, part: str = "") -> Response:
    """One job: its envelope, attempts, progress, error with its traceback, deliveries."""
    app = app_of(request)
    row = await app.get(job_id)
    if row is None:
        raise Problem(404, f"no job {job_id[:60]}", slug="job-not-found")
    result = presenter_of(request).sign_refs(row.result, row.id)  # the job's files as links
    # The row's error is shown whole: operators see tracebacks.
    context: dict[str, Any] = {
        "row": row,
        "retryable": row.state in RETRYABLE_STATES,  # a succeeded job is not re-queued
        "result": None if result is None else _pretty(result),
        "envelope": _pretty(row.envelope().to_dict()),
        "deliveries": await app.deliveries(job_id),
    }
    if part == "detail":
        return render(request, "_job_detail.html", **context)
    return render(request, "job.html", active="jobs", **context)


@router.get("/events")
async def events(
    request: Request,
    last_event_id: Annotated[str | None, Header()] = None,
    since: Annotated[str | None, Query()] = None,
) -> Response:
    """Server-sent events of every change of every job (the change feed), from now or
    resumed after Last-Event-ID; the overview follows it."""
    position = cursor_of(last_event_id, since)
    await request.app.state.runtime.answering()  # a 503 now, not a 200 that ends at once
    hub = request.app.state.runtime.hub
    cursor = await within_feed(hub, position)
    place = admit_stream(hub)
    present = presenter_of(request).for_operators().row
    stream = owner_stream(hub, app_of(request), None, cursor, present, place=place)
    return EventStreamResponse(stream)


@router.get("/jobs/{job_id}/events")
async def job_events(
    request: Request,
    job_id: str,
    last_event_id: Annotated[str | None, Header()] = None,
) -> Response:
    """Server-sent events of one job until its final state (any owner's); 204 once it is
    final and nothing follows the position asked for."""
    row = await app_of(request).get(job_id)
    if row is None:
        raise Problem(404, f"no job {job_id[:60]}", slug="job-not-found")
    hub = request.app.state.runtime.hub
    cursor = await within_feed(hub, cursor_of(last_event_id, None)) or 0
    with opening(hub) as place:
        present = presenter_of(request).for_operators().row
        response = await job_events_response(hub, app_of(request), row, cursor, present, place)
    return unless_streaming(hub, place, response)


@router.get("/static/{name}")
async def asset(name: str) -> Response:
    """The pages' style sheet, script and icon, from the package (no CDN)."""
    media = ASSETS.get(name)
    if media is None:
        raise Problem(404, "Not Found")
    return FileResponse(STATIC / name, media_type=media, headers={"Cache-Control": "no-cache"})


async def nothing(request: Request) -> Response:
    """Whatever no page or action answers under /dashboard: nothing there (404), but for
    `/dashboard/`, the overview's address with a slash."""
    if request.method == "GET" and request.path_params.get("rest") == "":
        return RedirectResponse(base_of(request), status_code=308)
    raise Problem(404, "Not Found")
