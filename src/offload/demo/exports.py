"""A user's exports (reports, thumbnail sets) as the pages show them, backed by offload jobs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from ..app import App
from ..contract import JobRow, JobState, Message
from ..web.present import Presenter
from .contracts import ExportReport, MakeThumbnails
from .data import DemoUser, period_label

#: Kind names the pages list.
REPORT_KIND = "demo.report"
THUMBNAILS_KIND = "demo.thumbnails"


@dataclass(frozen=True, slots=True)
class JobView:
    """One export as a page row: state, progress, and (when done) signed result links."""

    id: str
    kind: str
    state: str
    final: bool
    percent: int
    message: str
    created_at: datetime | None
    payload: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    inline: bool = False

    @property
    def title(self) -> str:
        if self.kind == REPORT_KIND:
            return f"Sales report · {period_label(str(self.payload.get('period', '')))}"
        return str(self.payload.get("filename") or "image")

    @property
    def created(self) -> str:
        return f"{self.created_at:%d %b %Y, %H:%M:%S} UTC" if self.created_at else ""


def job_view(record: dict[str, Any], payload: dict[str, Any], *, inline: bool = False) -> JobView:
    """A view of a status record (with signed links) and the job's message."""
    progress = record.get("progress") or {}
    state = str(record["state"])
    final = JobState(state).final
    fraction = progress.get("fraction")
    if state == JobState.SUCCEEDED:
        fraction = 1.0
    error = record.get("error") or None
    created = record.get("created_at")
    return JobView(
        id=str(record["id"]),
        kind=str(record["kind"]),
        state=state,
        final=final,
        percent=round(100 * (fraction or 0.0)),
        message=str(progress.get("message") or ("waiting for a worker" if not final else "")),
        created_at=datetime.fromisoformat(created) if created else None,
        payload=payload,
        result=record.get("result") if state == JobState.SUCCEEDED else None,
        # Users see the message only; tracebacks are for operators (offload jobs show).
        error=str(error.get("message") or error.get("type")) if error and final else None,
        inline=inline,
    )


class Exports(Protocol):
    """Where the pages start and find exports: offload jobs, or work done inline."""

    inline: bool

    async def list(self, owner: str, kind: str, limit: int = 25) -> list[JobView]: ...

    async def get(self, owner: str, job_id: str) -> JobView | None: ...

    async def export_report(self, user: DemoUser, period: str) -> JobView: ...

    async def make_thumbnails(self, user: DemoUser, image_key: str, filename: str) -> JobView: ...


class QueuedExports:
    """The pattern: each export is a job the web tier enqueues and a worker runs."""

    inline = False

    def __init__(self, app: App, present: Presenter) -> None:
        self.app = app
        self.present = present

    def _view(self, row: JobRow) -> JobView:
        return job_view(self.present.row(row), row.payload)

    async def list(self, owner: str, kind: str, limit: int = 25) -> list[JobView]:
        rows = await self.app.list_jobs(owner=owner, kind=kind, limit=limit)
        return [self._view(r) for r in rows]

    async def get(self, owner: str, job_id: str) -> JobView | None:
        row = await self.app.get(job_id, owner=owner)
        return None if row is None else self._view(row)

    async def _enqueued(self, message: Message, owner: str) -> JobView:
        # `submit`, as the HTTP API does: the new job's row comes from its envelope, with
        # no second round trip to read it back (a burst of clicks queues half as much).
        _job, row = await self.app.submit(self.app.envelope(message, owner=owner))
        return self._view(row)

    async def export_report(self, user: DemoUser, period: str) -> JobView:
        return await self._enqueued(ExportReport(user_id=user.id, period=period), user.id)

    async def make_thumbnails(self, user: DemoUser, image_key: str, filename: str) -> JobView:
        message = MakeThumbnails(image_key=image_key, filename=filename)
        return await self._enqueued(message, user.id)
