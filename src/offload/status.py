"""JobStatus: a job's status record as typed Python, what `Job.status()` and `Job.wait()` return."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .contract import JobState


class Progress(BaseModel):
    """What the handler last reported with `ctx.progress()`."""

    model_config = ConfigDict(frozen=True)

    #: Done so far, 0 to 1 (None when only a message was given).
    fraction: float | None = None
    message: str | None = None


class JobFailure(BaseModel):
    """How the job's last attempt went wrong: the exception's type and message (and its
    traceback where the record carries one)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    type: str
    message: str = ""
    traceback: str | None = None


class JobStatus(BaseModel):
    """A job's status record (`contract.status_record`, with its deliveries), typed: the
    same fields the HTTP API, the CLI and events show, with `state` as a `JobState` and
    times as aware UTC datetimes.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    kind: str
    version: int
    queue: str
    state: JobState
    priority: int
    attempt: int
    max_attempts: int
    progress: Progress | None = None
    #: The handler's JSON result (a blob reference for a stored file), once succeeded.
    result: Any = None
    error: JobFailure | None = None
    created_at: datetime
    #: Not before this time (a delay, a schedule, or the backoff before a retry).
    run_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: Who ran (or runs) it.
    worker: str | None = None
    #: The job's routes in the HTTP API: self, events, result.
    links: dict[str, str] = Field(default_factory=dict)
    #: Every webhook and email notification of the job, each with its attempts.
    deliveries: list[dict[str, Any]] = Field(default_factory=list)

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> JobStatus:
        """The typed form of a status record (as `App.status` returns it)."""
        return cls.model_validate(record)
