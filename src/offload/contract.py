"""The records passed across seams: Message, Envelope, JobState, Lease, Outcome, status records."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson
from pydantic import BaseModel, ConfigDict

from ._ids import uuid7_floor
from .clock import iso

#: Version of the envelope's JSON form (the wire contract).
ENVELOPE_VERSION = 1

#: Most levels of objects and arrays in a message's JSON, or a job's result. Every record
#: that carries one (a status record, an event, a webhook) nests it a few levels deeper,
#: and JSON encoders stop at about 255 levels: a value stored any deeper could be stored,
#: but never served.
MAX_NESTING = 100


class UnstorableMessage(ValueError):
    """A message no engine could store, or not every engine alike; nothing was stored."""


class UnencodableMessage(UnstorableMessage, TypeError):
    """A message holds a value JSON cannot carry (an integer past 64 bits, text that is no
    UTF-8): a `TypeError` as ever, and an `UnstorableMessage`."""


class NestedTooDeep(UnstorableMessage):
    """A message nests objects and arrays more than `MAX_NESTING` levels deep."""


def nested_deeper(value: Any, limit: int = MAX_NESTING) -> bool:
    """Whether `value` (JSON as Python: dicts, lists, tuples) nests more than `limit` levels
    of them (`{"a": [1]}` nests 2). Visits each container once, level by level."""
    if not isinstance(value, _CONTAINERS):
        return False
    level, depth = [value], 0
    while level:
        if depth == limit:
            return True
        depth += 1
        level = [
            item
            for container in level
            for item in (container.values() if isinstance(container, dict) else container)
            if isinstance(item, _CONTAINERS)
        ]
    return False


_CONTAINERS = (dict, list, tuple)


class Message(BaseModel):
    """Base class of every message kind: a pydantic v2 model that is the queue contract.

    `App.message` stamps `__kind__`, `__version__` and `__queue__` on the subclass.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    __kind__: ClassVar[str] = ""
    __version__: ClassVar[int] = 1
    __queue__: ClassVar[str] = "default"


@dataclass(frozen=True, slots=True)
class FromPrincipal:
    """Marks a message field that the web tier fills from the authenticated caller.

    Use it as `user_id: Annotated[str, FromPrincipal()]`. Over HTTP the field is the
    caller's principal and a client that sends it is refused (422), so no caller can act
    in another's name; Python code (`app.enqueue`) sets it explicitly, validated as usual.
    """


def principal_fields(cls: type[BaseModel]) -> tuple[str, ...]:
    """The input keys (validation alias, else alias, else name) of the fields of `cls`
    marked `FromPrincipal`.

    Raises:
        TypeError: a marked field is not a `str` (a principal is one).
    """
    keys = []
    for name, info in cls.model_fields.items():
        if any(isinstance(m, FromPrincipal) for m in info.metadata):
            if info.annotation is not str:
                raise TypeError(f"{cls.__name__}.{name} is FromPrincipal, so it must be a str")
            read = info.validation_alias  # the key a request body is read by
            keys.append(read if isinstance(read, str) else info.alias or name)
    return tuple(keys)


class JobState(enum.StrEnum):
    """Where a job is in its life.

    queued ──claim──▶ running ──▶ succeeded
       ▲                 │  ├───▶ failed      (a permanent error: no retry)
       │                 │  ├───▶ cancelled   (DELETE, or the handler raised Cancel)
       │                 │  └───▶ dead        (retry budget spent)
       └── retrying ◀────┘        (failed attempt, budget left: queued with later run_at)
    queued / retrying ──cancel──▶ cancelled;   dead / failed / cancelled ──requeue──▶ queued
    """

    QUEUED = "queued"
    RETRYING = "retrying"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DEAD = "dead"

    @property
    def final(self) -> bool:
        return self in FINAL_STATES

    @property
    def waiting(self) -> bool:
        return self in (JobState.QUEUED, JobState.RETRYING)


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.DEAD})


