"""The API's answers as pydantic models: what the OpenAPI document declares of each body.

The routes write their JSON themselves (the bytes are public and stay as they are); these
models describe it, field for field, so that a client generated from the document reads
every answer. A field that is sometimes absent is optional, never null: `Absent` marks it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Json
from pydantic.json_schema import SkipJsonSchema

from ..contract import JobState

#: A member a document may leave out (`x: str | Absent = None`): optional, but never null.
Absent = SkipJsonSchema[None]


def _drop_null_defaults(schema: dict[str, Any]) -> None:
    # An absent member is not a null one: no `"default": null` beside a type without null.
    for prop in schema.get("properties", {}).values():
        if "default" in prop and prop["default"] is None:
            del prop["default"]


class Answer(BaseModel):
    """Base of the documented answers."""

    model_config = ConfigDict(json_schema_extra=_drop_null_defaults)


class Progress(Answer):
    """What the handler last reported."""

    fraction: Annotated[float, Field(ge=0, le=1)] | None
    message: str | None


class JobError(Answer):
    """Why the job failed: its type and message (and, only under
    OFFLOAD_EXPOSE_TRACEBACKS=1, its traceback)."""

    model_config = ConfigDict(extra="allow")

    type: str
    message: str
    traceback: str | Absent = None


class JobLinks(Answer):
    """The job's resources, below the path the API is served at."""

    self: str
    events: str
    result: str


class StatusRecord(Answer):
    """A job as the API shows it: every answer about a job and every event carries one."""

    id: str
    kind: str
    version: int
    queue: str
    state: JobState
    priority: int
    attempt: int
    max_attempts: int
    progress: Progress | None
    result: Any = Field(description="the handler's JSON result (file references as links)")
    error: JobError | None
    created_at: datetime
    run_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    worker: str | None = Field(
        description="the worker that ran it, by a label: the same for every job one worker "
        "ran (its host and process are for operators: the CLI and the dashboard)"
    )
    links: JobLinks


class DeliveryAttempt(Answer):
    """One attempt to deliver a notification."""

    attempt: int
    at: datetime
    code: int | None = Field(description="the webhook's HTTP status, if it answered")
    error: str | None
    duration_ms: float | None


class Delivery(Answer):
    """A notification of the job's end (a webhook call or an email) and its attempts."""

    id: str
    channel: Literal["webhook", "email"]
    target: str
    state: str = Field(description="retrying, delivered, failed, refused or superseded")
    attempts: list[DeliveryAttempt]


class StatusRecordWithDeliveries(StatusRecord):
    """The status record with every webhook and email of the job and its attempts."""

    deliveries: list[Delivery]


class JobPage(Answer):
    """A page of the caller's jobs, newest first."""

    items: list[StatusRecord]
    next: str | None = Field(description="the next page (also the `Link` header); null: none")


class JobResult(Answer):
    """A succeeded job's result, file references as signed links."""

    id: str
    result: Any


class KindLimitStats(Answer):
    """One limited kind's limits across every worker, and its usage now."""

    max_running: int | None = Field(description="most jobs of the kind running at once")
    rate: str | None = Field(description='most starts per window, as declared ("100/m")')
    running: int = Field(description="jobs of the kind running now")
    recent_starts: int = Field(description="starts within the rate's window")


class QueueStats(Answer):
    """One queue's jobs by state, and the age of its oldest ready job."""

    queued: int
    scheduled: int
    running: int
    dead: int
    oldest_age_s: float
    #: Waiting jobs given back for a worker that knows their newer version, or handles
    #: their kind.
    awaiting_newer_worker: int
    paused: bool = Field(description="no worker claims its jobs until it is resumed")
    limits: dict[str, KindLimitStats] = Field(
        default_factory=dict, description="each limited kind of the queue, by kind"
    )


class Queues(Answer):
    """Every queue with jobs, a registered kind routed to it, or paused."""

    queues: dict[str, QueueStats]


class WorkerEntry(Answer):
    """One worker process in the registry (`offload.WorkerInfo`)."""

    id: str
    host: str
    pid: int
    queues: list[str] = Field(description="the queues it claims from")
    concurrency: int = Field(description="handlers it runs at once")
    version: str = Field(description="the offload version it runs")
    kinds: dict[str, list[int]] = Field(description="each kind it runs, with its versions")
    started_at: datetime
    heartbeat_at: datetime = Field(description="its last record (every heartbeat)")
    running: list[str] = Field(description="the ids of the jobs it runs now")
    held_ahead: int = Field(
        0,
        description="jobs it holds claimed ahead of a free slot (prefetch): their records "
        "say running, their handlers have not started",
    )
    processed: int = Field(description="attempts it ran to an outcome")
    failed: int = Field(description="of those, the ones that failed")
    lost: bool = Field(description="its heartbeat lapsed: killed, hung or cut off")


class Workers(Answer):
    """The worker registry: live workers first, then by start time."""

    workers: list[WorkerEntry]


class ScheduleEntry(Answer):
    """One periodic schedule (`app.periodic`): how it ticks, its next and last run."""

    name: str
    kind: str | None = None
    cron: str | None = Field(None, description="its cron expression (or null: `every_s`)")
    tz: str | None = Field(None, description="the time zone its cron expression reads")
    every_s: float | None = Field(None, description="its interval, ticking from the epoch")
    catch_up: int | None = Field(None, description="missed ticks enqueued after downtime")
    declared: bool = Field(
        description="declared in this process's app (else stored, or declared by a live worker)"
    )
    next_run: datetime | None = Field(None, description="null while it is missed")
    last_run: datetime | None = Field(None, description="the newest tick enqueued")
    last_job_id: str | None = None
    last_job_state: JobState | None = Field(None, description="null once that job is pruned")
    missed_since: datetime | None = Field(
        None,
        description="the first tick no scheduler enqueued, over a minute ago: no worker that "
        "declares the schedule runs (it was retired, or every worker is down); null while "
        "it is kept",
    )


class Schedules(Answer):
    """Every periodic schedule declared in the web process's app or stored by a worker."""

    schedules: list[ScheduleEntry]


class Ticket(Answer):
    """A short-lived ticket for /v1/ws, /v1/events and /v1/jobs/{id}/events (`?ticket=`)."""

    ticket: str
    expires_at: datetime
    websocket: str
    events: str


class Health(Answer):
    """The process serves."""

    status: Literal["ok"]


class Readiness(Answer):
    """The process serves and its backend answers."""

    status: Literal["ready"]


class ValidationIssue(Answer):
    """One reason a request is invalid: where (`loc`) and why (`msg`)."""

    model_config = ConfigDict(extra="allow")

    loc: list[str | int]
    msg: str
    type: str | Absent = None
    input: Any = None
    ctx: dict[str, Any] | Absent = None


class Problem(Answer):
    """An RFC 9457 problem document: every error answer of offload is one."""

    type: str = Field(description="a URI naming the kind of problem")
    title: str
    status: int
    detail: str
    instance: str | Absent = None
    errors: list[ValidationIssue] | Absent = Field(
        None, description="each reason a request is invalid (422)"
    )
    job: StatusRecord | Absent = Field(None, description="the job as it is now (409)")


class JobEvent(Answer):
    """One server-sent event: a change of a job. Between events the stream carries
    `retry` and `id`-only blocks and keep-alive comments."""

    # The event's `data` is JSON text: documented as a string of JSON (as requests read it)
    model_config = ConfigDict(json_schema_mode_override="validation")

    id: str = Field(description="the change's feed position: resume after it (Last-Event-ID)")
    event: JobState
    data: Json[StatusRecord]
