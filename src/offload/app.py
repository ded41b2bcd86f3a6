"""App: the registry of message kinds and handlers, and the enqueue façade."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import inspect
import logging
import threading
import types
import typing
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast
from zoneinfo import ZoneInfo

from . import _claim_check as claim_check
from . import _payloads, tracing
from ._bulk import DEFAULT_BULK_BATCH, minutes_since, throughput, walk
from ._bulk import DEFAULT_COUNT_CAP as DEFAULT_COUNT_CAP  # re-exported: the dashboard's cap
from ._erase import ERASE_WAIT_S, Erasure, erase_owner
from ._group import GroupCommit
from ._ids import uuid7, uuid7_block
from ._loop import is_async_callable, running_loop
from ._options import BATCH_KEY_MARK, DEFAULT_OWNER, LATEST_RUN_AT, JobOptions
from ._sync import SyncRunner, start_lock
from ._unique import UniqueMode, unique_fields, unique_key
from .brokers import Backend, Capability, name_memory, open_backend
from .brokers.base import (
    EMPTY_QUEUE_STATS,
    WORKER_LOST_AFTER_S,
    BlockingEnqueue,
    Change,
    StreamedEnqueue,
    WalWatch,
)
from .clock import Clock
from .clock import seconds as _seconds
from .context import SyncContext
from .contract import (
    CANCELLABLE_STATES,
    FINAL_STATES,
    MAX_NESTING,
    RETRYABLE_STATES,
    EnqueueResult,
    Envelope,
    JobFilter,
    JobRow,
    JobState,
    KindLimits,
    Message,
    NestedTooDeep,
    Throughput,
    WorkerInfo,
    nested_deeper,
    principal_fields,
    status_record,
)
from .errors import ConfigurationError, JobNotFound, UnknownKind
from .job import Job as Job  # re-exported: enqueue's answer
from .limits import format_rate, parse_rate
from .metrics import NO_METRICS, NoMetrics
from .notify import base as _notify
from .notify.base import EmailTemplate
from .notify.targets import callback_url_error, follow_ups_of_row
from .notify.targets import delivery_option_errors as delivery_option_errors  # re-exported
from .periodic import PERIODIC_OWNER, Schedule, declare, listing
from .retry import Backoff
from .settings import Settings
from .stores import BlobStore, open_blobs
from .versions import WORKER_LIVE_S, LiveVersions

M = TypeVar("M", bound=type[Message])
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
#: An upgrader: a payload of one version in, the next version's payload (or message) out.
Upgrader = Callable[[dict[str, Any]], "dict[str, Any] | Message"]
#: An upgrader as its module declares it: `upgrade` keeps its own type (a test calls it).
U = TypeVar("U", bound=Upgrader)

#: Attempts a job gets when neither the message nor the handler says otherwise.
DEFAULT_MAX_ATTEMPTS = 5
#: Jobs per chunk of a bulk enqueue sent as it is stamped (`App._store_streamed`): large
#: enough that a chunk's statement costs little more per job than one of 10,000, small
#: enough that the first goes soon (bench/RESULTS.md, "pg-bulk-overlap").
STREAM_CHUNK = 1000
#: Queue of a kind declared without one.
DEFAULT_QUEUE = "default"
log = logging.getLogger("offload")
#: The name of the task that closes a loop's backend as that loop ends (`App._hold`).
_HOLD_TASK = "offload-app-open"
#: How often a caller waiting for another's open looks whether that open's loop ended.
OPEN_RECHECK_S = 0.5
_ANOTHER_LOOP = (
    "app {name!r} is open on another event loop, which still runs (another thread's): its "
    "connections belong to that loop. Use an App from one loop, or call the *_sync methods "
    "from other threads"
)


@dataclass(eq=False)
class _Opening:
    """An open of an App's backend under way (`App._ensure_open`): on which loop, whether
    its connections will belong to that loop, and done once it ended (opened or not)."""

    loop: asyncio.AbstractEventLoop
    bound: bool
    done: concurrent.futures.Future[None] = dataclasses.field(
        default_factory=concurrent.futures.Future
    )

    def __post_init__(self) -> None:
        self.done.set_running_or_notify_cancel()  # a waiter's cancel must not cancel it


@dataclass(frozen=True, slots=True)
class MessageSpec:
    """A registered message kind."""

    cls: type[Message]
    kind: str
    version: int
    queue: str
    max_attempts: int
    timeout: float | None
    #: Webhook target of every job of this kind that names none itself.
    callback_url: str | None = None
    #: Submittable over HTTP (`POST /v1/jobs/{kind}`); False: only from Python code.
    http: bool = True
    #: Input keys of the fields the web tier fills from the caller (`FromPrincipal`).
    principal_fields: tuple[str, ...] = ()
    #: Its queue is fair: workers claim its jobs round-robin across owners.
    fair: bool = False
    #: "queued" or "active" for a unique kind (see `_unique`), else None.
    unique: str | None = None
    #: The fields its unique key is made of; () is the whole payload.
    unique_key: tuple[str, ...] = ()


def _builtin_kinds() -> dict[str, MessageSpec]:
    """The delivery kinds every App knows (webhook, email), on the notify queue."""
    specs = {}
    for cls, kind in (
        (_notify.WebhookDelivery, _notify.WEBHOOK_KIND),
        (_notify.EmailDelivery, _notify.EMAIL_KIND),
    ):
        cls.__kind__, cls.__version__, cls.__queue__ = kind, 1, _notify.NOTIFY_QUEUE
        specs[kind] = MessageSpec(
            cls,
            kind,
            1,
            _notify.NOTIFY_QUEUE,
            _notify.DEFAULT_NOTIFY_ATTEMPTS,
            _notify.DEFAULT_NOTIFY_TIMEOUT_S,
        )
    return specs


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """A registered handler: how one kind is run."""

    fn: Callable[..., Any]
    message: MessageSpec
    max_attempts: int | None
    timeout: float | None
    backoff: Backoff
    is_async: bool
    #: Jobs of the kind running at once across every worker (None: no cap).
    max_running: int | None = None
    #: Starts of the kind allowed within any `per_s` seconds (`rate="100/m"`; None: none).
    rate: tuple[int, float] | None = None
    #: Why this process's code cannot run a message of the kind, or None: such a job is
    #: given back unspent before it starts, for a worker whose code can (a Django task
    #: deployed to the web tier before the workers).
    unready: Callable[[Any], str | None] | None = None

    def limits(self) -> KindLimits:
        """The kind's fleet-wide limits as a worker declares them to the backend."""
        count, per_s = self.rate or (None, None)
        return KindLimits(
            kind=self.message.kind,
            queue=self.message.queue,
            max_running=self.max_running,
            rate=count,
            per_s=per_s,
        )


class _Batch:
    """The messages of one `enqueue_many` with its options, checked once: each kind's spec
    and retry budget found once, one moment for them all, their ids reserved in order
    (`uuid7_block`). Raises, when made, what `App.envelope` would for any of them."""

    def __init__(self, app: App, messages: Sequence[Message], o: JobOptions) -> None:
        self.messages = messages if isinstance(messages, list | tuple) else list(messages)
        self.o = o
        self.kinds: dict[type[Message], tuple[MessageSpec, int]] = {}
        for cls in dict.fromkeys(type(m) for m in self.messages):
            spec = app.spec_of(cls)
            self.kinds[cls] = spec, app._budget_of(spec)
        self.now, self.when, self.options = app._moment(
            o.delay, o.run_at, o.callback_url, o.notify_email
        )
        self.ids = uuid7_block(len(self.messages), self.now)

    @property
    def keyless(self) -> bool:
        """No idempotency key and no unique kind: what a streamed enqueue takes."""
        return self.o.idempotency_key is None and all(
            spec.unique is None for spec, _ in self.kinds.values()
        )

    def stamp(
        self, start: int = 0, stop: int | None = None, trace: dict[str, str] | None = None
    ) -> list[Envelope]:
        """The envelopes of messages `start` to `stop` (all by default)."""
        stop = len(self.messages) if stop is None else stop
        o, now, when, options = self.o, self.now, self.when, self.options
        envelopes = []
        key = o.idempotency_key
        for i, (message, job_id) in enumerate(
            zip(self.messages[start:stop], self.ids(start, stop), strict=True), start
        ):
            spec, budget = self.kinds[type(message)]
            sealed = App._sealed(
                message, spec, job_id, now, when, options, o.owner, o.priority, budget,
                batch_key(key, i), trace,
            )  # fmt: skip
            envelopes.append(sealed)
        return envelopes


def _values(message: Message) -> dict[str, Any] | None:
    """The message as Python values, for its unique key (`canonical`: sets and times), or
    None where it cannot be dumped so (a frozenset of models: unhashable as dicts): its
    payload alone makes the key then."""
    try:
        return _payloads.values_of(message)
    except Exception:
        return None