def _ts_out(value: float | None) -> str | None:
    return iso(value)


def _ts_in(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC).timestamp()


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """One queued job: the message and everything needed to route, run and authorize it.

    Timestamps are float epoch seconds inside; the JSON form carries RFC 3339 strings.
    """

    id: str
    kind: str
    version: int
    payload: dict[str, Any]
    queue: str
    priority: int = 0
    attempt: int = 0
    max_attempts: int = 3
    run_at: float
    enqueued_at: float
    idempotency_key: str | None = None
    owner: str = "local"
    trace: dict[str, str] | None = None
    timeout: float | None = None
    #: Delivery options (callback_url, notify_email); not part of the message.
    options: dict[str, Any] = field(default_factory=dict)
    #: The kind's unique key of this job (`_unique.unique_key`: kind, owner and the chosen
    #: fields, hashed), or None where its kind is not unique.
    unique_key: str | None = None
    #: While which states the key holds: "queued" (waiting, never started) or "active"
    #: (waiting or running); None with no `unique_key`.
    unique: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["run_at"] = _ts_out(self.run_at)
        data["enqueued_at"] = _ts_out(self.enqueued_at)
        return {"v": ENVELOPE_VERSION, **data}

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Envelope:
        data = dict(data)
        v = data.pop("v", ENVELOPE_VERSION)
        if v != ENVELOPE_VERSION:
            raise ValueError(f"unsupported envelope version {v!r}")
        data["run_at"] = _ts_in(data["run_at"])
        data["enqueued_at"] = _ts_in(data["enqueued_at"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: val for k, val in data.items() if k in known})

    @classmethod
    def from_json(cls, raw: bytes | str) -> Envelope:
        return cls.from_dict(orjson.loads(raw))


@dataclass(frozen=True, slots=True, kw_only=True)
class Lease:
    """A claimed job. `token` fences it: transitions with a stale token change nothing."""

    envelope: Envelope
    token: str
    expires_at: float
    worker: str

    @property
    def job_id(self) -> str:
        return self.envelope.id


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """How an attempt ended, as the worker reports it to the backend in `settle`.

    Args:
        state: succeeded, failed, cancelled, dead, retrying (with `run_at`) or queued (release).
        result: the handler's JSON result, for succeeded.
        error: {type, message, traceback} for failures.
        run_at: when to run again, for retrying.
        refund: release without spending the attempt (shutdown).
        max_attempts: the handler's retry budget, stored when it overrides the message's.
        follow_ups: jobs to enqueue in the same transaction if, and only if, this outcome
            applies (the lease was still held): notifications of a final state.
        on_cancel: for an outcome that runs the job again (retrying, or given back), the
            notifications of a cancelled end, enqueued in the same transaction if, and only
            if, the backend ends the job cancelled instead: a cancel was asked for while it
            ran, and its worker had not heard (`Settled.cancelled`).
    """

    lease: Lease
    state: JobState
    result: Any = None
    error: dict[str, Any] | None = None
    run_at: float | None = None
    refund: bool = False
    max_attempts: int | None = None
    follow_ups: tuple[Envelope, ...] = ()
    on_cancel: tuple[Envelope, ...] = ()


class Settled(list[bool]):
    """What `settle` (or `rescue`) did with each outcome: True where it applied, False where
    the lease was stale; and `cancelled`, the jobs of applied outcomes that were to run again
    which the backend ended cancelled instead (a cancel asked for while they ran), their
    `on_cancel` notifications enqueued with that end. A list still: it compares as one."""

    cancelled: frozenset[str]

    def __init__(self, applied: Iterable[bool] = (), cancelled: Iterable[str] = ()) -> None:
        super().__init__(applied)
        self.cancelled = frozenset(cancelled)


