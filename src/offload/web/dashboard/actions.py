"""The dashboard's actions: retry, cancel or purge one job or every job matching a filter,
pause and resume queues. Each is a form POST that `site.form_of` checks (read-only mode,
cross-site, CSRF token) before anything changes; then back to the page it came from."""

from __future__ import annotations

from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from starlette.responses import Response

from ...contract import JobFilter
from ...errors import InvalidTransition, JobNotFound
from ..problems import Problem
from .filters import JobQuery
from .pages import BULK_STATES, GUARDS, confirmed
from .site import DASHBOARD_PATH, app_of, back_to, form_of

router = APIRouter(prefix=DASHBOARD_PATH, dependencies=GUARDS, include_in_schema=False)


def _job_path(job_id: str) -> str:
    return f"/jobs/{quote(job_id, safe='')}"


def _plural(n: int) -> str:
    return f"{n} job{'' if n == 1 else 's'}"


@router.post("/jobs/bulk")
async def bulk(request: Request) -> Response:
    """Retry, cancel or purge every job matching the form's filter, once confirmed: the
    form carries the count the operator saw (`expected`)."""
    form = await form_of(request)
    action = form.get("action", "")
    query = JobQuery.of(form)
    if form.get("confirm") != "yes":
        raise Problem(422, "confirm the action first", slug="not-confirmed")
    app = app_of(request)
    wanted = confirmed(query.to_filter(), form.get("confirmed_at", ""))
    expected = form.get("expected", "")
    if action in BULK_STATES and expected.isdigit():
        # More jobs match than the operator confirmed (dead ones since, say): nothing
        # changes; the confirmation again, with the new count.
        now = await app.count_jobs(wanted, states=BULK_STATES[action])
        if now > int(expected):
            again = f"/jobs/confirm?{urlencode({'action': action})}&{query.query_string()}"
            said = f"{now} jobs match now, {expected} when you confirmed: nothing was done yet"
            return back_to(request, again, said)
    if action == "retry":
        done, verb = await app.retry_jobs(wanted), "Retried"
    elif action == "cancel":
        done, verb = await app.cancel_jobs(wanted), "Cancelled"
    elif action == "purge":
        done, verb = await app.delete_jobs(wanted), "Purged"
    else:
        raise Problem(422, f"no bulk action {action[:20]!r}", slug="invalid-action")
    notice = f"{verb} {_plural(done)} ({query.describe()})"
    if expected.isdigit() and int(expected) != done:
        notice += f"; {expected} matched when you confirmed"
    return back_to(request, "/jobs?" + query.query_string(), notice)


async def _one(request: Request, job_id: str, action: str) -> tuple[str, str]:
    """Carry out `action` on one job: where to go next, and what happened."""
    app = app_of(request)
    try:
        if action == "retry":
            await app.requeue(job_id)
            return _job_path(job_id), "Retried: the job is queued again"
        if action == "cancel":
            row = await app.cancel(job_id)
            if row.state.final:
                return _job_path(job_id), "Cancelled"
            return _job_path(job_id), "Cancelling: its worker is told to stop"
        purged = await app.delete_jobs(JobFilter(id_prefix=job_id))
    except JobNotFound:
        raise Problem(404, f"no job {job_id[:60]}", slug="job-not-found") from None
    except InvalidTransition as exc:
        # The page was older than the job's state: show it as it is now, and say why
        return _job_path(job_id), f"Not done: {exc}"
    if not purged:
        now = await app.get(job_id)
        state = "gone" if now is None else now.state.value
        return _job_path(job_id), f"Not purged: the job is {state} (only a finished job is)"
    return "/jobs", f"Purged job {job_id}"


@router.post("/jobs/{job_id}/{action}")
async def one(request: Request, job_id: str, action: str) -> Response:
    """Retry (requeue), cancel or purge one job."""
    if action not in ("retry", "cancel", "purge"):
        raise Problem(404, "Not Found")
    await form_of(request)
    if await app_of(request).get(job_id) is None:
        raise Problem(404, f"no job {job_id[:60]}", slug="job-not-found")
    path, notice = await _one(request, job_id, action)
    return back_to(request, path, notice)


@router.post("/queues/{queue:path}/{action}")  # (a queue's name may hold a `/`)
async def queue(request: Request, queue: str, action: str) -> Response:
    """Pause a queue (workers claim nothing more from it; running jobs finish) or resume it."""
    if action not in ("pause", "resume") or not queue.strip() or "\x00" in queue:
        raise Problem(404, "Not Found")  # (no queue has a NUL: PostgreSQL cannot store one)
    await form_of(request)
    app = app_of(request)
    if action == "pause":
        # Only a queue the overview can show (a kind routes to it, or it holds jobs): a
        # made-up name would stay paused in the overview for good.
        if queue not in app.queues and queue not in await app.stats():
            raise Problem(404, f"no queue {queue[:60]!r}", slug="queue-not-found")
        await app.pause(queue)
        return back_to(request, "", f"Paused queue {queue}")
    await app.resume(queue)
    return back_to(request, "", f"Resumed queue {queue}")