def batch_key(key: str | None, index: int) -> str | None:
    """The idempotency key of a batch's job at `index` (`enqueue_many`): the batch's key
    names the request, so its repeat answers every job it made: the first job holds the key
    itself (as an `enqueue` would), each later one the key, `BATCH_KEY_MARK` and the index
    (one key for all stored the first job alone, and answered every later message with
    it). No key given to a call holds the mark (`key_fault`): none is a batch's."""
    return key if key is None or index == 0 else f"{key}{BATCH_KEY_MARK}{index}"


class App:
    """The registry of message kinds and handlers, and the way to enqueue jobs.

    Args:
        name: the application's name (logs, metrics).
        url: backend URL; OFFLOAD_URL (default `sqlite:///offload.db`) when None.
        settings: all settings; read from the environment when None.
        clock: the time source of envelopes and of the worker's decisions (retry times),
            and of the backend's leases only if it stands in for the server's clock (tests
            move a `FakeClock`; see `Clock.stands_in_for_server`).
        blobs: the blob store (any `BlobStore`); OFFLOAD_BLOBS_URL picks one when None.
    """

    def __init__(
        self,
        name: str,
        *,
        url: str | None = None,
        settings: Settings | None = None,
        clock: Clock | None = None,
        blobs: BlobStore | None = None,
    ) -> None:
        self.name = name
        self._settings = settings
        self._url = url
        self.clock = clock or Clock()
        #: A clock given to the App goes to the backend, which keeps its server's clock
        #: unless this one stands in for it (a test's).
        self._injected_clock = clock
        self.kinds: dict[str, MessageSpec] = {}
        #: Built-in kinds (webhook and email deliveries): known, but not submittable by HTTP.
        self.internal_kinds = _builtin_kinds()
        self.handlers: dict[str, HandlerSpec] = {}
        #: Upgraders by kind, then by the version they upgrade from (to that version + 1).
        self.upgraders: dict[str, dict[int, Upgrader]] = {}
        self.email_templates: dict[str, EmailTemplate] = {}
        #: Periodic schedules by name (`periodic`): every worker process runs them.
        self.schedules: dict[str, Schedule] = {}
        self._backend: Backend | None = None
        #: A store given here is kept; otherwise OFFLOAD_BLOBS_URL picks one when needed.
        self._given_blobs = blobs
        self._blobs: BlobStore | None = blobs
        #: The event loop the backend was opened on (a backend belongs to it).
        self._opened_on: asyncio.AbstractEventLoop | None = None
        #: The open under way (`_ensure_open`), which every other caller waits for.
        self._opening: _Opening | None = None
        #: The task that closes a lazily opened backend when its loop ends (`_hold`).
        self._hold_task: asyncio.Task[None] | None = None
        #: The open backend was opened by a first call (no `open` then): the `close` of a
        #: later `open` leaves it open.
        self._lazy = False
        #: The URL opened: the settings', a bare `memory://` named (`_store_url`); None
        #: until asked, and again when `configure` changes the settings.
        self._named_url: str | None = None
        #: The runner of the `*_sync` calls when the first `open` came: its `close` keeps it.
        self._runner_before_open: SyncRunner[App] | None = None
        self._sync: SyncRunner[App] | None = None
        self._users = 0
        self._group: GroupCommit | None = None
        self._live = LiveVersions()
        self._metrics: NoMetrics = NO_METRICS
        self._unwatch_wal: Callable[[], None] | None = None

    @property
    def metrics(self) -> NoMetrics:
        """Prometheus metrics (`offload.metrics.Metrics`); off until the web tier, a worker
        with `--metrics-port`, or you set one. On a SQLite file they report its WAL too."""
        return self._metrics

    @metrics.setter
    def metrics(self, metrics: NoMetrics) -> None:
        if metrics is self._metrics:
            return
        self._watch_wal(None)
        self._metrics = metrics
        self._watch_wal(self._backend)

    def _watch_wal(self, backend: Backend | None) -> None:
        """Have the metrics read `backend`'s WAL (None: stop reading the one they read)."""
        unwatch, self._unwatch_wal = self._unwatch_wal, None
        if unwatch is not None:
            unwatch()
        if isinstance(backend, WalWatch):
            self._unwatch_wal = self._metrics.watch_wal(backend.wal_reading)

    # -- configuration ----------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = Settings.from_env(url=self._url)
        return self._settings

    def _store_url(self) -> str:
        """The backend URL to open: the settings', where a bare `memory://` (a fresh
        database at each open) is named once for this App, so that the twin of its `*_sync`
        calls, and this App opened again while the twin holds it, open the same one."""
        if self._named_url is None:
            self._named_url = name_memory(self.settings.url)
        return self._named_url

    def configure(self, settings: Settings, *, clock: Clock | None = None) -> None:
        """Replace the settings (before the app is opened), and the clock when one is given
        (a test's `FakeClock`; `Clock()` for the host's again). The `*_sync` calls follow:
        the runner they used, on the old settings, is stopped. An SQLite backend a first call
        opened, and no `open` holds, is closed (a test that used the app without opening it
        left it so for the next).

        Raises:
            ConfigurationError: the app is open (an `open` holds it, or a first call opened
                a backend bound to its event loop: PostgreSQL, Redis).
        """
        with start_lock():
            backend = self._backend
            if backend is not None and (self._users or _bound(backend) or not self._lazy):
                raise ConfigurationError("configure() must come before the app is opened")
            if backend is not None:  # a first call opened it (SQLite), and no `open` holds it
                self._detach()
            runner, self._sync = self._sync, None
            self._named_url = None  # a memory:// of the new settings is a new database
        if backend is not None:
            _close_now(backend)
        if runner is not None:
            runner.stop(App.close)
        self._settings = settings
        self._blobs = self._given_blobs  # else the blob store follows the new settings
        if clock is not None:
            self.clock = self._injected_clock = clock

    # -- registry ---------------------------------------------------------------------------

    def message(
        self,
        kind: str,
        *,
        version: int = 1,
        queue: str | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        timeout: float | timedelta | None = None,
        callback_url: str | None = None,
        http: bool = True,
        fair: bool = False,
        unique: UniqueMode | None = None,
        unique_key: Sequence[str] | None = None,
    ) -> Callable[[M], M]:
        """Declare a message class as the contract of job kind `kind`.

        Args:
            fair: make the kind's queue fair: workers claim its jobs round-robin across
                owners (the least recently served first), so one owner's backlog delays
                another owner's job by about one job per worker slot, not by the backlog.
                A queue is fair when any kind routed to it says so.
            callback_url: a webhook target notified when any job of this kind ends, unless
                the job names its own `callback_url`.
            http: False keeps the kind off the HTTP API (`POST /v1/jobs/{kind}` answers 404
                as for an unknown kind): only Python code enqueues it (follow-up jobs).
            unique: "queued": while a job of this kind with the same key waits for its
                first start, enqueueing another returns that job (`created=False`,
                `unique_repeat=True`); "active": the same while it waits or runs, retries
                included. Per owner: the key includes the job's owner.
            unique_key: the message fields the key is made of (default: the whole payload).

        Raises:
            ConfigurationError: a built-in or twice-declared kind, a kind or queue name
                that is empty, longer than `MAX_NAME_LENGTH`, not printable or with white
                space around it (an HTTP kind holding `/`, or `.` or `..`, too), a bad
                `callback_url`, a `FromPrincipal` field that is not a `str`, or a bad
                `unique`/`unique_key`.
        """
        if kind in self.internal_kinds:
            raise ConfigurationError(f"message kind {kind!r} is built in")
        why = _name_fault(kind, "kind") or (queue is not None and _name_fault(queue, "queue"))
        if not why and http and ("/" in kind or kind in (".", "..")):
            why = (
                f"kind {kind!r} cannot be served over HTTP (POST /v1/jobs/{{kind}} takes no "
                "'/', '.' or '..'): rename it, or declare it http=False"
            )
        if why:
            raise ConfigurationError(why)
        why = None if callback_url is None else callback_url_error(callback_url)
        if why is not None:
            raise ConfigurationError(why)

        def register(cls: M) -> M:
            if not (isinstance(cls, type) and issubclass(cls, Message)):
                raise ConfigurationError(f"{cls!r} must subclass offload.Message")
            if kind in self.kinds and self.kinds[kind].cls is not cls:
                raise ConfigurationError(f"message kind {kind!r} is declared twice")
            try:
                filled = principal_fields(cls)
            except TypeError as exc:
                raise ConfigurationError(str(exc)) from None
            _payloads.check(cls)
            key_fields = unique_fields(cls, unique, unique_key)
            cls.__kind__, cls.__version__ = kind, version
            cls.__queue__ = queue or DEFAULT_QUEUE
            self.kinds[kind] = MessageSpec(
                cls,
                kind,
                version,
                cls.__queue__,
                max_attempts,
                _seconds(timeout),
                callback_url,
                http=http,
                principal_fields=filled,
                fair=fair,
                unique=unique if key_fields is not None else None,
                unique_key=key_fields or (),
            )
            return cls

        return register

    def spec_of(self, cls_or_kind: type[Message] | str) -> MessageSpec:
        """The registered kind of a message class or kind name.

        Raises:
            UnknownKind: none is registered.
            TypeError: neither a message class nor a kind name (a dict, say).
        """
        if not isinstance(cls_or_kind, str) and not (
            isinstance(cls_or_kind, type) and hasattr(cls_or_kind, "__kind__")
        ):
            what = cls_or_kind.__name__ if isinstance(cls_or_kind, type) else repr(cls_or_kind)
            raise TypeError(
                "a job is a message (an instance of a class declared with @app.message), "
                f"not a {what}"
            )
        kind = cls_or_kind if isinstance(cls_or_kind, str) else cls_or_kind.__kind__
        spec = self.kinds.get(kind) or self.internal_kinds.get(kind)
        if spec is None and not kind and not isinstance(cls_or_kind, str):
            raise UnknownKind(
                f"{cls_or_kind.__name__} is no message kind: declare it with "
                f"@app.message('<kind>') first"
            )
        if spec is None:
            raise UnknownKind(f"no message kind {kind!r} is registered")
        if not isinstance(cls_or_kind, str) and spec.cls is not cls_or_kind:
            # A subclass inherits __kind__ but is not the registered contract.
            raise UnknownKind(f"{cls_or_kind.__name__} is not registered (its parent is)")
        return spec

    def upgrade(self, kind: str, from_version: int) -> Callable[[U], U]:
        """Register the function that turns a payload of `kind` at `from_version` into one at
        `from_version + 1`: it takes the stored payload (a dict) and returns the next
        version's payload (a dict, or a `Message` of that version). A worker runs the chain
        (v1 → v2 → v3 …) on a job stored at an older version before it validates it.

        Raises:
            ConfigurationError: a version below 1, or a second upgrader for one step.
        """
        if from_version < 1:
            raise ConfigurationError("versions count from 1: nothing upgrades from below it")

        def register(fn: U) -> U:
            steps = self.upgraders.setdefault(kind, {})
            if from_version in steps:
                raise ConfigurationError(f"{kind!r} already has an upgrader from {from_version}")
            steps[from_version] = fn
            return fn

        return register

    def handles(
        self,
        cls: type[Message],
        *,
        max_attempts: int | None = None,
        timeout: float | timedelta | None = None,
        backoff: Backoff | None = None,
        max_running: int | None = None,
        rate: str | None = None,
    ) -> Callable[[F], F]:
        """Register the handler of a message class (in the worker half): a function of the
        message and the context, `async def` or plain `def`.

        Args:
            max_running: never more than this many jobs of the kind running at once, across
                every worker (the backend counts them inside each claim).
            rate: at most this many starts of the kind within any window of time, across
                every worker: `"100/m"` (units s, m, h; `"10/5s"`: 10 within any 5 s).

        Jobs over a limit stay queued, their attempts unspent, and are claimed as soon as a
        slot or a start frees. Each worker declares its limits to the backend when it
        starts; the latest declaration of a kind wins (so run one version of the code).

        Raises:
            ConfigurationError: a kind with a handler already, a handler that cannot be
                called with the message and the context (or typed for another message
                class), `max_running` below 1, or a `rate` not of the form `"100/m"`.
        """
        spec = self.spec_of(cls)
        if max_running is not None and (
            isinstance(max_running, bool) or not isinstance(max_running, int) or max_running < 1
        ):
            raise ConfigurationError(
                f"max_running of {spec.kind!r} must be a whole number of at least 1, "
                f"not {max_running!r}"
            )
        if rate is not None and not isinstance(rate, str):
            raise ConfigurationError(
                f"rate of {spec.kind!r} must be a string such as '100/m', not {rate!r}"
            )
        parsed_rate = None if rate is None else parse_rate(rate)

        def register(fn: F) -> F:
            if spec.kind in self.handlers:
                raise ConfigurationError(f"kind {spec.kind!r} already has a handler")
            _check_callable(fn, spec.kind, spec.cls)
            self.handlers[spec.kind] = HandlerSpec(
                fn=fn,
                message=spec,
                max_attempts=max_attempts,
                timeout=_seconds(timeout) if timeout is not None else spec.timeout,
                backoff=backoff or Backoff(),
                is_async=is_async_callable(fn),
                max_running=max_running,
                rate=parsed_rate,
            )
            return fn

        return register

    def periodic(
        self,
        message: Message,
        *,
        cron: str | None = None,
        tz: str | ZoneInfo | None = None,
        every: timedelta | None = None,
        catch_up: int = 0,
        name: str | None = None,
    ) -> Schedule:
        """Enqueue `message` at each tick of `cron` (in time zone `tz`, a zoneinfo name or a
        `ZoneInfo`, UTC by default) or
        of `every` (ticks at the multiples of the interval since the epoch). Every worker
        process runs the schedules of its app (no separate process), and each tick is
        enqueued at most once however many run it: the backend decides.

        Args:
            catch_up: after downtime, how many of the most recent ticks missed meanwhile to
                enqueue (0, the default: skip them; only later ticks run).
            name: the schedule's stable name (its stored state and its jobs' idempotency
                keys); derived from the kind and the cron or interval when None. Give one
                to declare two schedules of one kind with the same timing.

        Returns:
            The declared schedule.

        Raises:
            ConfigurationError: a message of a kind this app does not know, a name already
                declared, both or neither of `cron` and `every`, a bad cron expression, an
                unknown time zone, `tz` with `every`, a `catch_up` outside 0 to 1000, or a
                message that `enqueue` would refuse (a NUL character, an integer past 64 bits).
        """
        if not isinstance(message, Message):
            raise ConfigurationError(f"periodic needs a Message instance, not {message!r}")
        try:
            kind = self.spec_of(type(message)).kind
        except UnknownKind:
            raise ConfigurationError(
                f"periodic: {type(message).__name__} is not a message kind of this app "
                "(declare it with @app.message)"
            ) from None
        schedule = declare(
            message, kind, cron=cron, tz=tz, every=every, catch_up=catch_up, name=name
        )
        if schedule.name in self.schedules:
            mend = "give each a name= of its own" if name is not None else "give each a name="
            raise ConfigurationError(
                f"periodic schedule {schedule.name!r} is declared twice; {mend}"
            )
        try:  # as every tick's enqueue will: refused now, not by each worker at each tick
            stamped = self.envelope(message, owner=PERIODIC_OWNER)
            claim_check.encoded(kind, stamped.payload)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"periodic schedule {schedule.name!r}: its message cannot be stored: {exc}"
            ) from exc
        self.schedules[schedule.name] = schedule
        return schedule

    def _budget_of(self, spec: MessageSpec) -> int:
        """A new job's retry budget: its handler's, where this App knows the handler (one
        module, `offload dev`), else its message's. (A worker applies its handler's budget
        either way; this is what the job says before one claims it.)"""
        handler = self.handlers.get(spec.kind)
        if handler is not None and handler.max_attempts:
            return handler.max_attempts
        return spec.max_attempts

    def email_template(self, kind: str, template: EmailTemplate) -> None:
        """Use `template` for the completion emails of jobs of `kind` ("*": every kind).

        Raises:
            ConfigurationError: the template names a field that does not exist.
        """
        try:
            template.render(_notify.SAMPLE_CONTEXT)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigurationError(f"email template for {kind!r}: bad field {exc}") from None
        self.email_templates[kind] = template

    def email_template_of(self, kind: str) -> EmailTemplate:
        """The email template of `kind`: its own, else the app's "*", else the default."""
        templates = self.email_templates
        return templates.get(kind) or templates.get("*") or _notify.DEFAULT_TEMPLATE

    @property
    def queues(self) -> list[str]:
        """Every queue a registered kind routes to."""
        return sorted({s.queue for s in self.kinds.values()})

    # -- backends ---------------------------------------------------------------------------

    async def open(self, *, create: bool = True) -> App:
        """Open the backend and blob store. Each `open` is paired with a `close`; the
        backend closes with the last one, so a web lifespan and a worker can share an app.

        Args:
            create: False for read-only use (the CLI's inspecting commands): a database
                that does not exist yet is an error instead of being made.

        Raises:
            BackendError: the backend is unreachable, or (`create=False`) missing.
        """
        tracing.resolve()  # a process configures its SDK before it starts serving
        while True:
            await self._ensure_open(create=create, lazily=False)
            with start_lock():
                # (another thread's last close may have closed it meanwhile: open it again)
                if self._backend is not None:
                    if not self._users:
                        self._runner_before_open = self._sync
                    self._users += 1
                    return self

    async def _ensure_open(self, *, create: bool = True, lazily: bool = True) -> App:
        """Open the backend unless it is open on this loop (or on none: SQLite).

        Args:
            lazily: opened by a first call, no `open` holding it: it closes as its loop
                ends, and opens anew on a later loop (a test client's loop per request).

        Raises:
            ConfigurationError: a backend bound to its loop (PostgreSQL, Redis, SQS) is open
                on another loop that still runs (another thread's), or `open` left it open
                on a loop that has ended.
        """
        loop = asyncio.get_running_loop()
        while True:
            with start_lock():  # the state is shared by every thread's loop
                if self._backend is not None and self._usable_on(loop):
                    return self
                opening = self._opening
                # None under way, or one that will never end (its loop ended first), or one
                # its coroutine's collection ended without clearing it (see the finally)
                if opening is None or opening.loop.is_closed() or opening.done.done():
                    settings = self.settings
                    backend = open_backend(
                        self._store_url(),
                        clock=self._injected_clock,
                        connect_timeout_s=settings.connect_timeout_s,
                        retry_deadline_s=settings.retry_deadline_s,
                    )
                    self._opening = mine = _Opening(loop, _bound(backend))
                    break
            if opening.loop is not loop and opening.bound:
                raise ConfigurationError(_ANOTHER_LOOP.format(name=self.name))
            # One open at a time (a web lifespan and a worker may open one app at once, an
            # SQLite app's first calls from several threads): the others wait for it, then
            # look again (it may have failed, or been cancelled; or its loop may end before
            # it does: looked at every half second). A waiter cancelled is cancelled alone:
            # `done` runs, so no cancel reaches it.
            await asyncio.wait({asyncio.wrap_future(opening.done)}, timeout=OPEN_RECHECK_S)
        try:
            tracing.resolve()  # opened by a first enqueue: as `open` does
            try:
                await backend.open(create=create)
            except (Exception, asyncio.CancelledError):
                # (cancelled by a deadline, say): what it opened so far is closed, on its
                # loop (none left when a loop that ended drops this coroutine)
                if running_loop() is loop:
                    closing = asyncio.ensure_future(backend.close())
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        await asyncio.shield(closing)
                raise
            with start_lock():
                self._backend = backend
                self._opened_on = loop
                self._lazy = lazily
                self._watch_wal(backend)
                if lazily and mine.bound:
                    self._hold_task = loop.create_task(self._hold(backend), name=_HOLD_TASK)
            if self._blobs is None:
                self._blobs = open_blobs(self.settings.blobs_url)
        finally:
            # Not when a coroutine its loop dropped runs this as it is collected (maybe on
            # a thread that holds the lock): the next caller takes its stale open over.
            if running_loop() is loop:
                with start_lock():
                    if self._opening is mine:  # (a later loop may have taken over)
                        self._opening = None
            if not mine.done.done():
                mine.done.set_result(None)
        return self

    def _usable_on(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether the open backend serves calls on `loop` (under `start_lock`): True, or
        False once forgotten (opened lazily on a loop that ended), or raises.

        Raises:
            ConfigurationError: see `_ensure_open`.
        """
        opened_on = self._opened_on
        if opened_on is None or opened_on is loop or not self._loop_bound():
            return True
        if not opened_on.is_closed():
            raise ConfigurationError(_ANOTHER_LOOP.format(name=self.name))
        if self._users:
            raise ConfigurationError(
                f"app {self.name!r} was opened on an event loop that has ended (an "
                "asyncio.run that returned): its connections ended with it. Open and "
                "close it within one loop (async with app: ...), or call the *_sync "
                "methods from synchronous code"
            )
        # Opened by a first call (no `open` holds it) on a loop that ended without
        # cancelling its tasks (else `_hold` closed it there): its connections ended
        # with that loop, so it opens anew on this one.
        self._detach()
        return False

    async def _hold(self, backend: Backend) -> None:
        """Close `backend`, opened on this loop by a first call, when the loop ends
        (asyncio.run, a test client's loop of one request and uvicorn cancel every task
        left) if no `open` holds it then: its connections close there, not unclosed in a
        later loop's garbage. A close before (`_detach`) cancels this task."""
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            with start_lock():
                ours = self._backend is backend and not self._users
                if ours:
                    self._detach()
            if ours:
                try:
                    await backend.close()
                except Exception as exc:  # the loop is ending: nothing more to do about it
                    log.debug("closing as its loop ended: %s", exc)
            raise

    def _detach(self) -> Backend:
        """Forget the open backend (the caller closes it, if its loop still runs), and the
        task that would have closed it as its loop ended (under `start_lock`)."""
        backend = self._require_backend()
        hold, self._hold_task = self._hold_task, None
        if hold is not None and not hold.done() and hold.get_loop() is running_loop():
            if hold is not asyncio.current_task():
                hold.cancel()
        self._backend, self._opened_on, self._group = None, None, None
        self._lazy = False
        self._watch_wal(None)
        return backend

    def _loop_bound(self) -> bool:
        """Whether the open backend's connections belong to the loop that opened it
        (PostgreSQL, Redis, SQS: not SQLite, whose calls run on its own threads)."""
        return self._backend is not None and _bound(self._backend)

    async def close(self) -> None:
        """Release one `open`; the last one closes the backend and stops the runner of the
        `*_sync` calls, but for what was open before the first `open` (a backend a first
        call opened, a runner a `*_sync` call started): that stays as it was. A close that
        releases no `open` closes them all."""
        with start_lock():
            released = self._users > 0
            self._users = max(0, self._users - 1)
            if self._users:
                return
            kept_runner = self._runner_before_open if released else None
            opened_on, backend = self._opened_on, self._backend
            if released and self._lazy:
                backend = None
            elif backend is not None:
                self._detach()
        if backend is not None:
            if opened_on is None or not opened_on.is_closed() or not _bound(backend):
                await backend.close()
            # (else its connections ended with their loop: there is nothing left to close)
        with start_lock():
            runner = self._sync
            if runner is kept_runner:
                runner = None
            else:
                self._sync = None
        if runner is not None:
            runner.stop(App.close)

    async def __aenter__(self) -> App:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _require_backend(self) -> Backend:
        """The open backend, for offload's own mechanism (worker, notifiers). The web tier,
        the command line and applications go through the façade methods instead.

        Raises:
            ConfigurationError: the app is not open.
        """
        if self._backend is None:
            raise ConfigurationError(f"app {self.name!r} is not open: await app.open() first")
        return self._backend

    async def _opened_backend(self) -> Backend:
        """The backend, opening the app on first use (as `enqueue` does)."""
        await self._ensure_open()
        return self._require_backend()

    @property
    def blobs(self) -> BlobStore:
        if self._blobs is None:
            self._blobs = open_blobs(self.settings.blobs_url)
        return self._blobs

    # -- enqueue ----------------------------------------------------------------------------

    def envelope(
        self,
        message: Message,
        *,
        owner: str = "local",
        priority: int = 0,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        idempotency_key: str | None = None,
        max_attempts: int | None = None,
        callback_url: str | None = None,
        notify_email: str | None = None,
        trace: dict[str, str] | None = None,
    ) -> Envelope:
        """Stamp a validated message into an envelope (id, times, routing, budget).

        Args:
            callback_url: a webhook target notified (signed, retried) when the job ends.
            notify_email: an address emailed when the job ends.

        Raises:
            ValueError: a bad `run_at`, `delay` and `run_at` both, a bad `callback_url` or
                `notify_email`, or any option an enqueue refuses (`JobOptions`: an owner
                no caller may be, a priority out of range; `app.submit` of this envelope
                stores what it is given).
            TypeError: an option of the wrong type, as for an enqueue.
        """
        checked = JobOptions(  # (checked as an enqueue's: types, ranges, owner and key)
            priority=priority,
            delay=delay,
            run_at=run_at,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
            notify_email=notify_email,
            owner=owner,
        )
        return self._stamp(message, checked, max_attempts=max_attempts, trace=trace)

    def _moment(
        self,
        delay: float | timedelta | None,
        run_at: datetime | None,
        callback_url: str | None,
        notify_email: str | None,
    ) -> tuple[float, float, dict[str, Any]]:
        """Now, when a job stamped now runs, and its delivery options, checked.

        Raises:
            ValueError: a naive `run_at`, `delay` and `run_at` both (as over HTTP), a bad
                `callback_url` or `notify_email`.
        """
        now = self.clock.now()
        when = now
        if run_at is not None and delay is not None:
            raise ValueError("give delay or run_at, not both")
        if run_at is not None:
            if run_at.tzinfo is None:
                raise ValueError("run_at must be timezone-aware")
            when = max(now, run_at.timestamp())
        elif delay is not None:
            when = now + max(0.0, _seconds(delay) or 0.0)
        if when > LATEST_RUN_AT:
            raise ValueError("run_at (or now + delay) is after 9999-12-31T23:59:59Z")
        for problem in delivery_option_errors(callback_url, notify_email).values():
            raise ValueError(problem)
        options = {
            k: v for k, v in (("callback_url", callback_url), ("notify_email", notify_email)) if v
        }
        return now, when, options

    @staticmethod
    def _sealed(
        message: Message,
        spec: MessageSpec,
        job_id: str,
        now: float,
        when: float,
        options: dict[str, Any],
        owner: str,
        priority: int,
        budget: int,
        idempotency_key: str | None,
        trace: dict[str, str] | None,
    ) -> Envelope:
        """The envelope of `message`, stamped."""
        if idempotency_key == "":  # every later enqueue would repeat the first
            raise ValueError("idempotency_key must not be empty")
        payload = _payloads.payload_of(message)  # (what its class reads back)
        if nested_deeper(payload):
            raise NestedTooDeep(
                f"a {spec.kind} message nests objects and arrays more than {MAX_NESTING} "
                "levels deep: its job could be stored but not served"
            )
        key = None
        if spec.unique is not None:
            key = unique_key(spec.kind, owner, payload, spec.unique_key, _values(message))
        return Envelope(
            id=job_id,
            kind=spec.kind,
            version=spec.version,
            payload=payload,
            queue=spec.queue,
            priority=priority,
            attempt=0,
            max_attempts=budget,
            run_at=when,
            enqueued_at=now,
            idempotency_key=idempotency_key,
            owner=owner,
            trace=trace,
            timeout=spec.timeout,
            options=options,
            unique_key=key,
            unique=spec.unique if key is not None else None,
        )

    async def _store(
        self, envelopes: Sequence[Envelope], conn: Any = None, *, parent: Any = None
    ) -> list[Job]:
        """Store stamped envelopes in one atomic batch (on the caller's `conn` when given).

        Every way in ends here (`enqueue`, `enqueue_many`, `enqueue_in`, `submit`), so what
        each submission gets (metrics, a producer span) is added in this one place; a large
        `enqueue_many` goes to its streamed twin, `_store_streamed`.

        Args:
            parent: the tracing context of a caller on another thread (`enqueue_sync`).
        """
        backend = await self._opened_backend()
        threshold = self.settings.claim_check_bytes
        envelopes, checked = await claim_check.check_in(lambda: self.blobs, envelopes, threshold)
        async with self._undone_if_unstored(checked):
            results = await self._enqueue(backend, envelopes, conn, parent)
        if checked:  # a replayed key or unique repeat stored nothing: its payload goes
            unused = [e.id for e, r in zip(envelopes, results, strict=True) if not r.created]
            await claim_check.discard(self.blobs, [claim_check.payload_key(i) for i in unused])
        return self._answered(envelopes, results)

    @contextlib.asynccontextmanager
    async def _undone_if_unstored(self, checked: list[str]) -> AsyncIterator[None]:
        """Delete the payload blobs `checked` (as the list stands then) if the block fails:
        their jobs were not stored."""
        try:
            yield
        except BaseException:
            if checked:
                await claim_check.discard(self.blobs, checked)
            raise

    def _answered(
        self, envelopes: Sequence[Envelope], results: Sequence[EnqueueResult]
    ) -> list[Job]:
        """The jobs that stored `envelopes` answer, counted in the metrics (every way in)."""
        self.metrics.stored(envelopes, results)
        return [
            Job(r.id, r.created, self, kind=e.kind, unique_repeat=r.unique_repeat)
            for e, r in zip(envelopes, results, strict=True)
        ]

    def _grouped(self, backend: Backend) -> GroupCommit:
        """This app's group commit (concurrent enqueues share one backend call)."""
        if self._group is None:
            self._group = GroupCommit(backend.enqueue)
        return self._group

    async def _enqueue(
        self, backend: Backend, envelopes: Sequence[Envelope], conn: Any, parent: Any
    ) -> list[EnqueueResult]:
        """The backend's enqueue (grouped with concurrent callers'), or its enqueue inside the
        caller's transaction `conn`."""
        with tracing.send(envelopes, parent) as envelopes:
            if conn is None:
                return await self._grouped(backend).submit(envelopes)
            enqueue_in = getattr(backend, "enqueue_in", None)
            if Capability.TRANSACTIONAL_ENQUEUE not in backend.capabilities or not enqueue_in:
                raise ConfigurationError(
                    f"the {type(backend).__name__} cannot enqueue inside your transaction"
                )
            stored = enqueue_in(conn, envelopes)
            results: list[EnqueueResult] = await stored if inspect.isawaitable(stored) else stored
            return results

    def _stamp(
        self,
        message: Message,
        o: JobOptions,
        *,
        max_attempts: int | None = None,
        trace: dict[str, str] | None = None,
    ) -> Envelope:
        """The envelope of `message` under options checked already (`JobOptions` checks as
        it is made: an enqueue's are not checked twice)."""
        spec = self.spec_of(type(message))
        now, when, options = self._moment(o.delay, o.run_at, o.callback_url, o.notify_email)
        budget = max_attempts or self._budget_of(spec)
        return self._sealed(
            message, spec, uuid7(now), now, when, options, o.owner, o.priority, budget,
            o.idempotency_key, trace,
        )  # fmt: skip

    async def _store_streamed(self, backend: StreamedEnqueue, batch: _Batch) -> list[Job]:
        """`_store` of a large batch without keys, stamped chunk by chunk as the backend
        sends the chunks before (Capability.STREAMED_ENQUEUE): the server stores a chunk
        while this process stamps the next. All or none, as `_store`."""
        specs = [spec for spec, _ in batch.kinds.values()]
        queues, kinds = {s.queue for s in specs}, {s.kind for s in specs}
        threshold = self.settings.claim_check_bytes
        stamped: list[Envelope] = []
        checked: list[str] = []
        n = len(batch.messages)
        with tracing.send_stamping(queues, kinds, n) as trace:

            async def chunks() -> AsyncGenerator[list[Envelope]]:
                for at in range(0, n, STREAM_CHUNK):
                    chunk = batch.stamp(at, min(n, at + STREAM_CHUNK), trace)
                    chunk, keys = await claim_check.check_in(lambda: self.blobs, chunk, threshold)
                    stamped.extend(chunk)
                    checked.extend(keys)
                    yield chunk

            async with self._undone_if_unstored(checked), contextlib.aclosing(chunks()) as stream:
                results = await backend.enqueue_stream(stream)
        if len(stamped) != n:  # every chunk is taken before the batch commits
            raise AssertionError(f"a streamed batch of {n} jobs stored {len(stamped)}")
        return self._answered(stamped, results)

    async def enqueue(
        self,
        message: Message,
        *,
        priority: int = 0,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        notify_email: str | None = None,
        owner: str = DEFAULT_OWNER,
    ) -> Job:
        """Validate, stamp and store one job.

        Args:
            priority: lower runs first.
            delay: seconds (or a timedelta) before it may run; or `run_at`, an aware time.
            idempotency_key: a second enqueue with the same key and owner returns the
                first job (`created=False`).
            callback_url: a webhook target notified (signed, retried) when the job ends.
            notify_email: an address emailed when the job ends.
            owner: the principal the job belongs to (the HTTP API's caller).

        Returns:
            The job; for a kind declared `unique` whose key (kind, owner, chosen fields) a
            queued (or active) job holds, that job, with `created=False` and
            `unique_repeat=True`, and nothing is stored.

        Raises:
            TypeError: an option of the wrong type (named).
            ValueError: a naive `run_at`, a bad `callback_url` or `notify_email`.
        """
        o = JobOptions(
            priority=priority,
            delay=delay,
            run_at=run_at,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
            notify_email=notify_email,
            owner=owner,
        )
        (job,) = await self._store([self._stamp(message, o)])
        return job

    async def enqueue_many(
        self,
        messages: Sequence[Message],
        *,
        priority: int = 0,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        notify_email: str | None = None,
        owner: str = DEFAULT_OWNER,
    ) -> list[Job]:
        """Enqueue many jobs in one atomic batch (all or none), each with these options (as
        for `enqueue`). An `idempotency_key` names the batch: its first job holds it, each
        later one a key of its own made from it and its index (`batch_key`), so that a
        repeat of the batch answers with every job the first one made."""
        o = JobOptions(
            priority=priority,
            delay=delay,
            run_at=run_at,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
            notify_email=notify_email,
            owner=owner,
        )
        batch = _Batch(self, messages, o)  # checked before anything is opened or sent
        backend = await self._opened_backend()
        if (
            len(batch.messages) > STREAM_CHUNK
            and batch.keyless
            and Capability.STREAMED_ENQUEUE in backend.capabilities
        ):
            return await self._store_streamed(cast(StreamedEnqueue, backend), batch)
        return await self._store(batch.stamp())

    async def enqueue_in(
        self,
        conn: Any,
        message: Message,
        *,
        priority: int = 0,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        notify_email: str | None = None,
        owner: str = DEFAULT_OWNER,
    ) -> Job:
        """Enqueue inside the caller's own open transaction on `conn`: the job exists if and
        only if that transaction commits (the transactional outbox). Options as for `enqueue`.

        Args:
            conn: a `psycopg.AsyncConnection` to the app's PostgreSQL database, or a
                `sqlite3.Connection` to the app's SQLite file.

        Raises:
            ConfigurationError: the backend has no transactions to join (Redis).
        """
        o = JobOptions(
            priority=priority,
            delay=delay,
            run_at=run_at,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
            notify_email=notify_email,
            owner=owner,
        )
        (job,) = await self._store([self._stamp(message, o)], conn)
        return job

    def enqueue_in_sync(
        self,
        conn: Any,
        message: Message,
        *,
        priority: int = 0,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        notify_email: str | None = None,
        owner: str = DEFAULT_OWNER,
    ) -> Job:
        """`enqueue_in` for synchronous code: on the caller's synchronous connection to the
        app's PostgreSQL database (psycopg's `Connection`, or Django's `connection`),
        inside their open transaction, in the calling thread. The job exists if and only if
        that transaction commits. Options as for `enqueue`.

        Raises:
            ConfigurationError: the backend has no synchronous transactions to join.
            UnstorableMessage: as `enqueue` (a NUL character, a float NaN ...).
        """
        o = JobOptions(
            priority=priority,
            delay=delay,
            run_at=run_at,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
            notify_email=notify_email,
            owner=owner,
        )
        envelopes = [self._stamp(message, o)]
        for envelope in envelopes:  # refused as every way in refuses (a NUL, a NaN ...)
            claim_check.encoded(envelope.kind, envelope.payload)
        # Only the caller's connection is used: the backend need not be open (its pool and
        # listener belong to an event loop this thread may not have).
        backend = self._backend or open_backend(self._store_url(), clock=self._injected_clock)
        store = getattr(backend, "enqueue_in_sync", None)
        if store is None:
            raise ConfigurationError(
                f"the {type(backend).__name__} cannot enqueue inside a synchronous transaction"
            )
        with tracing.send(envelopes, None) as stamped:
            results: list[EnqueueResult] = store(conn, stamped)
        (job,) = self._answered(stamped, results)
        return job

    async def submit(self, envelope: Envelope) -> tuple[Job, JobRow]:
        """Store one envelope made by `envelope` and return its job with the stored row:
        the HTTP submission path, which answers with the job's status record.

        A new job's row is made from the envelope itself (no second round trip); a replayed
        idempotency key reads the row of the first job.

        Raises:
            JobNotFound: the first job of a replayed key was deleted meanwhile.
        """
        (job,) = await self._store([envelope])
        row = JobRow.of_envelope(envelope) if job.created else await self.get(job.id)
        if row is None:
            raise JobNotFound(job.id)
        return job, row

    def enqueue_sync(
        self,
        message: Message,
        *,
        priority: int = 0,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        notify_email: str | None = None,
        owner: str = DEFAULT_OWNER,
    ) -> Job:
        """`enqueue` for synchronous code (Django, Flask): blocks until stored. The Job
        belongs to this App (`job.status_sync()`, or `await job.status()` in async code)."""
        o = JobOptions(
            priority=priority,
            delay=delay,
            run_at=run_at,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
            notify_email=notify_email,
            owner=owner,
        )
        envelope = self._stamp(message, o)
        parent = tracing.current()  # the caller's span: _store may run on the loop thread
        job = self._store_blocking(envelope, parent)
        if job is None:
            (job,) = self._sync_call(lambda twin: twin._store([envelope], parent=parent))
        return replace(job, app=self)

    def _store_blocking(self, envelope: Envelope, parent: Any) -> Job | None:
        """Store `envelope` in the calling thread, on the backend the loop thread opened,
        where it enqueues in a blocking call (Capability.BLOCKING_ENQUEUE): no hop to the
        loop thread and back, which costs about as much as the store itself. None where it
        does not: before that backend is open (the first call opens it), or for a payload
        that goes to the blob store (claim check: async)."""
        runner = self._sync
        if runner is None or not runner.usable:
            return None
        backend = runner.twin._backend
        if backend is None or Capability.BLOCKING_ENQUEUE not in backend.capabilities:
            return None
        if not claim_check.fits([envelope], self.settings.claim_check_bytes):
            return None
        with tracing.send([envelope], parent) as stamped:
            results = cast(BlockingEnqueue, backend).enqueue_sync(stamped)
        (job,) = self._answered(stamped, results)
        return job

    async def job(self, job_id: str, *, owner: str | None = None) -> Job | None:
        """A handle on a job you know the id of (a status page's), or None.

        Args:
            owner: when given, another owner's job is None too (it does not exist for them).
        """
        row = await self.get(job_id, owner=owner)
        return None if row is None else Job(row.id, False, self, kind=row.kind)

    def job_sync(self, job_id: str, *, owner: str | None = None) -> Job | None:
        """`job` for synchronous code (a Flask view): its `status_sync()` then reads it."""
        job = self._sync_call(lambda twin: twin.job(job_id, owner=owner))
        return None if job is None else replace(job, app=self)

    def list_jobs_sync(
        self,
        *,
        owner: str | None,
        state: str | None = None,
        kind: str | None = None,
        before: str | None = None,
        limit: int = 50,
    ) -> list[JobRow]:
        """`list_jobs` for synchronous code (a Flask view's "my exports" page)."""
        return self._sync_call(
            lambda twin: twin.list_jobs(
                owner=owner, state=state, kind=kind, before=before, limit=limit
            )
        )

    def cancel_sync(self, job_id: str) -> JobRow:
        """`cancel` for synchronous code (any owner's job: check the caller's first, as
        `job_sync(id, owner=user)` does, then `job.cancel_sync()`)."""
        return self._sync_call(lambda twin: twin.cancel(job_id))

    def requeue_sync(self, job_id: str) -> JobRow:
        """`requeue` for synchronous code."""
        return self._sync_call(lambda twin: twin.requeue(job_id))

    def _sync_call(self, fn: Callable[[App], Awaitable[T]]) -> T:
        """Run `fn` with this App's twin on the private loop thread, blocking until done
        (the `*_sync` methods of App and Job)."""
        runner = self._sync
        if runner is None or not runner.usable:
            with start_lock():  # one runner, however many threads ask at once
                runner = self._sync
                if runner is None or not runner.usable:  # none yet, or the parent's
                    runner = self._sync = SyncRunner(self._sync_twin())
        return runner.call(fn)

    def _sync_twin(self) -> App:
        """A copy of this App for the runner's loop: its own backend connections (a
        backend belongs to the loop that opened it) and the same kinds."""
        # The app's own clock only if one was injected: PostgreSQL keeps the server's else.
        # The same blob store: a large payload is checked into the one the worker reads.
        # The same database: a bare `memory://` as this App names it (`_store_url`).
        settings = replace(self.settings, url=self._store_url())
        twin = App(
            self.name, settings=settings, clock=self._injected_clock, blobs=self._given_blobs
        )
        twin.kinds = self.kinds
        twin.internal_kinds = self.internal_kinds
        twin.metrics = self.metrics
        return twin

    # -- jobs -------------------------------------------------------------------------------

    async def get(self, job_id: str, *, owner: str | None = None) -> JobRow | None:
        """The stored row of a job (its `owner` and `payload` included), or None.

        Args:
            owner: when given, another owner's job is None too (it does not exist for them).
        """
        row = await (await self._opened_backend()).get(job_id)
        if row is None or (owner is not None and row.owner != owner):
            return None
        return row

    async def status(
        self, job_id: str, *, owner: str | None = None, tracebacks: bool = False
    ) -> dict[str, Any]:
        """The job's status record, with its `deliveries` (webhook and email attempts).

        Args:
            owner: when given, another owner's job is not found.
            tracebacks: include the stored traceback of a failure (for operators: `offload
                jobs show`); the public record carries the error's type and message only.

        Raises:
            JobNotFound: no such job (for `owner`).
        """
        row = await self.get(job_id, owner=owner)
        if row is None:
            raise JobNotFound(job_id)
        record = status_record(row, tracebacks=tracebacks)
        return {**record, "deliveries": await self.deliveries(job_id)}

    async def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        """Every webhook and email notification of the job, each with its attempts."""
        return await _notify.deliveries(await self._opened_backend(), job_id)

    async def list_jobs(
        self,
        *,
        owner: str | None,
        state: str | None = None,
        kind: str | None = None,
        before: str | None = None,
        limit: int = 50,
    ) -> list[JobRow]:
        """Stored rows, newest first.

        Args:
            owner: whose jobs; None for everyone's (operators).
            state: a `JobState` value, or None for every state.
            before: the id of the last row of the previous page.

        Raises:
            ValueError: a state no job is in (a misspelt one found no job), named.
        """
        if state is not None:
            JobState(state)  # (ValueError: "'daed' is not a valid JobState")
        backend = await self._opened_backend()
        return await backend.list_jobs(
            owner=owner, state=state, kind=kind, before=before, limit=limit
        )

    async def requeue(self, job_id: str) -> JobRow:
        """Put a dead, failed or cancelled job back in its queue with a fresh retry budget.

        Returns:
            The stored row after the change.

        Raises:
            JobNotFound, InvalidTransition (the job is waiting or running).
        """
        return await (await self._opened_backend()).requeue(job_id)

    async def cancel(self, job_id: str) -> JobRow:
        """Cancel a job: a waiting one ends `cancelled` (and its notifications are enqueued
        with that change); a running one is flagged for its worker, which settles it.

        Returns:
            The stored row after the change.

        Raises:
            JobNotFound, InvalidTransition (already final).
        """
        row = await self.get(job_id)
        if row is None:
            raise JobNotFound(job_id)
        # The marker (the waiting row's run_at) tells this cancellation apart from a later
        # one of the same job after a re-queue.
        ended = dataclasses.replace(row, state=JobState.CANCELLED)
        notes = follow_ups_of_row(self, ended, marker=f"cancel:{row.run_at!r}")
        return await self._require_backend().cancel(job_id, follow_ups=notes)

    # -- operators: finding jobs and acting on many -----------------------------------------

    async def search_jobs(
        self, f: JobFilter, *, before: str | None = None, limit: int = 50
    ) -> list[JobRow]:
        """Every owner's jobs matching `f`, newest first (operators; `f.owner` narrows).

        Args:
            before: the id of the last row of the previous page (keyset pagination: no gap
                and no repeat while jobs come and go).
        """
        backend = await self._opened_backend()
        return await backend.search_jobs(f, before=before, limit=limit)

    async def count_jobs(
        self, f: JobFilter, *, cap: int | None = None, states: Collection[JobState] | None = None
    ) -> int:
        """How many jobs match `f` (and are in one of `states`, if given: e.g.
        `RETRYABLE_STATES`, what `retry_jobs` would change). With `cap` (e.g.
        `DEFAULT_COUNT_CAP`), counting stops there, and an answer equal to `cap` means "cap
        or more"."""
        backend = await self._opened_backend()
        if states is None:
            return await backend.count_jobs(f, cap=cap)
        if f.state is not None:
            return await backend.count_jobs(f, cap=cap) if f.state in states else 0
        total = 0
        for state in sorted(states):
            left = None if cap is None else cap - total
            if left is not None and left <= 0:
                break
            total += await backend.count_jobs(replace(f, state=state.value), cap=left)
        return total

    async def retry_jobs(self, f: JobFilter, *, batch: int = DEFAULT_BULK_BATCH) -> int:
        """Re-queue every dead, failed or cancelled job matching `f` with a fresh retry
        budget, as `requeue` does one, in batches of `batch` jobs per transaction. Returns
        how many were re-queued."""
        backend = await self._opened_backend()

        async def apply(rows: list[JobRow]) -> int:
            return await backend.requeue_many([r.id for r in rows])

        return await walk(backend, f, RETRYABLE_STATES, apply, batch=batch)

    async def cancel_jobs(self, f: JobFilter, *, batch: int = DEFAULT_BULK_BATCH) -> int:
        """Cancel every waiting or running job matching `f`, as `cancel` does one: waiting
        jobs end cancelled (with their notifications), running ones are flagged for their
        worker. In batches of `batch` jobs per transaction; returns how many changed."""
        backend = await self._opened_backend()

        async def apply(rows: list[JobRow]) -> int:
            # Every row's, a running one's too: it may be waiting again by the time the
            # backend looks (its attempt failed), and end cancelled there, notified.
            notes = {
                r.id: follow_ups_of_row(
                    self,
                    dataclasses.replace(r, state=JobState.CANCELLED),
                    marker=f"cancel:{r.run_at!r}",
                )
                for r in rows
            }
            return await backend.cancel_many([r.id for r in rows], notes)

        return await walk(backend, f, CANCELLABLE_STATES, apply, batch=batch)

    async def delete_jobs(self, f: JobFilter, *, batch: int = DEFAULT_BULK_BATCH) -> int:
        """Delete every job matching `f` that is in a final state (succeeded, failed,
        cancelled, dead) with its feed entries and delivery records; never a waiting or
        running one. In batches of `batch` jobs per transaction; returns how many."""
        backend = await self._opened_backend()

        async def apply(rows: list[JobRow]) -> int:
            return await backend.delete_many([r.id for r in rows])

        return await walk(backend, f, FINAL_STATES, apply, batch=batch)

    async def erase_owner(
        self, owner: str, *, addresses: Collection[str] = (), wait_s: float = ERASE_WAIT_S
    ) -> Erasure:
        """Erase what offload keeps of one owner (a data-protection erasure request): every
        job of hers with its history, step values, keys and delivery records; the delivery
        jobs of her jobs' notifications (webhooks and emails, waiting, dead or done) and
        those naming one of `addresses` exactly (a webhook's URL, an email's recipient:
        dead deliveries of her jobs pruned since are found only so); her jobs' checked-in
        payloads; her turns at the fair queues.

        Every job of hers is silenced first (its callback URL and address replaced by
        `{"silenced": true}`: a delivery reads its job's options as it sends, and one of
        hers sends nothing from then on, whenever her job ends); her waiting jobs are
        cancelled and her running ones asked to stop, without a notification. No queue is
        paused. It waits up to `wait_s` for her running jobs to end; one still running then
        is left, with its deliveries, and named in `Erasure.left`: erase again once it ends.
        Her deliveries are deleted before her jobs, so that a run stopped between the two
        leaves a run again their ids to find them by. A job enqueued for her while it runs
        is taken too. Files your handlers put (`ctx.blobs`) are yours to delete:
        `Erasure.jobs` lists the ids.

        Raises:
            ValueError: an empty owner, one with a NUL character, or the deliveries' own
                owner (`offload.notify`: erase the owners whose jobs they notify).
        """
        if not owner or "\x00" in owner:
            raise ValueError("owner must be a non-empty name without NUL characters")
        if isinstance(addresses, str):  # (its letters, one by one, matched nothing)
            raise TypeError("addresses is a collection of addresses, not one string")
        if owner == _notify.NOTIFY_OWNER:
            raise ValueError(
                f"{owner!r} owns every delivery job: erase the owners whose jobs they notify"
            )
        return await erase_owner(self, owner, addresses=addresses, wait_s=wait_s)

    async def history(self, *, minutes: int = 60) -> list[Throughput]:
        """Per minute of the last `minutes` (the current one last) and per queue, how many
        jobs succeeded, failed and went dead, read from the stored jobs (so it survives
        restarts): the dashboard's throughput chart. Every queue a registered kind routes to
        is listed, an idle one with zeros.

        Raises:
            ValueError: `minutes` below 1.
        """
        since = minutes_since(self.clock.now(), minutes)
        facts = await (await self._opened_backend()).history(since=since)
        return throughput(facts, since=since, minutes=minutes, queues=self.queues)

    # -- queues -----------------------------------------------------------------------------

    async def stats(self) -> dict[str, dict[str, Any]]:
        """Per queue: queued, scheduled, running, dead, oldest_age_s (the oldest ready job's
        age), awaiting_newer_worker (waiting jobs stored at a version newer than a worker
        that claimed them runs, given back for one that knows it), paused. Every queue a
        registered kind routes to, the deliveries' queue (`offload.notify`), and every
        queue that is paused is listed, an empty one with zeros. `limits`: per limited kind
        of the queue (`handles(max_running=, rate=)`, as the workers declared them), its
        `max_running` and `rate` (`"100/m"`, or None), the jobs of it `running` now and its
        `recent_starts` within the rate's window."""
        backend = await self._opened_backend()
        stats = await backend.stats()
        for name in (*self.queues, _notify.NOTIFY_QUEUE):
            stats.setdefault(name, dict(EMPTY_QUEUE_STATS))
        for queue in stats.values():
            queue["limits"] = {}
        for lim in await backend.limits():
            queue = stats.setdefault(lim.queue, dict(EMPTY_QUEUE_STATS, limits={}))
            queue["limits"][lim.kind] = {
                "max_running": lim.max_running,
                "rate": format_rate(lim),
                "running": lim.running,
                "recent_starts": lim.recent_starts,
            }
        return stats

    async def live_versions(self) -> dict[str, set[int]]:
        """Per kind, the versions live workers run: those of every worker recorded within
        `versions.WORKER_LIVE_S` (each records on start and from its heartbeat). Read at most
        once per `versions.LIVE_VERSIONS_TTL_S` of the app's clock; callers share the answer.
        """

        async def read() -> dict[str, set[int]]:
            backend = await self._opened_backend()
            return await backend.live_versions(within_s=WORKER_LIVE_S)

        return await self._live.get(self.clock.now, read)

    async def purge(self, queue: str) -> int:
        """Delete every job waiting in `queue` (running jobs are left alone); the count."""
        return await (await self._opened_backend()).purge(_queue_name(queue))

    async def pause(self, queue: str) -> bool:
        """Pause `queue`: no worker (of any process, on any host) claims its jobs until it is
        resumed; running jobs finish, and jobs are still enqueued into it. It stays paused
        across restarts (stored in the backend).

        Returns:
            False when it was paused already.

        Raises:
            ConfigurationError: a name no queue may have (see `message`).
        """
        if why := _name_fault(queue, "queue"):  # (a queue paused is stored: a name as declared)
            raise ConfigurationError(why)
        return await (await self._opened_backend()).pause(queue)

    async def resume(self, queue: str) -> bool:
        """Resume a paused `queue`: waiting workers wake and claim its jobs at once.

        Returns:
            False when it was not paused.
        """
        return await (await self._opened_backend()).resume(_queue_name(queue))

    async def workers(self) -> list[WorkerInfo]:
        """The worker registry: every worker process that recorded itself (on start and on
        every heartbeat) and has not stopped cleanly. `lost` marks one whose heartbeat
        lapsed (`brokers.base.WORKER_LOST_AFTER_S`); such entries are deleted after
        `brokers.base.FORGET_WORKER_AFTER_S`. Live workers first, then by start time."""
        backend = await self._opened_backend()
        found = await backend.workers(lost_after_s=WORKER_LOST_AFTER_S)
        return sorted(found, key=lambda w: (w.lost, w.started_at, w.id))

    async def fire(self, schedule: Schedule, ticks: Sequence[float]) -> list[Job | None]:
        """Enqueue the jobs of `ticks` (oldest first) of `schedule`, each at most once
        across every process (`ScheduleStore.fire_schedule`): the worker's scheduler.

        Returns:
            Per tick: its job, or None where another process had enqueued it already.
        """
        backend = await self._opened_backend()
        stamped = [
            self.envelope(schedule.message, owner=PERIODIC_OWNER, idempotency_key=schedule.key(t))
            for t in ticks
        ]
        for envelope in stamped:  # (a mutable value inside the frozen message may have changed)
            claim_check.encoded(envelope.kind, envelope.payload)
        with tracing.send(stamped, None) as envelopes:
            results = await backend.fire_schedule(
                schedule.name, spec=schedule.spec(), fires=list(zip(ticks, envelopes, strict=True))
            )
        done = [(e, r) for e, r in zip(envelopes, results, strict=True) if r is not None]
        self.metrics.stored([e for e, _ in done], [r for _, r in done])
        return [
            None
            if r is None
            else Job(r.id, r.created, self, kind=schedule.kind, unique_repeat=r.unique_repeat)
            for r in results
        ]

    async def list_schedules(self) -> list[dict[str, Any]]:
        """Every schedule declared in this app, stored by a worker's scheduler, or declared
        by a live worker (before its first tick): name,
        kind, cron, tz, every_s, catch_up, declared (here), next_run, last_run (the newest
        tick enqueued), last_job_id and last_job_state (None once that job is pruned)."""
        backend = await self._opened_backend()
        states = await backend.schedule_states()
        live: dict[str, dict[str, Any]] = {}
        for worker in await self.workers():
            if not worker.lost:
                live.update(worker.schedules)
        entries = listing(self.schedules, states, self.clock.now(), live)
        for entry in entries:
            job_id = entry["last_job_id"]
            row = None if job_id is None else await backend.get(job_id)
            entry["last_job_state"] = None if row is None else row.state.value
        return entries

    async def ping(self) -> None:
        """Check that the open app's backend answers (readiness).

        Raises:
            ConfigurationError: the app is not open.
            BackendError: the backend is unreachable.
        """
        await self._require_backend().ping()

    # -- change feed ------------------------------------------------------------------------
    # For a process that holds the app open while it follows the feed (the web tier's hub and
    # event streams): these never open the app, so a reader that outlives it fails instead of
    # opening a backend no one will close.

    async def changes_since(
        self, seq: int, *, job_id: str | None = None, owner: str | None = None, limit: int = 500
    ) -> list[Change]:
        """Changes after feed position `seq`, oldest first, optionally of one job or owner.

        Raises:
            ConfigurationError: the app is not open.
        """
        return await self._require_backend().changes_since(
            seq, job_id=job_id, owner=owner, limit=limit
        )

    async def last_seq(self) -> int:
        """The newest change-feed position (0 when the feed is empty).

        Raises:
            ConfigurationError: the app is not open.
        """
        return await self._require_backend().last_seq()

    async def feed_head(self, seq: int) -> int:
        """How far a reader of the whole feed at `seq` may move on when it wants none of the
        changes (`JobStore.feed_head`).

        Raises:
            ConfigurationError: the app is not open.
        """
        return await self._require_backend().feed_head(seq)

    async def wait_changes(self, timeout: float) -> None:
        """Return soon after a change may have been committed, or after `timeout` seconds.

        Raises:
            ConfigurationError: the app is not open.
        """
        await self._require_backend().wait_changes(timeout)


#: The longest kind or queue name (characters): what every engine indexes (PostgreSQL
#: refused a few thousand bytes in an index entry, as a backend error) and the dashboard's
#: filters take.
MAX_NAME_LENGTH = 200


def _name_fault(name: object, what: str) -> str | None:
    """Why `name` cannot name a kind or queue (`what`), or None: one that is empty, too
    long, not printable (a NUL, a newline, a zero-width character), or has white space
    around it (`" sp"` and `"sp"` would be two queues that read as one)."""
    if not isinstance(name, str) or not name.strip():
        return f"a {what} name must not be empty (a string of text), not {name!r}"
    if len(name) > MAX_NAME_LENGTH:
        return f"a {what} name has at most {MAX_NAME_LENGTH} characters, not {len(name)}"
    if not name.isprintable() or name.strip() != name:
        return f"a {what} name must be printable text with no white space around it: {name!r}"
    return None


def _queue_name(queue: str) -> str:
    """A queue name as given, checked.

    Raises:
        ConfigurationError: an empty name, or one holding a NUL character (which no queue
            has: PostgreSQL cannot store one).
    """
    if not queue or not queue.strip():
        raise ConfigurationError("a queue name must not be empty")
    if "\x00" in queue:
        raise ConfigurationError("a queue name cannot hold a NUL character")
    return queue


def _close_now(backend: Backend) -> None:
    """Close `backend`, which no event loop owns (SQLite), from synchronous code, before
    returning: on a thread and loop of its own, wherever a loop may run in this one (a task
    of that loop would close it later, after the next open of the same database, or never,
    were the loop ending)."""
    closing = threading.Thread(
        target=lambda: asyncio.run(backend.close()), name="offload-close", daemon=True
    )
    closing.start()
    closing.join()


def _bound(backend: Backend) -> bool:
    """Whether `backend`'s connections belong to the loop that opened it (`App._loop_bound`)."""
    return bool(getattr(backend, "loop_bound", False))


def _check_callable(fn: Callable[..., Any], kind: str, message: type[Message]) -> None:
    """Refuse, as it is registered, a handler the worker could not call with the message
    and the context (each of its jobs would fail, attempt after attempt, on a TypeError),
    one whose message is typed as another message class, and an async one whose context is
    typed `SyncContext`. The signature is the one the worker calls: a decorator's wrapper
    (`functools.wraps`) is taken as it is, not as the function it wraps."""
    if not callable(fn):
        raise ConfigurationError(f"the handler of {kind!r} must be a function, not {fn!r}")
    try:
        signature = inspect.signature(fn, follow_wrapped=False)
    except (TypeError, ValueError):  # a callable Python cannot describe: the worker tries it
        return
    name = getattr(fn, "__qualname__", repr(fn))
    try:
        bound = signature.bind(None, None)
    except TypeError as exc:
        raise ConfigurationError(
            f"the handler of {kind!r}, {name}{signature}, must take the message and the "
            f"context, (msg, ctx): {exc}"
        ) from None
    params = [signature.parameters[p] for p in bound.arguments]
    if params[0].kind is not params[0].VAR_POSITIONAL:
        typed = _annotation(fn, params[0].name)
        if typed and not any(issubclass(message, cls) for cls in typed):
            classes = [*typed, message]

            def named(cls: type) -> str:  # (a class of the same name elsewhere: its module)
                same = any(c is not cls and c.__name__ == cls.__name__ for c in classes)
                return f"{cls.__module__}.{cls.__qualname__}" if same else cls.__name__

            shown = " | ".join(named(cls) for cls in typed)
            raise ConfigurationError(
                f"the handler of {kind!r}, {name}, takes a {shown}: its jobs carry a "
                f"{named(message)}"
            )
    context = params[-1].annotation
    if isinstance(context, str):  # ("'SyncContext'": quoted under future annotations)
        context = context.strip("'\"")
    wrapper = hasattr(fn, "__wrapped__")  # (its annotations are the wrapped function's)
    if is_async_callable(fn) and context in _SYNC_CONTEXT and not wrapper:
        raise ConfigurationError(
            f"the handler of {kind!r}, {name}, is async: its context is a Context, whose "
            "calls it awaits (SyncContext types a plain def handler's)"
        )


def _annotation(fn: Callable[..., Any], param: str) -> list[type[Message]]:
    """The message classes a handler's parameter is typed as (a class, or a union of
    them), or [] where it is typed otherwise, not at all, or in a way not resolved here."""
    try:
        typed = typing.get_type_hints(fn).get(param)
    except Exception:  # (a name only its module's own import-time scope knew)
        return []
    union = isinstance(typed, types.UnionType) or typing.get_origin(typed) is typing.Union
    members = typing.get_args(typed) if union else (typed,)
    if not all(isinstance(m, type) and issubclass(m, Message) for m in members):
        return []
    return list(members)


#: How a handler's signature may name `SyncContext` (a class, or text under
#: `from __future__ import annotations`).
_SYNC_CONTEXT = (SyncContext, "SyncContext", "offload.SyncContext", "offload.context.SyncContext")