@dataclass(frozen=True, slots=True, kw_only=True)
class Lapsed:
    """A running job whose lease expired: its worker stopped heartbeating (killed, hung or
    cut off). A fact the backend reports; the worker decides what becomes of the job and
    hands the decision back as an `Outcome` to `rescue`.

    Args:
        lease: the lapsed lease (its token fences the decision; `expires_at` is when it
            lapsed; `worker` is who held it); the envelope counts the attempt it spent.
        cancel_requested: a cancel was asked for while it ran.
    """

    lease: Lease
    cancel_requested: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class EnqueueResult:
    """What `enqueue` did with one envelope: `created` is False for an idempotent repeat
    and for a unique repeat (`unique_repeat`: a job holding the same unique key was stored;
    `id` names it)."""

    id: str
    created: bool
    unique_repeat: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleState:
    """What the backend keeps of one periodic schedule: the newest tick enqueued (by any
    process) and its job, and how the schedule ticks (`periodic.Schedule.spec`) as of then."""

    name: str
    last_tick: float
    last_job_id: str
    #: When that tick was enqueued (epoch seconds, the enqueuing process's clock).
    fired_at: float
    spec: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class KindLimits:
    """The fleet-wide limits of one kind (`App.handles(max_running=, rate=)`), as workers
    declare them to the backend, which applies them inside every claim of the kind's queue;
    read back (`Backend.limits`) with the usage as of then."""

    kind: str
    queue: str
    #: Jobs of the kind running at once across every worker (None: no cap).
    max_running: int | None = None
    #: Starts of the kind allowed within any `per_s` seconds (None: no rate).
    rate: int | None = None
    per_s: float | None = None
    #: Usage, as read back: jobs of the kind running (holding a lease not yet rescued), and
    #: starts within the last `per_s` seconds.
    running: int = 0
    recent_starts: int = 0

    @property
    def limited(self) -> bool:
        return self.max_running is not None or self.rate is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class Extension:
    """The answer of a heartbeat for one lease."""

    job_id: str
    held: bool
    cancel_requested: bool = False
    #: Whether the lease was renewed: False for one still held whose row another
    #: transaction had locked (PostgreSQL passes over it rather than wait, so one locked row
    #: holds up no other lease of the heartbeat); it lapses as before unless a later
    #: heartbeat renews it.
    renewed: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRow:
    """A stored job as every backend returns it (get, list_jobs, cancel, requeue) and as the
    change feed carries it. Times are float epoch seconds.

    A feed entry carries what a status record shows, not the message: its `payload`,
    `options`, `trace`, `idempotency_key` and `timeout` are empty there.
    """

    id: str
    kind: str
    version: int
    queue: str
    state: JobState
    priority: int
    attempt: int
    max_attempts: int
    run_at: float
    enqueued_at: float
    owner: str
    payload: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None
    trace: dict[str, str] | None = None
    timeout: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    worker: str | None = None
    cancel_requested: bool = False
    progress_fraction: float | None = None
    progress_message: str | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    started_at: float | None = None
    finished_at: float | None = None

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> JobRow:
        """The one codec: a backend's decoded row (column name to value; JSON columns
        parsed, times as epoch seconds, absent columns taken as empty) as a JobRow."""
        get = row.get
        timeout, started, finished = get("timeout"), get("started_at"), get("finished_at")
        fraction = get("progress_fraction")
        return cls(
            id=str(row["id"]),
            kind=row["kind"],
            version=int(row["version"]),
            queue=row["queue"],
            state=JobState(row["state"]),
            priority=int(row["priority"]),
            attempt=int(row["attempt"]),
            max_attempts=int(row["max_attempts"]),
            run_at=float(row["run_at"]),
            enqueued_at=float(row["enqueued_at"]),
            owner=row.get("owner") or "",
            payload=get("payload") or {},
            idempotency_key=get("idempotency_key"),
            trace=get("trace"),
            timeout=None if timeout is None else float(timeout),
            options=get("options") or {},
            worker=get("worker"),
            cancel_requested=bool(get("cancel_requested")),
            progress_fraction=None if fraction is None else float(fraction),
            progress_message=get("progress_message"),
            result=get("result"),
            error=get("error"),
            started_at=None if started is None else float(started),
            finished_at=None if finished is None else float(finished),
        )

    @classmethod
    def of_envelope(cls, e: Envelope) -> JobRow:
        """The row an envelope is stored as, before anything happened to it."""
        return cls(
            id=e.id,
            kind=e.kind,
            version=e.version,
            queue=e.queue,
            state=JobState.QUEUED,
            priority=e.priority,
            attempt=e.attempt,
            max_attempts=e.max_attempts,
            run_at=e.run_at,
            enqueued_at=e.enqueued_at,
            owner=e.owner,
            payload=e.payload,
            idempotency_key=e.idempotency_key,
            trace=e.trace,
            timeout=e.timeout,
            options=e.options,
        )

    def envelope(self) -> Envelope:
        """The envelope of the stored job (its attempt as counted now)."""
        return Envelope(
            id=self.id,
            kind=self.kind,
            version=self.version,
            payload=self.payload,
            queue=self.queue,
            priority=self.priority,
            attempt=self.attempt,
            max_attempts=self.max_attempts,
            run_at=self.run_at,
            enqueued_at=self.enqueued_at,
            idempotency_key=self.idempotency_key,
            owner=self.owner,
            trace=self.trace,
            timeout=self.timeout,
            options=self.options,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerInfo:
    """One worker process as the registry shows it (`App.workers`, `offload workers`,
    `GET /v1/workers`): what it is, what it runs and how it is doing.

    A worker records itself on start and on every heartbeat (`heartbeat_at` is the backend's
    clock at its last record) and deletes its entry on a clean stop. `lost`: its last record
    is older than `brokers.base.WORKER_LOST_AFTER_S` (three heartbeats missed: killed, hung
    or cut off); such entries are deleted after `brokers.base.FORGET_WORKER_AFTER_S`.
    """

    id: str
    host: str
    pid: int
    #: The queues it claims from.
    queues: tuple[str, ...]
    #: Handlers it runs at once.
    concurrency: int
    #: The offload version it runs.
    version: str
    #: The message kinds it runs, each with the versions it takes (oldest first).
    kinds: dict[str, tuple[int, ...]]
    started_at: datetime
    heartbeat_at: datetime
    #: The ids of the jobs whose handlers run now (as of its last record).
    running: tuple[str, ...] = ()
    #: How many jobs it holds claimed ahead of its free slots (prefetch), which show as
    #: `running` in their records but whose handlers have not started.
    held_ahead: int = 0
    #: Attempts it ran to an outcome, and how many of those failed (retrying, dead, failed).
    processed: int = 0
    failed: int = 0
    lost: bool = False
    #: The periodic schedules its app declares (each runs its scheduler), by name: how each
    #: ticks (`periodic.Schedule.spec`), for listings before a schedule's first tick.
    schedules: dict[str, dict[str, Any]] = field(default_factory=dict)

    def entry(self) -> dict[str, Any]:
        """What a backend stores of the worker (JSON): everything but `heartbeat_at` (the
        backend stamps it) and `lost` (read off that stamp)."""
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "queues": list(self.queues),
            "concurrency": self.concurrency,
            "version": self.version,
            "kinds": {kind: list(versions) for kind, versions in self.kinds.items()},
            "started_at": self.started_at.timestamp(),
            "running": list(self.running),
            "held_ahead": self.held_ahead,
            "processed": self.processed,
            "failed": self.failed,
            "schedules": self.schedules,
        }

    def to_dict(self) -> dict[str, Any]:
        """The worker as JSON shows it (`offload workers --json`, `GET /v1/workers`): the
        fields but its schedules (`offload schedules` lists them), times as RFC 3339
        strings."""
        entry = self.entry()
        del entry["schedules"]
        return {
            **entry,
            "started_at": iso(self.started_at.timestamp()),
            "heartbeat_at": iso(self.heartbeat_at.timestamp()),
            "lost": self.lost,
        }

    @classmethod
    def of(cls, entry: Mapping[str, Any], *, heartbeat_at: float, lost: bool) -> WorkerInfo:
        """The one codec: a stored `entry` (parsed JSON), stamped `heartbeat_at` (epoch
        seconds, the backend's clock), as a WorkerInfo."""
        return cls(
            id=str(entry["id"]),
            host=str(entry["host"]),
            pid=int(entry["pid"]),
            queues=tuple(entry["queues"]),
            concurrency=int(entry["concurrency"]),
            version=str(entry["version"]),
            kinds={kind: tuple(versions) for kind, versions in entry["kinds"].items()},
            started_at=datetime.fromtimestamp(float(entry["started_at"]), UTC),
            heartbeat_at=datetime.fromtimestamp(heartbeat_at, UTC),
            running=tuple(entry.get("running", ())),
            held_ahead=int(entry.get("held_ahead", 0)),
            processed=int(entry.get("processed", 0)),
            failed=int(entry.get("failed", 0)),
            lost=lost,
            schedules=dict(entry.get("schedules") or {}),
        )


#: The states a bulk retry re-queues (as `requeue` does one job).
RETRYABLE_STATES = frozenset({JobState.DEAD, JobState.FAILED, JobState.CANCELLED})
#: The states a bulk cancel acts on: waiting jobs end cancelled, running ones are flagged.
CANCELLABLE_STATES = frozenset({JobState.QUEUED, JobState.RETRYING, JobState.RUNNING})
#: The states of the jobs `history` counts per minute.
HISTORY_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.DEAD)

_HEX = frozenset("0123456789abcdef")
#: How far apart a job's id time and its `enqueued_at` may be (seconds): `App.envelope`
#: mints both from one reading of the app's clock, so they differ by a millisecond at most.
#: The created filters narrow their scan to the ids of their time range widened by this.
ID_TIME_SLACK_S = 60.0


def _aware(name: str, value: datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError(f"{name} must be an aware datetime (with a time zone)")
    return value.timestamp()


@dataclass(frozen=True, slots=True, kw_only=True)
class JobFilter:
    """Which jobs an operator means (the dashboard's jobs page, `offload jobs list`, and the
    bulk actions): every field given must match; an empty filter matches every job.

    Args:
        state: a `JobState` value.
        kind, queue, owner: exact names.
        created_after: created (enqueued) at or after this aware time.
        created_before: created before this aware time.
        id_prefix: the job's id starts with it (a UUID prefix may leave its dashes out and
            is compared in lower case).
        text: a case-insensitive substring of the message's JSON text (its field names and
            values; letters outside ASCII match case-sensitively on SQLite and Redis).

    Raises:
        ValueError: an unknown state, a naive datetime, an empty `id_prefix` / `text`, or
            a NUL character in a name or text.
    """

    state: str | None = None
    kind: str | None = None
    queue: str | None = None
    owner: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    id_prefix: str | None = None
    text: str | None = None

    def __post_init__(self) -> None:
        if self.state is not None:
            JobState(self.state)  # ValueError names the bad value
        _aware("created_after", self.created_after)
        _aware("created_before", self.created_before)
        if self.id_prefix is not None and not self.id_prefix.strip():
            raise ValueError("id_prefix must not be empty")
        if self.text is not None and not self.text:
            raise ValueError("text must not be empty")
        for name in ("kind", "queue", "owner", "id_prefix", "text"):
            if "\x00" in (getattr(self, name) or ""):  # (PostgreSQL cannot hold one)
                raise ValueError(f"{name} cannot hold a NUL character: no job has one")

    @property
    def after_s(self) -> float | None:
        """`created_after` as epoch seconds."""
        return _aware("created_after", self.created_after)

    @property
    def before_s(self) -> float | None:
        """`created_before` as epoch seconds."""
        return _aware("created_before", self.created_before)

    def id_bounds(self) -> tuple[str | None, str | None]:
        """Ids below which (low, inclusive) and from which on (high, exclusive) no job of the
        created range can be, from the time of UUIDv7 ids (widened by `ID_TIME_SLACK_S`):
        so a date range reads its stretch of the id index, newest first, and stops."""
        after, before = self.after_s, self.before_s
        return (
            None if after is None else uuid7_floor(after - ID_TIME_SLACK_S),
            None if before is None else uuid7_floor(before + ID_TIME_SLACK_S),
        )

    def id_range(self) -> tuple[str, str] | None:
        """The ids `id_prefix` covers as a half-open range [low, high) of strings (None when
        no prefix is given). A UUID prefix is made canonical first: lower case, dashes at
        their places (`0193A1C20` starts `0193a1c2-0`)."""
        if self.id_prefix is None:
            return None
        low = uuid_prefix(self.id_prefix) or self.id_prefix.strip()
        return low, low[:-1] + chr(ord(low[-1]) + 1)

    def kind_states(self, states: Collection[str] | None = None) -> list[str] | None:
        """The states to read this filter's kind in one at a time, when it names a kind but
        not one state: the distinct `states` if given, else every state. None otherwise.

        The SQL backends keep no index of the kind alone (one more for every enqueue and
        every change of state to write): a kind's page is read off (state, kind, id), one
        range per state, the newest of each merged.
        """
        if self.kind is None or self.state is not None:
            return None
        return sorted({s.value for s in JobState} if states is None else set(states))


def uuid_prefix(prefix: str) -> str | None:
    """The canonical form (lower case, dashed) of a UUID prefix, or None when `prefix` is
    not one (other than hex digits and dashes, or longer than a UUID)."""
    digits = prefix.strip().replace("-", "").lower()
    if not digits or len(digits) > 32 or not set(digits) <= _HEX:
        return None
    cuts = [c for c in (8, 12, 16, 20) if c < len(digits)]
    parts = [digits[a:b] for a, b in zip([0, *cuts], [*cuts, len(digits)], strict=True)]
    return "-".join(parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class Throughput:
    """How many jobs of one queue ended in one minute (`App.history`).

    Args:
        minute: the start of the minute (aware UTC).
    """

    minute: datetime
    queue: str
    succeeded: int = 0
    failed: int = 0
    dead: int = 0


#: The keys of a stored error that a public status record shows.
PUBLIC_ERROR_KEYS = ("type", "message")


def public_error(error: dict[str, Any] | None) -> dict[str, Any] | None:
    """A stored error as clients see it: its type and message, never the traceback (server
    paths and source lines are for operators)."""
    if error is None:
        return None
    return {k: error[k] for k in PUBLIC_ERROR_KEYS if k in error}


def status_record(
    row: JobRow, *, prefix: str = "/v1/jobs", tracebacks: bool = False
) -> dict[str, Any]:
    """The status record as the API, the CLI, notifications and every event show a job: the
    one place a row is presented (links under `prefix`, times as RFC 3339).

    Args:
        tracebacks: show the stored error whole, traceback included (operators, and API
            answers under OFFLOAD_EXPOSE_TRACEBACKS=1); else its type and message only.
    """
    job_id = row.id
    fraction, message = row.progress_fraction, row.progress_message
    progress = (
        None if fraction is None and message is None else {"fraction": fraction, "message": message}
    )
    return {
        "id": job_id,
        "kind": row.kind,
        "version": row.version,
        "queue": row.queue,
        "state": row.state.value,
        "priority": row.priority,
        "attempt": row.attempt,
        "max_attempts": row.max_attempts,
        "progress": progress,
        "result": row.result,
        "error": row.error if tracebacks else public_error(row.error),
        "created_at": iso(row.enqueued_at),
        "run_at": iso(row.run_at),
        "started_at": iso(row.started_at),
        "finished_at": iso(row.finished_at),
        "worker": row.worker,
        "links": {
            "self": f"{prefix}/{job_id}",
            "events": f"{prefix}/{job_id}/events",
            "result": f"{prefix}/{job_id}/result",
        },
    }
