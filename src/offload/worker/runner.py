"""The worker: a claim loop plus named side tasks (heartbeat, rescuer, pruner, settler,
scheduler)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import enum
import functools
import logging
import math
import os
import random
import secrets
import socket
import sys
import threading
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from types import CodeType
from typing import Any

from pydantic import ValidationError

from .. import _claim_check as claim_check
from .. import tracing
from .._jsonable import jsonable
from .._payloads import aliases_read
from .._text import MESSAGE_CHARS, logged, said, storable
from ..app import App, HandlerSpec
from ..brokers import Backend
from ..brokers.base import NEWER_VERSION
from ..context import Handoffs
from ..contract import (
    Extension,
    JobState,
    Lease,
    Message,
    Outcome,
    Settled,
    WorkerInfo,
)
from ..errors import (
    BackendError,
    BlobStoreError,
    Cancel,
    ConfigurationError,
    Fail,
    MissingUpgrader,
    Retry,
    UpgradeError,
    _ForAnotherWorker,
    _Unstorable,
)
from ..notify.base import NOTIFY_QUEUE, Notifier
from ..notify.dispatch import Dispatcher
from ..notify.plan import follow_ups
from ..versions import chain_problem, runnable_versions, upgrade
from .context import Context, SyncContext
from .failures import FailureLog
from .gating import ClaimGate
from .lease import Renewal, fresh, stalled_s
from .loopwatch import LoopWatch
from .prefetch import DEFAULT_PREFETCH, GIVE_BACK_AFTER_S, Prefetch
from .rescue import decide_all, retry_or_dead
from .scheduler import Scheduler

log = logging.getLogger("offload.worker")

#: Handlers run at once per worker process.
DEFAULT_CONCURRENCY = 16
#: Seconds a stopping worker waits for running jobs before releasing them.
DEFAULT_GRACE_S = 30.0
#: Longest idle sleep between claim attempts when no wake-up arrives (seconds).
DEFAULT_IDLE_POLL_S = 1.0
#: Longest time between heartbeats (seconds); shorter leases beat at a third of the lease.
DEFAULT_HEARTBEAT_S = 2.0

#: Seconds between two prunes of finished jobs by one worker (spread by a random start).
DEFAULT_PRUNE_EVERY_S = 300.0
#: Lapsed leases one rescue call reads and decides at most.
RESCUE_BATCH = 500
#: Longest a stopping worker waits for its settler to write the last outcomes (seconds);
#: then it cancels it and tries once itself.
FLUSH_GUARD_S = 30.0
#: Seconds a stopping worker waits for the runs it cancelled to end (at their next step; a
#: handler's own cleanup may take a while) before it cancels those still going once more,
#: and leaves those that go on (their handler ignores its cancellation: `tasks_left`).
CANCELLED_RUNS_WAIT_S = 10.0
#: Seconds a stopping worker waits, after a second stop and after its second cancel, for
#: cancelled runs to end (the short cleanups that let a cancellation through).
CANCELLED_RUNS_FLOOR_S = 2.0
#: Seconds a worker's event loop may not run before its health check fails (`health`):
#: meanwhile no lease of its beats, and past the lease its jobs are run again elsewhere.
UNHEALTHY_AFTER_S = 10.0
#: Seconds a stopping worker gives the deletion of its registry entry: one not deleted shows
#: as lost, and is forgotten in time (an outage would hold the exit its retry deadline).
FORGET_WITHIN_S = 3.0
#: Seconds before a job stored at a version newer than this worker runs may be claimed
#: again, after the worker gave it back unspent (for a worker that knows its version).
NEWER_VERSION_DELAY_S = 30.0
#: Threads running on past their attempts at once, per slot, past which the worker stops
#: whatever their age (each holds a thread and its memory; cancels and short timeouts of
#: handlers that never look at `ctx.cancelled` could pile up thousands within a long grace).
RUN_ON_LIMIT_PER_SLOT = 4
#: A side task that raises is restarted, unless it already failed this many seconds before
#: or less: then the worker stops loudly (see `Worker._supervise`).
SIDE_RESTART_WINDOW_S = 60.0
#: Seconds before a renewal of the held leases that failed (a backend error) is tried again.
RECHECK_RETRY_S = 0.5

_SHUTDOWN, _CANCEL, _LOST = "shutdown", "cancel", "lost"
#: How long a stopping worker waits for the calls its handlers' threads handed to its loop
#: to end once cancelled (`Handoffs.aclose`): a cancelled query's cleanup, say.
HANDOFFS_END_S = 5.0
_CANCELLED = {"type": "Cancelled", "message": "cancelled while running"}
_RELEASED = {"type": "Released", "message": "worker shut down; job released"}
_GIVEN_BACK = {
    "type": "Released",
    "message": "held ahead by a worker whose jobs turned out long; back in the queue",
}


class _Phase(enum.Enum):
    AHEAD = "ahead"  # claimed, waiting in line for a free slot
    RUNNING = "running"  # its handler runs
    SETTLING = "settling"  # its outcome waits for the settler


@dataclasses.dataclass(slots=True, eq=False)
class _Job:
    """One job whose lease this worker holds, from its claim until its outcome is written.

    Its lease beats in every phase. A job whose lease is lost (or claimed again under a new
    one) leaves the worker's records at once; a run it still has winds down uncounted there.
    """

    lease: Lease
    #: When its lease was granted or last renewed (see `lease.Renewal`).
    renewed: Renewal
    phase: _Phase = _Phase.AHEAD
    #: The run of its handler, and that run's context (while RUNNING).
    task: asyncio.Task[Outcome | None] | None = None
    context: Context | None = None
    #: Why its run was cancelled: `_SHUTDOWN`, `_CANCEL` or `_LOST`.
    reason: str = _SHUTDOWN
    #: The tracing context of its last run's span, which its deliveries continue.
    trace: dict[str, str] | None = None
    #: When its run began (loop time), and how long it ran once it ended (metrics).
    began: float = 0.0
    ran_s: float | None = None
    #: Whether its run's outcome is in the registry's counts (`_count`, as the run ended).
    counted: bool = False
    #: Its plain handler's call in the thread pool (while it runs, and after, if it ran on).
    thread: Future[Any] | None = None
    #: The outcome of an attempt that ended while its thread runs on (a timeout, a cancel):
    #: reported once the thread returns (`_hold_until_returned`), and since when (loop time).
    held: Outcome | None = None
    held_since: float = 0.0
    #: Its lease was found lost (`_let_go`): its run's side steps and file writes are refused.
    lost: bool = False
    #: Its last run's context (kept past the run: a thread may run on with it).
    ran_context: Context | None = None
    #: Whether the outcome reported for it may run it again (retrying, released): a
    #: thread that runs on past it then acts for the job no more (`_holds`).
    again: bool = False


class _ThreadRun:
    """A plain handler's call as the thread pool runs it, which a stopping worker may
    abandon while it still waits for a thread (then it returns without calling)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self._lock = threading.Lock()
        self._started = False
        self._abandoned = False
        self._thread: int | None = None

    def __call__(self) -> Any:
        with self._lock:
            if self._abandoned:
                return None  # its job was released; no one reads this
            self._started = True
            self._thread = threading.get_ident()
        try:
            return self.fn()
        finally:
            self._thread = None

    def where(self) -> str:
        """The stack of the thread that runs the call now ('' once it returned): where a
        handler that ran over its timeout was."""
        ident = self._thread
        frame = None if ident is None else sys._current_frames().get(ident)
        return "" if frame is None else "".join(traceback.format_stack(frame))

    def abandon(self) -> bool:
        """Whether the call will never start (abandoned now, or before); False once it runs."""
        with self._lock:
            if not self._started:
                self._abandoned = True
            return self._abandoned


async def _unready(check: Callable[[Any], str | None], message: Any) -> str | None:
    """What `HandlerSpec.unready` says of `message`, asked in a thread: it may import the
    user's code (a Django task's module), which must not hold the event loop. A check that
    raises says nothing: the handler runs and meets the same error, which its attempt records.
    """
    try:
        return await asyncio.to_thread(check, message)
    except Exception:
        log.debug("the readiness check of a %s raised; its handler runs", type(message).__name__)
        return None


def _for_another(outcome: Outcome) -> bool:
    """Whether a run gave its job back unspent for another worker (`Worker._given_back`)."""
    return bool(outcome.refund) and (outcome.error or {}).get("type") == NEWER_VERSION


def _error(exc: BaseException, type_name: str | None = None) -> dict[str, Any]:
    return {
        "type": storable(type_name or type(exc).__name__),
        "message": storable(_message(exc)[:MESSAGE_CHARS]),
        "traceback": storable("".join(traceback.format_exception(exc))[-8000:]),
    }


def _message(exc: BaseException) -> str:
    """An error's message as clients see it: an OS error's without the file it names (a
    server path: `[Errno 2] No such file or directory`), and one of offload's own stores
    (the blob store, the job backend) without where it is (a folder, a host), which the
    traceback keeps for operators."""
    if isinstance(exc, BackendError):
        which = "blob store" if isinstance(exc, BlobStoreError) else "job backend"
        return f"the {which} failed; operators find why in the job's traceback"
    if isinstance(exc, OSError) and exc.strerror and (exc.filename or exc.filename2):
        return f"[Errno {exc.errno}] {exc.strerror}" if exc.errno is not None else exc.strerror
    return said(exc)


def _failure_fields(env: Any, exc: BaseException, state: JobState) -> dict[str, Any]:
    """The structured fields of a `job_failed` log record: which job, where, which attempt,
    what failed it (the error's type) and the state it left the job in (`retrying`, `dead`
    or `failed`), for a log pipeline to count and filter by."""
    return {
        "action": "job_failed",
        "job_id": env.id,
        "kind": env.kind,
        "queue": env.queue,
        "attempt": env.attempt,
        "error_type": type(exc).__name__,
        "state": state.value,
        "dead": state is JobState.DEAD,
    }


def _by_alias(
    cls: type[Message], payload: Mapping[str, Any], keys: frozenset[str]
) -> dict[str, str]:
    """Of `keys` (those `cls` refused as unknown), the names of its fields that it reads by
    alias only, with the alias to read them under, where the payload carries no alias of
    the field (else the name is left out: the alias wins)."""
    out = {}
    for key in keys:
        field = cls.model_fields.get(key)
        names = [] if field is None else [a for a in aliases_read(field) if a != key]
        if names and not any(a in payload for a in names):
            out[key] = names[0]
    return out


def _signal_in(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The signal an exception group (an `asyncio.TaskGroup`'s) holds, if any: `Fail` first
    (or a step's value that cannot be stored, which fails the job for good too), then
    `Cancel`, then `Retry` (the one that says most about the job)."""
    kinds: tuple[type[BaseException], ...] = (Fail, _Unstorable, Cancel, Retry)
    for kind in kinds:
        found: BaseException | None = group.subgroup(kind)
        while isinstance(found, BaseExceptionGroup):
            found = found.exceptions[0]
        if found is not None:
            return found
    return None


def _unstorable(exc: Exception, step: str | None = None) -> TypeError:
    """The error of a job whose handler returned what its result cannot store (or whose
    `ctx.once` step `step` did, what the step's record cannot)."""
    if step is not None:
        error = TypeError(
            f"the value of the step {step!r} (ctx.once) cannot be stored ({exc}); the job is "
            "not retried, as the step ran: return what JSON carries"
        )
    else:
        error = TypeError(
            f"the handler's return value cannot be stored as the job's result ({exc}); it "
            "is not retried, as its handler ran: return what JSON carries"
        )
    error.__cause__ = exc
    return error


class Worker:
    """Runs the handlers of `app` for jobs claimed from `queues`.

    Args:
        app: the App whose handlers run (its worker module imported).
        queues: queues to claim from; every queue with a handler when None.
        concurrency: handlers running at once.
        lease_s: lease length; a heartbeat renews it while the handler runs.
        grace_s: on stop, how long running jobs may finish before they are released.
        prefetch: most jobs claimed ahead of free slots, held for the next free slot; the
            worker holds only about `prefetch.PREFETCH_HORIZON_S` of work (from recent run times).
        notifiers: the `webhook` and `email` notifiers of delivery jobs (defaults from the
            settings); delivery jobs are claimed from the notify queue unless `queues` is
            given without it.
        max_jobs: run this many jobs, then stop (None: no limit); the worker never claims
            more than it has left to run, so it gives back nothing it did not run.
        exit_when_idle_s: stop once no job ran or was there to claim for this long (None:
            never).
        slot: the process's slot under a supervisor (`--processes`, `--autoscale`: 1 to
            N); its start and stop lines then name the slot and the pid.
        scheduler: fire the app's periodic schedules (`offload.testing.run_jobs`: no).
    """

    def __init__(
        self,
        app: App,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        lease_s: float | None = None,
        grace_s: float = DEFAULT_GRACE_S,
        prefetch: int = DEFAULT_PREFETCH,
        idle_poll_s: float = DEFAULT_IDLE_POLL_S,
        worker_id: str | None = None,
        notifiers: Mapping[str, Notifier] | None = None,
        max_jobs: int | None = None,
        exit_when_idle_s: float | None = None,
        slot: int | None = None,
        scheduler: bool = True,
    ) -> None:
        if concurrency < 1:
            raise ConfigurationError("concurrency must be at least 1")
        if max_jobs is not None and max_jobs < 1:
            raise ConfigurationError("max_jobs must be at least 1")
        if exit_when_idle_s is not None and exit_when_idle_s < 0:
            raise ConfigurationError("exit_when_idle_s must be 0 or more")
        if prefetch < 0:
            raise ConfigurationError("prefetch must be 0 or more")
        self.app = app
        handled = sorted({h.message.queue for h in app.handlers.values()})
        if not (queues or handled):
            raise ConfigurationError(f"app {app.name!r} has no handlers: import its worker module")
        self.queues = list(queues) if queues else [*handled, NOTIFY_QUEUE]
        #: The versions this worker runs of each kind it claims, as it records them.
        self.kinds = self._runnable(app)
        #: How each periodic schedule its app declares ticks, by name, as it records them.
        self.schedules = {s.name: s.spec() for s in app.schedules.values()}
        #: The limits per kind on its queues: which claim it makes.
        #: Warns of failed calls to the backend, each kind once in a while (an outage).
        self.failures = FailureLog()
        self.gate = ClaimGate(app, self.queues, self.failures)
        self.dispatcher = Dispatcher(app, **(notifiers or {}))
        #: Handlers of the built-in delivery kinds (the app's own are looked up as jobs come).
        self.builtin = self.dispatcher.handlers()
        self.concurrency = concurrency
        self.lease_s = lease_s or app.settings.lease_s
        self.grace_s = grace_s
        self.prefetch = prefetch
        self.idle_poll_s = idle_poll_s
        self.max_jobs = max_jobs
        self.exit_when_idle_s = exit_when_idle_s
        self.slot = slot
        self.scheduler = scheduler
        #: How the start and stop lines name this worker: `worker 2 (pid 1234)` in a slot.
        self.label = "worker" if slot is None else f"worker {slot} (pid {os.getpid()})"
        #: Jobs started (counted against `max_jobs`).
        self.begun = 0
        #: When (loop time) the last run ended that was not a give-back for another worker,
        #: or the claim loop first found nothing to do; `exit_when_idle_s` counts from it.
        self._active_at: float | None = None
        self.heartbeat_s = min(DEFAULT_HEARTBEAT_S, self.lease_s / 3)
        #: Seconds between two records in the registry: every heartbeat, so one that stops
        #: shows as lost after three missed (`brokers.base.WORKER_LOST_AFTER_S`).
        self.record_every_s = self.heartbeat_s
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"
        self._stop = asyncio.Event()
        self._stop_now = asyncio.Event()
        #: Every job whose lease this worker holds (and beats), by job id.
        self._jobs: dict[str, _Job] = {}
        #: The jobs claimed ahead, in line for a free slot.
        self._line: deque[_Job] = deque()
        #: Handler runs not yet ended (a run whose lease was lost included).
        self._busy = 0
        #: The renewal of every held lease that jobs in line wait for (see `_fill`).
        self._recheck: asyncio.Task[None] | None = None
        #: Sizes the claims from the run times of recent jobs.
        self._prefetch = Prefetch(prefetch, concurrency)
        #: The check of the jobs held ahead when their give-back falls due (see Prefetch).
        self._give_back_due: asyncio.TimerHandle | None = None
        #: When each run still going began (loop time), by its job's identity, oldest first
        #: (in the order they started): the prefetch counts slots held by runs far longer
        #: than the recent ones as finishing little.
        self._running: dict[int, float] = {}
        self._pending: list[Outcome] = []
        self._pending_ready = asyncio.Event()
        #: Set while every reported outcome is written (none pending, none being written).
        self._flushed = asyncio.Event()
        self._flushed.set()
        #: When the worker began to stop (`_shutdown`): its last outcomes are written after.
        self._flush_began: float | None = None
        #: A settle begun since then failed, the backend out of reach for its whole retry
        #: deadline: the stopping worker waits no longer (`_shutdown`).
        self._settle_failed: BackendError | None = None
        self._settle_failing = asyncio.Event()
        #: Why a stopping worker gave up writing its last outcomes: a settle failed while it
        #: waited for them (`_shutdown`).
        self._gave_up: BackendError | None = None
        self._slot_free = asyncio.Event()
        self._threads = self._pool()
        #: The jobs whose plain (`def`) handler runs in a thread of `_threads`: its call.
        self._in_threads: dict[str, tuple[asyncio.Future[Any], _ThreadRun]] = {}
        #: The pool's calls that ran on past their attempt (its timeout, a cancel), which
        #: may still run: `threads_running_on`; of those, the ones that still ran `grace_s`
        #: after their attempt ended.
        self._ran_on: list[Future[Any]] = []
        self._overdue: set[Future[Any]] = set()
        #: The calls its handlers' threads hand to its loop (`Context._bridge`): closed as
        #: it stops, for a thread that runs on would wait for ever on a call handed to the
        #: loop as it made its last run (a run makes new ones).
        self._handoffs = Handoffs()
        #: Whether `run` closes them as it ends; `offload.testing.run_jobs` closes them
        #: itself, once its wait for threads that ran on is over (their cleanup calls in).
        self._closes_handoffs = True
        #: Whether the worker stopped because more threads ran on than it has slots.
        self.wedged = False
        #: Async handlers' runs a stop left running: each ignored its cancellation (it
        #: caught `CancelledError` and went on). Their leases lapse; the event loop's end
        #: would wait for them, maybe for ever (`offload worker` exits without). So do
        #: calls its handlers' threads handed to its loop that ignored theirs (`Handoffs`).
        self.tasks_left = 0
        self._loop_watch: LoopWatch | None = None
        #: The side tasks by name; when each last failed (loop time).
        self._side: dict[str, asyncio.Task[None]] = {}
        self._failed_at: dict[str, float] = {}
        #: The side task that stopped for good and why: `run` raises once shut down.
        self._failure: tuple[str, BaseException | None] | None = None
        #: Set while no handler runs.
        self._idle = asyncio.Event()
        self._idle.set()
        #: Set once claiming starts; set once `run` has returned (the app released).
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()
        #: Count of settled outcomes.
        self.settled = 0
        #: Count of side tasks restarted after a failure.
        self.restarts = 0
        #: Attempts run to an outcome, and how many of those failed (the registry shows both).
        self.processed = 0
        self.failed = 0
        #: Lease tokens of outcomes sent again after a settle failed (`_not_recorded`).
        self._unknown: set[str] = set()
        #: The kinds and fields of jobs run without fields their class lacks, said once.
        self._ignored_said: set[tuple[str, frozenset[str]]] = set()
        #: When `run` began (the registry's `started_at`).
        self.started_at = datetime.now(UTC)

    def _runnable(self, app: App) -> dict[str, list[int]]:
        """The versions this worker runs of each kind it claims (see `versions`).

        Raises:
            ConfigurationError: a handled kind's upgraders leave a gap (or start at or
                after its current version): some older jobs could never run.
        """
        kinds = {}
        for kind, handler in app.handlers.items():
            steps = app.upgraders.get(kind, {})
            problem = chain_problem(kind, handler.message.version, steps)
            if problem is not None:
                raise ConfigurationError(problem)
            if handler.message.queue in self.queues:
                kinds[kind] = runnable_versions(handler.message.version, steps)
        return kinds

    def _job_of(self, job_id: str) -> tuple[str, bool] | None:
        """The kind of a job this worker holds and whether its handler is plain, or None
        (`LoopWatch`, from its thread)."""
        job = self._jobs.get(job_id)
        if job is None:
            return None
        kind = job.lease.envelope.kind
        spec = self._spec_of(kind)
        return kind, spec is not None and not spec.is_async

    def _plain_running(self) -> list[str]:
        """The jobs whose plain handlers run in threads now, as `job (kind)` (`LoopWatch`,
        from its thread)."""
        running = []
        for job_id in list(self._in_threads):
            job = self._jobs.get(job_id)
            if job is not None:
                running.append(f"{job_id} ({job.lease.envelope.kind})")
        return running

    def _async_handlers(self) -> dict[CodeType, str]:
        """The code of each async handler, by kind (`LoopWatch`)."""
        found = {}
        for kind, spec in self.app.handlers.items():
            code = getattr(spec.fn, "__code__", None)
            if spec.is_async and isinstance(code, CodeType):
                found[code] = kind
        return found

    def request_stop(self, *, now: bool = False) -> None:
        """Stop claiming; running jobs get `grace_s` to finish, or with `now` none: they are
        released at once (a second SIGTERM or SIGINT asks so)."""
        if now and self._stop.is_set() and not self._stop_now.is_set():
            log.warning(
                "asked to stop again: releasing the running jobs now, without the rest of the "
                "grace period",
                extra={"action": "drain"},
            )
        self._stop.set()
        if now:
            self._stop_now.set()

    def health(self) -> str | None:
        """Why this worker is not healthy, or None (a liveness probe's question, asked from
        any thread: `offload worker --metrics-port` answers it at `GET /healthz`). Its event
        loop has not run for `UNHEALTHY_AFTER_S`: an async handler blocks it (it sleeps,
        computes or calls blocking I/O), no lease of its beats, and a restart is the way
        out. A worker starting, stopping or waiting for its backend is healthy: a restart
        would not help."""
        watch = self._loop_watch
        if watch is None or self.stopped.is_set():
            return None
        blocked = watch.blocked_s()
        if blocked < UNHEALTHY_AFTER_S:
            return None
        return (
            f"the worker's event loop has not run for {blocked:.0f}s: an async handler blocks "
            "it (the log names the job and its line: action loop_blocked)"
        )

    @property
    def running(self) -> int:
        """Handlers running now."""
        return self._busy

    @property
    def held_ahead(self) -> int:
        """Jobs claimed ahead of a free slot, not started yet."""
        return len(self._line)

    # -- main loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Claim and run jobs until `request_stop`, then shut down gracefully.

        Raises:
            RuntimeError: a side task stopped for good (the worker stopped at once, its
                running jobs released); chained to the side task's error. Or more plain
                handlers' threads ran on `grace_s` past their attempts than it has slots
                (`wedged`: it stopped as on `request_stop`); a process should then end without
                waiting for them (`threads_running_on`), as `offload worker` does.
        """
        await self.app.open()
        if self._handoffs.closed:  # (an earlier run's)
            self._handoffs = Handoffs()
        self.started_at = datetime.fromtimestamp(self.app.clock.now(), UTC)
        unwatch = self.app.metrics.watch_slots(lambda: (self._busy, self.concurrency))
        await self._record()  # before the first claim: the web tier may ask
        await self.gate.declare(self.app._require_backend())
        for name in ("heartbeat", "rescuer", "pruner", "settler", *self._extra_side_tasks()):
            self._spawn(name)
        supervisor = asyncio.create_task(self._supervise(), name="offload-supervisor")
        log.info(
            "%s started",
            self.label,
            extra={
                "action": "worker_start",
                "worker": self.id,
                "queues": self.queues,
                "slot": self.slot,
            },
        )
        loop_watch = LoopWatch(self._job_of, self._async_handlers(), in_threads=self._plain_running)
        loop_watch.start()
        self._loop_watch = loop_watch
        try:
            try:
                await self._claim_loop(self.app._require_backend())
            finally:
                await self._shutdown(supervisor)
            if self._failure is not None:
                name, cause = self._failure
                raise RuntimeError(f"worker side task {name} stopped") from cause
            if self.wedged:
                raise RuntimeError("more handler threads ran on past their attempts than slots")
        finally:
            try:
                unwatch()
                self._loop_watch = None  # (its marks end: no health check reads them)
                loop_watch.stop()
                await self._forget_record()  # not live any more
                try:
                    if self._closes_handoffs:  # (what threads that run on call now is refused)
                        self.tasks_left += await self._handoffs.aclose(HANDOFFS_END_S)
                finally:
                    await self.app.close()
            finally:
                if self._closes_handoffs:
                    self._handoffs.close()
                self.stopped.set()
        log.info(
            "%s stopped",
            self.label,
            extra={"action": "worker_stop", "worker": self.id, "slot": self.slot},
        )

    async def _claim_loop(self, backend: Backend) -> None:
        """Claim while slots are free (or the prefetch has room) until stopping; every wait
        ends at once when the worker stops, or when a side task stops for good."""
        self.started.set()
        stop_wait = asyncio.create_task(self._stop.wait())
        # The last claim made on a wake-up took fewer jobs than it asked for: nothing else
        # was ready, so the next step is the wait, not a claim that would find nothing.
        drained = False
        try:
            while not (self._stop.is_set() or self._ran_all()):
                limit = self._claim_size()
                if limit <= 0:
                    self._slot_free.clear()
                    await self._race(self._slot_free.wait(), stop_wait)
                    continue
                leases: list[Lease] | None = []
                if not drained:
                    leases = await self._take(
                        self.gate.claim(backend)(
                            self.queues, worker_id=self.id, lease_for=self.lease_s, limit=limit
                        ),
                        stop_wait,
                    )
                    if leases is None:
                        continue
                drained = False
                if not leases:
                    wait_s = self._idle_wait(bool(self._busy or self._line))
                    if wait_s is None:
                        break  # idle for --exit-when-idle
                    # Asked at each wait: the gate turns gated when limits appear meanwhile.
                    if not self._claims_on_wake(backend):
                        await self._race(backend.wait(self.queues, wait_s), stop_wait)
                        continue
                    leases = await self._take(
                        self._claim_on_wake(backend, wait_s, limit, stop_wait), stop_wait
                    )
                    if leases is None:
                        continue
                    drained = 0 < len(leases) < limit
                if leases:
                    # The jobs just started reach their handlers before the next claim's
                    # request is built and sent (a claim's CPU, not its round trip, would
                    # otherwise come first: about 0.3 ms of pickup, bench/pickup_stages.py).
                    await asyncio.sleep(0)
        finally:
            stop_wait.cancel()

    async def _take(
        self, claim: Awaitable[list[Lease]], stop_wait: asyncio.Task[Any]
    ) -> list[Lease] | None:
        """Hold and start what `claim` leased (its leases count from now, before it is
        sent); None when it failed, logged, after a pause."""
        sent = self._renewal()
        try:
            leases = await claim
        except BackendError as exc:
            self.failures.warn("claim", exc, action="claim_error")
            await self._race(asyncio.sleep(1.0), stop_wait)
            return None
        self._hold(leases, sent)
        self._fill()
        if self._line:
            self._release_excess()  # (its checks go on while jobs are held ahead)
        return leases

    def _claims_on_wake(self, backend: Backend) -> bool:
        """Whether to wait with the backend's wait that claims as it wakes
        (`wait_and_claim`: Redis): for a plain claim, not a gated one (limits, fair queues),
        whose waits end for what held jobs back."""
        return not self.gate.gated and hasattr(backend, "wait_and_claim")

    async def _claim_on_wake(
        self, backend: Any, wait_s: float, limit: int, stop_wait: asyncio.Task[Any]
    ) -> list[Lease]:
        """Wait for work and claim it as it comes (`wait_and_claim`). A stop ends the wait
        through the backend (`halt_wait`: the claim behind it takes nothing), not by
        cancelling it, so that a claim that ran as the stop came answers its jobs, which
        the stop gives back unspent with the rest held ahead."""
        task = asyncio.ensure_future(
            backend.wait_and_claim(
                self.queues, wait_s, worker_id=self.id, lease_for=self.lease_s, limit=limit
            )
        )
        await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            try:
                await backend.halt_wait()
            except BackendError as exc:
                self.failures.warn("wait for work", exc, action="wait_error")
                task.cancel()
            await asyncio.wait({task})
        if task.cancelled():
            return []
        leases: list[Lease] = task.result()
        return leases

    def _ran_all(self) -> bool:
        """Whether `max_jobs` jobs have run to their end (none running or held): time to
        stop."""
        if self.max_jobs is None or self.begun < self.max_jobs or self._busy or self._line:
            return False
        log.info(
            "ran %d job%s (max_jobs): stopping",
            self.begun,
            "" if self.begun == 1 else "s",
            extra={"action": "max_jobs", "worker": self.id},
        )
        return True

    def _idle_wait(self, working: bool) -> float | None:
        """After a claim that found nothing: how long to wait for work, or None to stop
        (for `exit_when_idle_s` no job ran or was held, but for jobs given back for
        another worker: one no worker handles comes back every 30 s)."""
        if self.exit_when_idle_s is None:
            return self.idle_poll_s
        now = asyncio.get_running_loop().time()
        if self._active_at is None:
            self._active_at = now
        if working:
            return self.idle_poll_s
        left = self.exit_when_idle_s - (now - self._active_at)
        if left <= 0:
            log.info(
                "no job for %gs (exit_when_idle): stopping",
                self.exit_when_idle_s,
                extra={"action": "exit_when_idle", "worker": self.id},
            )
            return None
        return min(self.idle_poll_s, left)

    async def _race(self, coro: Awaitable[Any], stop_wait: asyncio.Task[Any]) -> None:
        """Wait for `coro` or the stop, whichever comes first. A wait for work that fails
        (the backend unreachable past its retry deadline) ends the wait early, its error
        logged here: the claim that follows meets the backend's state and handles it."""
        task = asyncio.ensure_future(coro)
        try:
            await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        error = None if task.cancelled() else task.exception()
        if isinstance(error, BackendError):
            self.failures.warn("wait for work", error, action="wait_error")
        elif error is not None:
            log.error("wait for work failed", exc_info=error, extra={"action": "wait_error"})

    def _renewal(self) -> Renewal:
        """Now, as a lease renewal asked for now records it (see `lease.Renewal`)."""
        return Renewal(asyncio.get_running_loop().time(), self.app.clock.now())

    def _hold(self, leases: Sequence[Lease], sent: Renewal | None = None) -> None:
        """Line up claimed jobs (their claim left at `sent`; default now). A job already
        held under an older lease (that lease lapsed and this worker claimed the job again)
        keeps only the new one."""
        sent = sent or self._renewal()
        for lease in leases:
            old = self._jobs.get(lease.job_id)
            if old is not None:
                self._let_go(old)
            job = _Job(lease, sent)
            self._jobs[lease.job_id] = job
            self._line.append(job)

    def _let_go(self, job: _Job) -> None:
        """Stop holding a job whose lease is gone (another worker, or a new claim, owns the
        job now): no beat, no outcome, and a run it has is cancelled (an outcome held for
        its thread is dropped, and taken out of the counts it entered as the run ended)."""
        self._forget(job)
        job.lost = True
        self._cut(job)
        held, job.held = job.held, None
        if held is not None and job.counted:
            self._count(held, -1)
        if job.phase is _Phase.AHEAD:
            self._line.remove(job)
        elif job.phase is _Phase.RUNNING:
            self._interrupt(job, _LOST)

    def _forget(self, job: _Job) -> None:
        if self._jobs.get(job.lease.job_id) is job:
            del self._jobs[job.lease.job_id]

    def _claim_size(self) -> int:
        """How many jobs to claim now: free slots plus the prefetch, or 0 to wait; never more
        than are left to run under `max_jobs`."""
        if self.gate.gated:  # no prefetch (see ClaimGate)
            size = self.concurrency - self._busy - len(self._line)
        else:
            size = self._prefetch.claim_size(
                self.concurrency - self._busy,
                len(self._line),
                asyncio.get_running_loop().time(),
                self._running.values(),
            )
        if self.max_jobs is not None:
            size = min(size, self.max_jobs - self.begun - len(self._line))
        return size

    def _fill(self) -> None:
        """Start jobs held ahead while slots are free (never once stopping).

        A job whose lease may have lapsed (the worker stalled past it: SIGSTOP, a long
        pause, a suspended machine) does not start on it: every held lease is renewed first
        (`_renew_held`), the jobs it refuses are dropped unspent, and the line goes on then.
        """
        while self._line and self._busy < self.concurrency and not self._stop.is_set():
            if self._recheck is not None or not self._first_fresh():
                self._recheck = self._recheck or asyncio.create_task(
                    self._renew_held(), name="offload-renew-held"
                )
                return
            self._start(self._line.popleft())

    async def _renew_held(self) -> None:
        """Renew every lease this worker holds in one batched extend (retried after a
        backend error); the jobs held ahead whose lease is gone are dropped unspent, the
        running ones cancelled (`_answered`). Then the line goes on."""
        try:
            while True:
                try:
                    if await self._beat(list(self._jobs.values())) and self._fresh_first():
                        break
                except Exception:  # a bug: said loudly, then tried again as after an outage
                    log.exception(
                        "renewing the held leases failed", extra={"action": "renew_error"}
                    )
                await asyncio.sleep(RECHECK_RETRY_S)
        finally:
            self._recheck = None
        self._fill()
        self._slot_free.set()

    def _fresh_first(self) -> bool:
        """After the held leases were renewed: put a job whose lease was not (its row locked
        by another transaction, PostgreSQL) behind the others, so that they start; True
        when the first in line may start now (or none is in line)."""
        for _ in range(len(self._line)):
            if self._first_fresh():
                return True
            self._line.rotate(-1)
        return self._first_fresh()

    def _first_fresh(self) -> bool:
        """Whether the first job in line may start on its lease (or none is in line)."""
        return not self._line or self._fresh(self._line[0])

    def _fresh(self, job: _Job) -> bool:
        """Whether `job`'s lease surely lasts, by this worker's own clocks (`fresh`)."""
        return fresh(
            job.renewed,
            self.lease_s,
            self.heartbeat_s,
            mono=asyncio.get_running_loop().time(),
            wall=self.app.clock.now(),
        )

    def _start(self, job: _Job) -> None:
        loop = asyncio.get_running_loop()
        job.phase = _Phase.RUNNING
        job.context = job.ran_context = ctx = self.context_for(job.lease)
        ctx._holds = functools.partial(self._holds, job)
        job.task = asyncio.create_task(self._execute(job, ctx), name=f"job-{job.lease.job_id}")
        job.began = self._running[id(job)] = loop.time()
        self.begun += 1
        self._busy += 1
        self._idle.clear()
        job.task.add_done_callback(functools.partial(self._finished, job))

    def _finished(self, job: _Job, task: asyncio.Task[Outcome | None]) -> None:
        """A run ended: report its outcome and hand its slot on."""
        self._busy -= 1
        del self._running[id(job)]
        if not self._busy:
            self._idle.set()
        job.task = job.context = None
        job.ran_s = task.get_loop().time() - job.began
        try:
            # Cancelled before its first step, `_execute` never saw the cancellation: report
            # what it would have (released, cancelled, or nothing for a lost lease).
            outcome = self._interrupted(job) if task.cancelled() else task.result()
            if outcome is not None and _for_another(outcome):
                self.begun -= 1  # none of max_jobs, and no activity for exit_when_idle
            else:
                self._active_at = task.get_loop().time()
            if outcome is not None:
                self._count(outcome)
                job.counted = True
                if job.thread is not None and not job.thread.done():
                    self._hold_until_returned(job, outcome)
                else:
                    self._report(job, outcome)
        except BaseException:
            outcome = None  # a bug: let the lease lapse, for the rescuer to run the job again
            log.exception("job %s: its outcome could not be reported", job.lease.job_id)
        if outcome is None:
            self._forget(job)
        self._release_excess()
        self._fill()
        self._slot_free.set()

    def _hold_until_returned(self, job: _Job, outcome: Outcome) -> None:
        """An attempt ended (its timeout, a cancel) while its plain handler's thread runs on:
        the job keeps its lease, and so its place under its kind's `max_running` and its
        unique key, until the thread returns, for `grace_s` at most; only then is the
        outcome reported, and the job may run again (never two runs of one job at once while
        the thread returns within the grace). The worker's slot is free at once. A stopping
        worker reports it without waiting (`_report_held`)."""
        loop = asyncio.get_running_loop()
        job.held, job.held_since = outcome, loop.time()

        def returned(_: Future[Any]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the worker is gone
                loop.call_soon_threadsafe(self._release_held, job)

        assert job.thread is not None
        job.thread.add_done_callback(returned)
        # A thread that never returns (it ignores ctx.cancelled) holds the job no longer
        # than a stopping worker waits for a run: its grace.
        loop.call_later(self.grace_s, self._release_held, job)

    def _release_held(self, job: _Job, *, stopping: bool = False) -> None:
        """Report the outcome held for a job whose thread ran on past its attempt: the
        thread returned, or its grace is over (whichever comes first; the other finds
        nothing held). A job that left this worker meanwhile (its lease lost) has nothing
        reported."""
        outcome, job.held = job.held, None
        if outcome is None or self._jobs.get(job.lease.job_id) is not job:
            return
        if not (outcome.state.final or stopping or self._stop.is_set()):
            # The job may run again: the thread, should it run on, acts for it no more (a
            # stopping worker closes its hand-offs itself, once it waited for threads).
            self._cut(job)
        held_s = asyncio.get_running_loop().time() - job.held_since
        if outcome.run_at is not None:  # a retry's backoff runs from when it is reported
            outcome = dataclasses.replace(outcome, run_at=outcome.run_at + held_s)
        self._report(job, outcome)

    def _cut(self, job: _Job) -> None:
        """The calls its last run's thread handed to the loop (a `ctx.once` step's await)
        are cancelled, and its next ones refused: the job is no longer this run's to act
        for (its lease lost, or its outcome reported while the thread runs on)."""
        if job.ran_context is not None and job.thread is not None and not job.thread.done():
            self._handoffs.cut(job.ran_context)

    def _cancel_held(self, job: _Job) -> None:
        """A cancel asked while a job's outcome is held (its thread runs on): a retry or
        a release becomes the cancel, written when the hold ends; a final outcome stays."""
        held = job.held
        if held is not None and not held.state.final:
            job.held = Outcome(lease=held.lease, state=JobState.CANCELLED, error=_CANCELLED)
            if job.counted:  # counted as the run ended: count what it now ends as
                self._count(held, -1)
                self._count(job.held)

    def _report_held(self) -> None:
        """Report at once the outcomes held for threads that run on: the stopping worker's
        process does not wait for them."""
        for job in list(self._jobs.values()):
            if job.held is not None:
                self._release_held(job, stopping=True)
                # (its thread may clean up as the worker waits for it, `run_jobs` too: the
                # stop closes its hand-offs once that wait is over)
                job.again = False

    def _count(self, outcome: Outcome, step: int = 1) -> None:
        """Count a run's outcome for the registry (`step` -1: take it back out): a release
        (unspent) is no attempt run."""
        if outcome.refund:
            return
        self.processed += step
        if outcome.state in (JobState.RETRYING, JobState.DEAD, JobState.FAILED):
            self.failed += step

    def _release_excess(self) -> None:
        """Give back jobs held ahead beyond what the prefetch allows (jobs turned out long)
        once they have been beyond it for a while: they go back to the queue unspent, for
        idle workers to take. Until then, checked again when that while is up, and every
        `GIVE_BACK_AFTER_S` while jobs are held ahead: runs that go on and on (hung, or
        long jobs none of which has ended yet) shrink the allowance with no run ending."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        excess = self._prefetch.excess(len(self._line), now, self._running.values())
        if excess:
            log.info(
                "gave back %d job%s held ahead: this worker's runs turned out long",
                excess,
                "" if excess == 1 else "s",
                extra={"action": "gave_back", "jobs": excess},
            )
            self._give_back(excess, _GIVEN_BACK)
        if self._give_back_due is not None or self._stop.is_set():
            return
        due = self._prefetch.give_back_at()
        if due is None and self._line:
            due = now + GIVE_BACK_AFTER_S
        if due is not None:
            self._give_back_due = loop.call_at(due, self._give_back_fell_due)

    def _give_back_fell_due(self) -> None:
        self._give_back_due = None
        self._release_excess()

    def _give_back(self, count: int, error: dict[str, str] = _RELEASED) -> None:
        """Release the last `count` jobs held ahead, attempt unspent, with `error` as the
        reason."""
        for _ in range(min(count, len(self._line))):
            job = self._line.pop()  # the last in line
            self._report(
                job, Outcome(lease=job.lease, state=JobState.QUEUED, refund=True, error=error)
            )

    # -- one job ----------------------------------------------------------------------------

    async def _execute(self, job: _Job, ctx: Context) -> Outcome | None:
        """One run of a job's handler; its outcome is reported as the run ends (`_finished`)."""
        kind = job.lease.envelope.kind
        spec = self._spec_of(kind)
        with tracing.process(job.lease) as span:
            try:
                outcome: Outcome | None = await self._attempt(job.lease, ctx, spec)
            except asyncio.CancelledError:
                outcome = self._interrupted(job)
            if outcome is not None:
                job.trace = tracing.ended(span, outcome)
            return outcome

    # -- one job for a caller that holds its lease (offload.serverless) ----------------------

    def context_for(self, lease: Lease) -> Context:
        """The handler's context of a job whose lease the caller holds and beats (its
        `max_attempts` the handler's budget, where it overrides the message's): a plain
        handler's is a `SyncContext`, typed for its calls without `await`."""
        loop = asyncio.get_running_loop()
        spec = self._spec_of(lease.envelope.kind)
        made = Context if spec is None or spec.is_async else SyncContext
        ctx = made(lease, self.app._require_backend(), self.app.blobs, loop)
        ctx._handoffs = self._handoffs
        ctx.max_attempts = (None if spec is None else spec.max_attempts) or ctx.max_attempts
        return ctx

    async def run_leased(self, lease: Lease, ctx: Context) -> Outcome:
        """Run a job the caller claimed to its outcome as the claim loop runs one: the
        handler's timeout, budget and backoff, dead-lettering, the process span, and the
        notifications of a final state (`follow_ups`). The caller settles the outcome; if it
        cancels the run, `interrupted` says what to settle instead."""
        spec = self._spec_of(lease.envelope.kind)
        with tracing.process(lease) as span:
            outcome = await self._attempt(lease, ctx, spec)
            trace = tracing.ended(span, outcome)
        self._count(outcome)
        return self._with_follow_ups(outcome, trace)

    def cancelled(self, lease: Lease) -> Outcome:
        """The outcome of a run the caller stopped as a user asked (a cancel), with its
        notifications; one stopped as its time ended is `out_of_time`'s."""
        outcome = self._interrupted(_Job(lease=lease, renewed=self._renewal(), reason=_CANCEL))
        assert outcome is not None  # only a lost lease reports none
        return self._with_follow_ups(outcome)

    def out_of_time(self, lease: Lease, why: str) -> Outcome:
        """The outcome of a run stopped as the time it was given ended (a serverless
        invocation's): a failed attempt, as a timeout is, retried after the handler's
        backoff, dead once its attempts are spent; `why` says why, in the job's error."""
        spec = self._spec_of(lease.envelope.kind)  # (a delivery job's too)
        assert spec is not None  # (a job with no handler here was given back, not run)
        return self._with_follow_ups(self._failed(lease, spec, TimeoutError(why)))

    def _report(self, job: _Job, outcome: Outcome) -> None:
        """Hand an outcome to the settler, with the notifications a final state sends; the
        lease beats until the outcome is written."""
        job.phase = _Phase.SETTLING
        job.again = not outcome.state.final
        self._pending.append(self._with_follow_ups(outcome, job.trace))
        self._flushed.clear()
        self._pending_ready.set()

    def _with_follow_ups(self, outcome: Outcome, trace: dict[str, str] | None = None) -> Outcome:
        """The outcome with the notifications of its final state, which commit with it (and
        only if it applies); the lease token marks them, so a repeat collapses. They continue
        `trace` (the span of the run that ended), else the job's own. A final state carries
        the handler's retry budget where it overrides the message's, whatever ended the job
        (a cancel, an upgrade that failed), as a success or a retry does. One that runs the
        job again carries those of a cancelled end, for the backend to commit if a cancel
        asked for meanwhile ends the job so instead."""
        env = outcome.lease.envelope
        final = outcome.state.final
        if final and outcome.max_attempts is None and (budget := self._handler_budget(env.kind)):
            outcome = dataclasses.replace(outcome, max_attempts=budget)
        notes = follow_ups(
            self.app,
            job_id=env.id,
            kind=env.kind,
            options=env.options,
            # one that would run again: those of the cancelled end a cancel asked for
            # meanwhile gives it instead (`Outcome.on_cancel`)
            state=outcome.state if final else JobState.CANCELLED,
            marker=outcome.lease.token,
            trace=trace or env.trace,
        )
        if not notes:
            return outcome
        if final:
            return dataclasses.replace(outcome, follow_ups=notes)
        return dataclasses.replace(outcome, on_cancel=notes)

    async def _to_run(self, lease: Lease, spec: HandlerSpec | None) -> Message | Outcome:
        """The message its handler is to run, or the attempt's outcome without running it:
        given back unspent (no handler here, a newer version, a message this code is not
        ready for), or failed at once (a payload that fits no contract)."""
        env = lease.envelope
        if spec is None:  # a worker of another deploy shares the queue, or will handle it
            why = f"{env.kind} waits for a worker that handles it"
            return self._handed_on(lease, why, here=" has no handler for it")
        payload = await self._payload(lease, spec)
        message = payload if isinstance(payload, Outcome) else self._message(lease, spec, payload)
        if isinstance(message, MissingUpgrader):
            message = await self._unreadable(lease, message)
        if not isinstance(message, Outcome) and spec.unready is not None:
            if (lacks := await _unready(spec.unready, message)) is not None:
                return self._handed_on(lease, lacks)
        return message

    async def _attempt(self, lease: Lease, ctx: Context, spec: HandlerSpec | None) -> Outcome:
        env = lease.envelope
        message = await self._to_run(lease, spec)
        if isinstance(message, Outcome) and _for_another(message):
            return message  # given back unspent: it did not start
        # Its wait ends here: it starts, to run its handler or to fail at once (a payload
        # that fits no contract).
        self.app.metrics.started(env.queue, self.app.clock.now() - max(env.enqueued_at, env.run_at))
        if isinstance(message, Outcome):
            return message
        assert spec is not None  # (`_to_run` gave no message without one)
        timeout = spec.timeout if spec.timeout is not None else env.timeout
        loop = asyncio.get_running_loop()
        began = loop.time()
        thread_run: _ThreadRun | None = None
        deadline: asyncio.Timeout | None = None
        try:
            if spec.is_async:
                call = spec.fn(message, ctx)
            else:
                # In the caller's context, so the handler's spans are the process span's.
                run = functools.partial(contextvars.copy_context().run, spec.fn, message, ctx)
                call = self._in_thread(env.id, run)
                thread_run = self._in_threads[env.id][1]
            if timeout:
                async with asyncio.timeout(timeout) as deadline:
                    result = await call
            else:
                result = await call
            await ctx._progress_settled()  # (its last report, before its outcome)
            self._prefetch.ran(loop.time() - began)
            try:
                stored = jsonable(result)
            except (TypeError, ValueError) as exc:  # its handler ran: a retry would run it again
                return self._failed_for_good(lease, _unstorable(exc))
            return Outcome(
                lease=lease,
                state=JobState.SUCCEEDED,
                result=stored,
                max_attempts=spec.max_attempts,
            )
        except BaseException as exc:
            if ctx._ending:
                # The worker (or its caller) asked the run to end before it cancelled it: a
                # stop, a cancel asked for, a lost lease. Whatever came out of the handler
                # then (its cleanup may raise) ends the run as asked, `_execute` says how;
                # any other is the handler's own.
                ctx._progress_dropped()
                if isinstance(exc, asyncio.CancelledError):
                    raise
                raise asyncio.CancelledError() from exc
            # The attempt's own timeout, not a TimeoutError of the handler's (a deadline of
            # its own, a client's): that is a failed attempt like any other error
            overran = deadline is not None and deadline.expired()
            if overran and thread_run is not None:
                if where := thread_run.where():  # (the thread runs on: where it is now)
                    exc.add_note(f"the handler's thread was at:\n{where.rstrip()}")
            ran_over = timeout if overran else None
            if overran:
                ctx.cancelled.set()  # (told first: a thread that reports on is told to stop)
            with contextlib.suppress(Exception):  # (the handler's own error stands)
                await ctx._progress_settled()
            return self._raised(lease, ctx, spec, exc, ran_over, loop.time() - began)

    def _raised(
        self,
        lease: Lease,
        ctx: Context,
        spec: HandlerSpec,
        exc: BaseException,
        ran_over: float | None,
        ran_s: float,
    ) -> Outcome:
        """The outcome of an attempt whose handler raised `exc` after `ran_s` seconds (or
        that ran over its timeout of `ran_over` seconds, `exc` the timeout's error), the
        worker not having asked it to end: a signal's (`Retry`, `Fail`, `Cancel` …), else a failed
        attempt, whatever it raised (a `CancelledError` of its own, a deadline of its own
        that cancelled it, `sys.exit()`, a `BaseException`: none ends the worker, or
        releases the job to run again at once, for ever)."""
        if isinstance(exc, BaseExceptionGroup):  # a TaskGroup's: a signal inside it counts
            exc = _signal_in(exc) or exc
        if isinstance(exc, Retry):
            return self._failed(lease, spec, exc, delay=exc.delay)
        if isinstance(exc, _ForAnotherWorker):
            return self._handed_on(lease, exc.reason)
        if isinstance(exc, _Unstorable):
            return self._failed_for_good(lease, _unstorable(exc.cause, exc.step))
        if isinstance(exc, Fail):
            return self._failed_for_good(lease, exc)
        if isinstance(exc, Cancel):
            return Outcome(
                lease=lease,
                state=JobState.CANCELLED,
                error={"type": "Cancel", "message": storable(exc.reason)},
            )
        self._prefetch.ran(ran_s)
        if isinstance(exc, TimeoutError) and ran_over:
            ctx.cancelled.set()  # a threaded handler cannot be killed; tell it to stop
            if not said(exc):
                # The timeout's own error, with what it cancelled as its cause (an async
                # handler's frames, at the await it was cancelled in) and its notes (where a
                # plain handler's thread was): the traceback tells where it hung.
                over = TimeoutError(f"the attempt ran over its {ran_over:g}s timeout")
                over.__cause__ = exc.__cause__
                for note in getattr(exc, "__notes__", ()):
                    over.add_note(note)
                exc = over
        elif ran_over:  # cancelled at the timeout, it raised something else on its way out
            ctx.cancelled.set()
            exc.add_note(f"(raised as the attempt ran over its {ran_over:g}s timeout)")
        elif isinstance(exc, TimeoutError) and not said(exc):  # a deadline of its own
            own = TimeoutError("a deadline of the handler's own ran out")
            own.__cause__ = exc
            exc = own
        return self._failed(lease, spec, exc)

    def _in_thread(self, job_id: str, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run a plain handler in the pool, kept in `_in_threads` until its attempt ends;
        a thread that runs on past it is `_runs_on`'s."""
        run = _ThreadRun(fn)
        in_pool = self._threads.submit(run)
        call = asyncio.wrap_future(in_pool)
        self._in_threads[job_id] = (call, run)
        job = self._jobs.get(job_id)
        if job is not None and job.phase is _Phase.RUNNING:
            job.thread = in_pool

        def forget(_: asyncio.Future[Any]) -> None:
            if self._in_threads.get(job_id, (None,))[0] is call:  # not a later run's
                del self._in_threads[job_id]
            if not in_pool.done():  # the attempt ended (cancelled), the thread runs on
                self._runs_on(job_id, in_pool)

        call.add_done_callback(forget)
        return call

    @property
    def threads_running_on(self) -> int:
        """Plain handlers' threads that still run past their attempt (its timeout, or a
        cancel): a thread cannot be stopped, and the process's exit would wait for them."""
        self._ran_on = [call for call in self._ran_on if not call.done()]
        return len(self._ran_on)

    def _pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(self.concurrency, thread_name_prefix="offload-handler")

    def _runs_on(self, job_id: str, in_pool: Future[Any]) -> None:
        """A plain handler's thread runs on past its attempt (`ctx.cancelled` is set): the
        next calls go to a new pool, so that its slot has a thread again, and the old pool
        ends each of its threads as it returns. One that still runs `grace_s` later is
        overdue (`_overdue_on`)."""
        self._ran_on.append(in_pool)
        retired, self._threads = self._threads, self._pool()
        retired.shutdown(wait=False)  # its calls under way go on; its idle threads end
        count = self.threads_running_on
        log.info(
            "job %s: its handler's thread runs on past its attempt until it returns (a "
            "thread cannot be stopped; ctx.cancelled is set): %d run on now",
            job_id,
            count,
            extra={"action": "thread_runs_on", "job_id": job_id, "count": count},
        )
        # (a worker that runs no claim loop, as `offload.serverless` uses it, has no stop)
        if self.started.is_set() and not self._stop.is_set():
            if count > RUN_ON_LIMIT_PER_SLOT * self.concurrency:
                self._wedged(count, f"{count} handler threads run on past their attempts")
                return
            loop = asyncio.get_running_loop()
            loop.call_later(self.grace_s, self._overdue_on, job_id, in_pool)

    def _overdue_on(self, job_id: str, in_pool: Future[Any]) -> None:
        """A thread that ran on still runs `grace_s` after its attempt ended (its handler does
        not return when `ctx.cancelled` is set). Once more are overdue than there are
        slots, the worker stops, for a new process with fresh threads: a thread that never
        returns holds its memory and whatever it locked, and the process's exit waits for it."""
        if in_pool.done():
            return
        self._overdue = {call for call in self._overdue if not call.done()} | {in_pool}
        count = len(self._overdue)
        log.warning(
            "job %s: its handler's thread still runs %gs after its attempt ended (it does not "
            "return when ctx.cancelled is set): %d such thread%s, and the worker stops once "
            "more than %d are",
            job_id,
            self.grace_s,
            count,
            "" if count == 1 else "s",
            self.concurrency,
            extra={"action": "thread_overdue", "job_id": job_id, "count": count},
        )
        if count > self.concurrency and self.started.is_set() and not self._stop.is_set():
            self._wedged(
                count, f"{count} handler threads run on {self.grace_s:g}s past their attempts"
            )

    def _wedged(self, count: int, what: str) -> None:
        """Stop, for a new process with fresh threads: too many threads run on."""
        self.wedged = True
        log.error(
            "%s, more than the worker's slots allow (%d): it stops, to be started again with "
            "fresh threads",
            what,
            self.concurrency,
            extra={"action": "worker_wedged", "count": count},
        )
        self.request_stop()

    async def _payload(self, lease: Lease, spec: HandlerSpec) -> dict[str, Any] | Outcome:
        """The job's payload, read back from the blob store when it was checked in (a
        claim check): failed for good when that blob is gone, retried when the store fails."""
        claim = claim_check.claim_of(lease.envelope.payload)
        if claim is None:
            return lease.envelope.payload
        try:
            return await claim_check.check_out(self.app.blobs, claim)
        except claim_check.ClaimCheckError as exc:
            return Outcome(lease=lease, state=JobState.FAILED, error=_error(exc))
        except Exception as exc:
            return self._failed(lease, spec, exc)

    def _message(
        self, lease: Lease, spec: HandlerSpec, payload: dict[str, Any]
    ) -> Message | Outcome | MissingUpgrader:
        """The job's message at the version its handler takes, or how the attempt ends
        without running: given back unspent (stored at a newer version), or failed for good
        (an upgrader that failed, or a payload that does not fit the contract); or the
        missing step of its upgrade (`_unreadable` decides)."""
        env, current = lease.envelope, spec.message.version
        if env.version > current:
            return self._newer(lease, current)
        try:
            if env.version < current:
                steps = self.app.upgraders.get(env.kind, {})
                payload = upgrade(env.kind, env.version, payload, current=current, steps=steps)
            cls = spec.message.cls
            try:
                return cls.model_validate(payload)
            except ValidationError as exc:
                return self._mended(env.kind, cls, payload, exc, upgraded=env.version < current)
        except MissingUpgrader as exc:
            return exc
        except (ValidationError, UpgradeError) as exc:  # no retry would change it: permanent
            return self._failed_for_good(lease, exc)

    def _mended(
        self,
        kind: str,
        cls: type[Message],
        payload: dict[str, Any],
        exc: ValidationError,
        *,
        upgraded: bool,
    ) -> Message:
        """The message of a payload `cls` refused for top-level keys it does not read
        (`exc`, raised again where that is not all, or mending does not help): a field's
        own name where its alias is read (stored so by an older offload) is read under the
        alias; a field it lacks (a newer deploy's) is left out, said once, unless an
        upgrader wrote it (its mistake: the job fails)."""
        errors = exc.errors()
        if not all(
            e["type"] in ("extra_forbidden", "missing") and len(e["loc"]) == 1 for e in errors
        ):
            raise exc
        extra = frozenset(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
        renamed = _by_alias(cls, payload, extra)
        unknown = frozenset(k for k in extra if k not in cls.model_fields)
        if not extra or (unknown and upgraded):
            raise exc
        kept = {renamed.get(k, k): v for k, v in payload.items() if k not in extra or k in renamed}
        try:
            message = cls.model_validate(kept)
        except ValidationError:
            raise exc from None
        if unknown:
            self._say_ignored(kind, cls.__name__, unknown)
        return message

    def _say_ignored(self, kind: str, cls: str, unknown: frozenset[str]) -> None:
        """Warn, once per kind and fields in this worker, of fields a job carries that its
        message class lacks (run without them)."""
        if (kind, unknown) in self._ignored_said:
            return
        self._ignored_said.add((kind, unknown))
        fields = ", ".join(sorted(unknown))
        log.warning(
            "jobs of %s carry fields this worker's %s lacks (%s), written by newer code or "
            "before a field was removed: run without them (said once per worker)",
            kind,
            cls,
            fields,
            extra={"action": "fields_ignored", "kind": kind, "fields": sorted(unknown)},
        )

    async def _unreadable(self, lease: Lease, missing: MissingUpgrader) -> Outcome:
        """A job stored at a version this worker's upgraders no longer read: given back
        unspent while a live worker (a rolling deploy's older one) still runs that version,
        else failed for good (no retry would change it)."""
        env = lease.envelope
        why = f"{env.kind} version {env.version} waits for a worker that still reads it"
        try:
            live: dict[str, set[int]] | None = await self.app.live_versions()
        except BackendError:  # unknown now: asked again when it comes back, not failed
            live = None
        if live is None or env.version in live.get(env.kind, ()):
            return self._handed_on(lease, why, here=f" has no upgrader from {env.version}")
        return self._failed_for_good(lease, missing)

    def _failed_for_good(self, lease: Lease, exc: BaseException) -> Outcome:
        env = lease.envelope
        log.error(
            "job %s failed for good: %s",
            env.id,
            logged(exc),
            extra=_failure_fields(env, exc, JobState.FAILED),
        )
        return Outcome(lease=lease, state=JobState.FAILED, error=_error(exc))

    def _newer(self, lease: Lease, known: int) -> Outcome:
        """Give back a job stored at a version newer than this worker runs: queued again,
        its attempt refunded, claimable after `NEWER_VERSION_DELAY_S` (by a worker that
        knows the version, once one runs); its error says why, and `stats` counts it."""
        env = lease.envelope
        log.warning(
            "job %s is %s version %d, newer than the version %d this worker runs: given back "
            "unspent for a worker that knows it (claimable again in %gs)",
            env.id,
            env.kind,
            env.version,
            known,
            NEWER_VERSION_DELAY_S,
            extra={
                "action": "newer_version",
                "job_id": env.id,
                "kind": env.kind,
                "version": env.version,
                "known": known,
            },
        )
        why = f"{env.kind} version {env.version} waits for a worker that runs it"
        # (not this worker's name, host:pid:…: a client reads the message; the log has it)
        return self._given_back(lease, f"{why} (the worker that claimed it runs version {known})")

    def _handed_on(self, lease: Lease, why: str, *, here: str = "") -> Outcome:
        """Give back, as one too new for it, a job this worker's code cannot run: of a kind
        it has no handler for, or whose handler said so (`_ForAnotherWorker`: a Django task
        its code lacks). `why` says what the job waits for, `here` what this worker lacks."""
        env = lease.envelope
        log.warning(
            "job %s: %s: given back unspent (claimable again in %gs)",
            env.id,
            why,
            NEWER_VERSION_DELAY_S,
            extra={"action": "unhandled_kind", "job_id": env.id, "kind": env.kind},
        )
        return self._given_back(lease, f"{why} (the worker that claimed it{here})" if here else why)

    def _given_back(self, lease: Lease, why: str) -> Outcome:
        """Queued again, its attempt refunded, claimable after `NEWER_VERSION_DELAY_S`,
        with an error (`NEWER_VERSION`) that says `why` and that `stats` counts."""
        return Outcome(
            lease=lease,
            state=JobState.QUEUED,
            refund=True,
            error={"type": NEWER_VERSION, "message": why},
            run_at=self.app.clock.now() + NEWER_VERSION_DELAY_S,
        )

    def _failed(
        self, lease: Lease, spec: HandlerSpec, exc: BaseException, delay: float | None = None
    ) -> Outcome:
        env = lease.envelope
        outcome = retry_or_dead(lease, spec, _error(exc), self.app.clock.now(), delay)
        dead = outcome.state is JobState.DEAD
        # A job that ends dead is an error, whatever ended it (a retry asked for on its last
        # attempt included); a retry asked for is no fault (info), any other a warning.
        level = logging.INFO if isinstance(exc, Retry) else logging.WARNING
        log.log(
            logging.ERROR if dead else level,
            "job %s attempt %d failed%s: %s",
            env.id,
            env.attempt,
            f", its last of {outcome.max_attempts}: dead" if dead else "",
            logged(exc) or type(exc).__name__,  # (a MemoryError has no message)
            extra=_failure_fields(env, exc, outcome.state),
        )
        return outcome

    def _interrupted(self, job: _Job) -> Outcome | None:
        lease = job.lease
        if job.reason == _LOST:  # another worker owns the job now; report nothing
            return None
        if job.reason == _CANCEL:
            return Outcome(lease=lease, state=JobState.CANCELLED, error=_CANCELLED)
        return Outcome(lease=lease, state=JobState.QUEUED, refund=True, error=_RELEASED)

    def _interrupt(self, job: _Job, reason: str) -> None:
        """Cancel a job's run (if it has one), telling it why for `_interrupted`; a plain
        handler's call still waiting for a pool thread never starts."""
        in_thread = self._in_threads.get(job.lease.job_id)
        if in_thread is not None:
            in_thread[1].abandon()
        if job.context is not None:
            job.context._end_run()
        if job.task is not None and not job.task.done():
            job.reason = reason
            job.task.cancel()

    # -- side tasks -------------------------------------------------------------------------

    def _spawn(self, name: str) -> None:
        work = {
            "heartbeat": self._heartbeat,
            "rescuer": self._rescuer,
            "pruner": self._pruner,
            "settler": self._settler,
            "scheduler": self._scheduler,
        }
        self._side[name] = asyncio.create_task(work[name](), name=f"offload-{name}")

    def _extra_side_tasks(self) -> tuple[str, ...]:
        """The side tasks this worker runs beyond the four every worker does."""
        return ("scheduler",) if self.scheduler and self.app.schedules else ()

    async def _scheduler(self) -> None:
        """Enqueue the due ticks of the app's periodic schedules (see `worker.scheduler`)."""
        await Scheduler(self.app, since=self.started_at.timestamp(), failures=self.failures).run()

    async def _supervise(self) -> None:
        """Watch the side tasks for as long as the worker runs (its shutdown included).

        A side task that raises is restarted at once, its error logged: side tasks ride out
        backend errors themselves, so what escapes is a surprise taken as transient (an
        unwrapped driver error, say); their state lives on the worker, so a new one carries
        on. A second failure within `SIDE_RESTART_WINDOW_S`, or a side task cancelled or
        returning, stops the worker loudly: it stops claiming at once, releases its running
        jobs without the grace period (their leases may beat no more), and `run` raises.
        Either way it acts in the loop turn after the side task ended, well within one
        heartbeat interval, so no lease lapses under a running handler meanwhile.
        """
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.wait(self._side.values(), return_when=asyncio.FIRST_COMPLETED)
            for name, task in list(self._side.items()):
                if not task.done():
                    continue
                cause = None if task.cancelled() else task.exception()
                last = self._failed_at.get(name)
                if isinstance(cause, Exception) and (
                    last is None or loop.time() - last > SIDE_RESTART_WINDOW_S
                ):
                    self._failed_at[name] = loop.time()
                    log.error(
                        "worker side task %s failed; restarting it",
                        name,
                        exc_info=cause,
                        extra={"action": "side_task_restart", "task": name},
                    )
                    self._spawn(name)
                    self.restarts += 1
                    continue
                log.error(
                    "worker side task %s stopped; stopping the worker",
                    name,
                    exc_info=cause,
                    extra={"action": "side_task_stopped", "task": name},
                )
                self._failure = (name, cause)
                self._stop.set()
                return

    async def _settler(self) -> None:
        """Write finished attempts in batches: one transaction for many jobs."""
        backend = self.app._require_backend()
        loop = asyncio.get_running_loop()
        while True:
            await self._pending_ready.wait()
            self._pending_ready.clear()
            batch, self._pending = self._pending, []
            if batch:
                began = loop.time()
                try:
                    applied = await backend.settle(batch)
                except BackendError as exc:
                    # Keep the outcomes (their leases keep beating) and try again shortly.
                    self.failures.warn("settle", exc, action="settle_error")
                    flushing = self._flush_began
                    if exc.out_of_reach and flushing is not None and began >= flushing:
                        # A stopping worker's settle, tried for the whole retry deadline:
                        # it waits no longer (`_shutdown`).
                        self._settle_failed = exc
                        self._settle_failing.set()
                    self._pending = batch + self._pending
                    self._unknown.update(o.lease.token for o in batch)  # it may have applied
                    self._pending_ready.set()
                    await asyncio.sleep(0.5)
                    continue
                except BaseException:
                    # Not written: keep them for a restarted settler, or the last try.
                    self._pending = batch + self._pending
                    self._unknown.update(o.lease.token for o in batch)
                    self._pending_ready.set()
                    raise
                self.after_settle(batch, applied)
                self._not_recorded(batch, applied)
                for outcome in batch:
                    job = self._jobs.get(outcome.lease.job_id)
                    if job is not None and job.lease.token == outcome.lease.token:
                        del self._jobs[outcome.lease.job_id]  # not if held again, a new lease
                self.settled += len(batch)
            if not self._pending:
                self._flushed.set()

    def _not_recorded(self, outcomes: Sequence[Outcome], applied: Sequence[bool]) -> None:
        """Say which attempts' outcomes the backend refused (the job is no longer this
        worker's: a stalled worker's lease lapsed and the job was rescued, or it was deleted
        meanwhile), and take the runs' out of the registry's counts, which `_finished` made
        as they ended. An outcome sent again after a settle that failed (it may have been
        applied then, its answer lost: a refusal now says nothing) is left alone."""
        for outcome, written in zip(outcomes, applied, strict=False):
            token = outcome.lease.token
            if token in self._unknown:
                self._unknown.discard(token)
                continue
            if written or outcome.refund:
                continue
            job = self._jobs.get(outcome.lease.job_id)
            if job is not None and job.lease.token == token and job.counted:
                self._count(outcome, -1)
            env = outcome.lease.envelope
            log.warning(
                "job %s: the outcome of attempt %d (%s) was not recorded: the job is no "
                "longer this worker's (its lease lapsed and it was rescued, or it was deleted)",
                env.id,
                env.attempt,
                outcome.state,
                extra={"action": "outcome_not_recorded", "job_id": env.id, "kind": env.kind},
            )

    def after_settle(self, outcomes: Sequence[Outcome], applied: Settled) -> None:
        """Count and say what a settle of these outcomes did (its answer `applied`): the
        attempts that ended (metrics), and the jobs a cancel ended instead of running them
        again. The caller settled them itself (the queue-triggered function)."""
        self._meter(outcomes, applied)
        self._cancelled_instead(outcomes, applied)

    def _cancelled_instead(self, outcomes: Sequence[Outcome], applied: Settled) -> None:
        """Say which jobs the backend ended cancelled where their outcomes would have run
        them again: a cancel was asked for while they ran, and this worker had not heard."""
        for outcome in outcomes:
            if outcome.lease.job_id not in applied.cancelled:
                continue
            env = outcome.lease.envelope
            log.info(
                "job %s: a cancel asked for while attempt %d ran ends it cancelled (it was "
                "to be %s)",
                env.id,
                env.attempt,
                "given back" if outcome.refund else outcome.state,
                extra={"action": "cancelled_at_settle", "job_id": env.id, "kind": env.kind},
            )

    def _meter(self, outcomes: Sequence[Outcome], applied: Settled) -> None:
        """Count the attempts that ended (metrics), in the state each left its job in: each
        outcome written, but a job given back unspent (released, or left for a newer
        worker) that goes on waiting."""
        metrics = self.app.metrics
        if not metrics.enabled:
            return
        for outcome, written in zip(outcomes, applied, strict=False):
            env = outcome.lease.envelope
            # (one given back that a cancel ended ran, and ended: counted)
            if not written or (outcome.refund and env.id not in applied.cancelled):
                continue
            job = self._jobs.get(env.id)
            ran_s = (
                job.ran_s if job is not None and job.lease.token == outcome.lease.token else None
            )
            state = JobState.CANCELLED if env.id in applied.cancelled else outcome.state
            metrics.ended(env.kind, env.queue, state, ran_s)  # a StrEnum: a str

    def info(self) -> WorkerInfo:
        """This worker as the registry shows it, as of now (the backend stamps the time)."""
        from .. import __version__

        return WorkerInfo(
            id=self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=tuple(self.queues),
            concurrency=self.concurrency,
            version=__version__,
            kinds={kind: tuple(versions) for kind, versions in self.kinds.items()},
            started_at=self.started_at,
            heartbeat_at=self.started_at,  # not stored: the backend stamps its own
            running=tuple(
                job_id for job_id, job in self._jobs.items() if job.phase is _Phase.RUNNING
            ),
            held_ahead=len(self._line),
            processed=self.processed,
            failed=self.failed,
            schedules=self.schedules,
        )

    async def _record(self) -> None:
        """Record this worker in the registry (what it is, runs and is running), as of
        now; a failure is logged (the next heartbeat records again)."""
        try:
            await self.app._require_backend().record_worker(self.info())
        except BackendError as exc:
            self.failures.warn("recording this worker", exc, action="record_error")

    async def _last_settle(self) -> None:
        """Write the outcomes the stopped settler left: at once, unless a settle of the stop
        found the backend out of reach; bounded, as a network that drops packets answers
        no attempt.

        Raises:
            BackendError: they could not be written (`_unrecorded`).
        """
        if not self._pending:
            return
        if self._gave_up is not None:
            raise self._unrecorded(self._pending, self._gave_up)
        batch, self._pending = self._pending, []
        bound = self.app.settings.retry_deadline_s + FORGET_WITHIN_S
        try:
            async with asyncio.timeout(bound):
                applied = await self.app._require_backend().settle(batch)
        except TimeoutError:
            self._gave_up = BackendError(f"no answer in {bound:g}s")
            raise self._unrecorded(batch, self._gave_up) from None
        self.after_settle(batch, applied)

    def _unrecorded(self, outcomes: list[Outcome], cause: BackendError) -> BackendError:
        """The error a stopping worker ends with when the outcomes of its last attempts could
        not be written (the backend out of reach): those jobs stay as the backend has them,
        running under this worker, until their leases expire and another worker runs them
        again. Each is named in the log."""
        for outcome in outcomes:
            log.error(
                "job %s: its outcome (%s) could not be recorded: %s; it runs again once its "
                "lease expires",
                outcome.lease.job_id,
                outcome.state.value,
                cause,
                extra={"action": "outcome_lost", "job_id": outcome.lease.job_id},
            )
        n = len(outcomes)
        return BackendError(
            f"the outcomes of {n} {'job' if n == 1 else 'jobs'} could not be recorded "
            f"({cause}): {'it runs' if n == 1 else 'they run'} again once "
            f"{'its lease expires' if n == 1 else 'their leases expire'}"
        )

    async def _forget_record(self) -> None:
        """Delete this worker's registry entry (a clean stop); a failure is logged (the
        entry then shows as lost, and is forgotten in time)."""
        if self._gave_up is not None:  # out of reach: its entry shows lost in time
            return
        try:
            async with asyncio.timeout(FORGET_WITHIN_S):
                await self.app._require_backend().forget_worker(self.id)
        except (BackendError, TimeoutError) as exc:
            why = exc if isinstance(exc, BackendError) else f"no answer in {FORGET_WITHIN_S:g}s"
            log.warning("forgetting this worker failed: %s", why, extra={"action": "record_error"})

    async def _heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        next_record = loop.time() + self.record_every_s
        while True:
            slept = loop.time()
            await asyncio.sleep(self.heartbeat_s)
            stalled = stalled_s(loop.time() - slept, self.heartbeat_s)
            if stalled:  # the beat below re-checks every held lease at once
                log.warning(
                    "worker stalled for %.1fs; renewing its %d leases",
                    stalled,
                    len(self._jobs),
                    extra={"action": "stall", "worker": self.id, "stalled_s": stalled},
                )
            jobs = list(self._jobs.values())
            if jobs:  # the leases first: a slow registry write must not delay them
                await self._beat(jobs)
            if loop.time() >= next_record:  # the registry's view of this worker stays live
                next_record = loop.time() + self.record_every_s
                await self._record()
                await self._refresh_gate(self.app._require_backend())

    async def _refresh_gate(self, backend: Backend) -> None:
        """Read the stored limits again. When they gate this worker's claims from now on,
        a wait blocked with a plain claim behind it (`wait_and_claim`) is halted, so that
        the claim loop claims within the limits; a wake-up that comes before the halt
        lands still gets that one plain claim."""
        was = self.gate.gated
        await self.gate.refresh(backend)
        halt = getattr(backend, "halt_wait", None)
        if self.gate.gated and not was and halt is not None:
            try:
                await halt()
            except BackendError as exc:
                self.failures.warn("wait for work", exc, action="wait_error")

    async def _beat(self, jobs: Sequence[_Job]) -> bool:
        """Extend the leases of `jobs` and act on the answers (renewed, lost, cancel
        asked). Returns False when the backend failed (nothing was learnt)."""
        backend = self.app._require_backend()
        sent = self._renewal()
        try:
            answers = await backend.extend([job.lease for job in jobs], lease_for=self.lease_s)
        except BackendError as exc:
            self.failures.warn("heartbeat", exc, action="heartbeat_error")
            return False
        beaten = {job.lease.job_id: job for job in jobs}
        for answer in answers:
            job = beaten.get(answer.job_id)
            if job is not None and self._jobs.get(answer.job_id) is job:  # still held
                if answer.held and answer.renewed:  # (not renewed: its row was locked)
                    job.renewed = sent
                self._answered(job, answer)
        return True

    async def _holds(self, job: _Job) -> bool:
        """Whether a run of `job` may still act for it (`Context._fenced`: before a side
        step's `fn` and a file write): its lease surely lasts, by this worker's own clocks
        (`fresh`), or a renewal says it is held (the worker stalled past it: SIGSTOP, a long
        pause; the woken handler's step came before the heartbeat that would have told it).
        No once the lease was found lost (another worker may run the job now), or once its
        outcome, reported, runs it again (retrying, released: a thread that ran on past its
        attempt, and past the hold of its outcome). While its outcome is held for such a
        thread, the lease is still this worker's, and after a final outcome no other run
        comes: its cleanup may."""
        if job.lost:
            return False
        if self._jobs.get(job.lease.job_id) is not job or job.phase is _Phase.SETTLING:
            return not job.again
        if self._fresh(job):
            return True
        if not await self._beat([job]):
            return False  # (not known: the backend did not answer)
        return not job.lost

    def _answered(self, job: _Job, answer: Extension) -> None:
        """Act on a heartbeat's answer for one job: its lease was lost, or a cancel asked."""
        if job.phase is _Phase.AHEAD:
            if not answer.held:  # another worker may own it now: report nothing, never run it
                log.warning(
                    "dropped job %s held ahead: its lease lapsed",
                    answer.job_id,
                    extra={"action": "held_lease_lost", "job_id": answer.job_id},
                )
                self._let_go(job)
            elif answer.cancel_requested:
                self._line.remove(job)
                self._report(
                    job, Outcome(lease=job.lease, state=JobState.CANCELLED, error=_CANCELLED)
                )
        elif job.phase is _Phase.RUNNING:
            if not answer.held:
                log.warning(
                    "lost the lease of job %s",
                    answer.job_id,
                    extra={"action": "lease_lost", "job_id": answer.job_id},
                )
                self._let_go(job)
            elif answer.cancel_requested:
                self._interrupt(job, _CANCEL)
                self._cancel_held(job)
        # SETTLING: the outcome is on its way (a token already gone means it was written).

    async def _rescuer(self) -> None:
        """Sweep lapsed leases often."""
        every = min(5.0, max(0.2, self.lease_s / 2))
        while True:
            try:
                while await self.rescue_lapsed() >= RESCUE_BATCH:
                    pass  # a full batch: more may have lapsed
            except BackendError as exc:
                self.failures.warn("rescue", exc, action="rescue_error")
            await asyncio.sleep(every)

    async def _pruner(self) -> None:
        """Prune old finished jobs and sweep orphaned payloads now and then, beside the
        rescuer (a long prune, the first after a retention made shorter, holds up no
        rescue of lapsed leases)."""
        backend = self.app._require_backend()
        await asyncio.sleep(DEFAULT_PRUNE_EVERY_S * random.random())
        while True:
            try:
                retention = self.app.settings.retention_s
                # (OFFLOAD_RETENTION=inf: every job is kept)
                pruned = await backend.prune(retention) if math.isfinite(retention) else 0
                if pruned:
                    log.info("pruned %d finished jobs", pruned, extra={"action": "prune"})
            except BackendError as exc:
                self.failures.warn("prune", exc, action="prune_error")
            await self._sweep_payloads()  # (a prune that failed stops no sweep)
            await asyncio.sleep(DEFAULT_PRUNE_EVERY_S)

    async def _sweep_payloads(self) -> None:
        """Delete checked-in payloads whose jobs are gone; a failing blob store is logged."""
        try:
            swept = await claim_check.sweep(self.app)
        except Exception as exc:
            self.failures.warn("payload sweep", exc, action="claim_sweep_error")
            return
        if swept:
            log.info("deleted %d payload blobs", swept, extra={"action": "claim_sweep"})

    async def rescue_lapsed(self) -> int:
        """One batch of lease rescue: read the lapsed leases, decide each job's fate with its
        handler's budget and backoff (`rescue.decide`), and apply the decisions, with the
        notifications of those that end, in one fenced call. Returns how many were read."""
        backend = self.app._require_backend()
        lapsed = await backend.expired(limit=RESCUE_BATCH)
        if not lapsed:
            return 0
        decisions = [
            self._with_follow_ups(outcome)
            for outcome in decide_all(lapsed, self._spec_of, self.app.clock.now())
        ]
        applied = await backend.rescue(decisions)
        self._meter(decisions, applied)
        rescued = sum(applied)
        if rescued:
            log.warning(
                "rescued %d %s whose lease lapsed",
                rescued,
                "job" if rescued == 1 else "jobs",
                extra={"action": "rescue", "count": rescued},
            )
        for decision, written in zip(decisions, applied, strict=False):
            if written:  # each job, the worker that lost it, and what became of it
                lease = decision.lease
                state = JobState.CANCELLED if lease.job_id in applied.cancelled else decision.state
                ended = state in (JobState.DEAD, JobState.FAILED)
                log.log(  # (a job that ends so is an error, as a handler's failure is)
                    logging.ERROR if ended else logging.INFO,
                    "job %s (%s, attempt %d): its lease lapsed on worker %s; now %s",
                    lease.job_id,
                    lease.envelope.kind,
                    lease.envelope.attempt,
                    lease.worker,
                    state,
                    extra={
                        "action": "rescued",
                        "job_id": lease.job_id,
                        "kind": lease.envelope.kind,
                        "lost_worker": lease.worker,
                        "state": str(state),
                    },
                )
        return len(lapsed)

    def _spec_of(self, kind: str) -> HandlerSpec | None:
        return self.app.handlers.get(kind) or self.builtin.get(kind)

    def _handler_budget(self, kind: str) -> int | None:
        """The retry budget `kind`'s handler sets over its message's, or None."""
        spec = self._spec_of(kind)
        return None if spec is None else spec.max_attempts

    # -- shutdown ---------------------------------------------------------------------------

    def _running_in_threads(self) -> dict[str, asyncio.Future[Any]]:
        """The jobs whose plain handler runs in a thread now, by id, with its call; a call
        still waiting for a thread of the pool is abandoned (it will not start), so that
        its job is released as any other."""
        return {
            job_id: call
            for job_id, (call, run) in list(self._in_threads.items())
            if job_id in self._jobs and not call.done() and not run.abandon()
        }

    async def _threads_return(
        self, calls: dict[str, asyncio.Future[Any]], supervisor: asyncio.Task[None]
    ) -> set[str]:
        """Past the grace period, wait for the plain handlers still running in threads
        (`calls`); the ids of the jobs whose handlers returned.

        A thread cannot be stopped: were its job released, another worker would run it while
        the thread runs on (and the thread's outcome would be refused). Their jobs keep their
        leases, `ctx.cancelled` tells the handlers to stop, and their outcomes are recorded
        as they return. A process killed meanwhile leaves the leases to lapse: the jobs are
        rescued and run again. Only a side task stopping for good (the leases beat no more)
        ends the wait, and a second stop (`request_stop(now=True)`): `_shutdown` says then
        what becomes of what still runs.
        """
        if not calls:  # (the caller passes none once the supervisor stopped)
            return set()
        for job_id in calls:
            context = self._jobs[job_id].context
            if context is not None:
                context._end_run()
                # A call its thread waits on (a `ctx.once` step's long await) is cancelled:
                # the thread then sees the worker gone, and returns.
                self._handoffs.cut(context, stopping=True)
        log.warning(
            "%d job%s run%s on in threads past the grace period (a thread cannot be "
            "stopped): waiting for their handlers to return (ctx.cancelled is set)",
            len(calls),
            "" if len(calls) == 1 else "s",
            "s" if len(calls) == 1 else "",
            extra={"action": "drain", "count": len(calls)},
        )
        running = set(calls.values())
        now = asyncio.ensure_future(self._stop_now.wait())
        try:
            while running and not (supervisor.done() or now.done()):
                _, running = await asyncio.wait(
                    {*running, supervisor, now}, return_when=asyncio.FIRST_COMPLETED
                )
                running -= {supervisor, now}
        finally:
            now.cancel()
        return {job_id for job_id, call in calls.items() if call.done()}

    async def _cancelled_runs_end(self) -> None:
        """Wait for the runs a stop cancelled to end, at their next step (after any cleanup
        of theirs). One whose handler does not let its cancellation through (it catches
        `CancelledError` and goes on) is cancelled once more `CANCELLED_RUNS_WAIT_S` on,
        or `CANCELLED_RUNS_FLOOR_S` after a second stop, and left running if it goes on
        `CANCELLED_RUNS_FLOOR_S` more: its job keeps its lease, which lapses as the
        worker's heartbeat ends, and the rescuer runs it again; as a thread that runs on,
        it ends with the process (`tasks_left`)."""
        if self._idle.is_set():
            return
        if not self._stop_now.is_set():
            await self._until_idle(CANCELLED_RUNS_WAIT_S, stop_now=True)
        if self._stop_now.is_set():  # (short, but long enough for cleanups to end)
            await self._until_idle(CANCELLED_RUNS_FLOOR_S)
        for job in self._running_on():
            job.task.cancel()  # type: ignore[union-attr]  # (a handler may end at two cancels)
        await self._until_idle(CANCELLED_RUNS_FLOOR_S)
        left = self._running_on()
        if not left:
            return
        for job in left:
            job.reason = _LOST  # should it end after all: its lease lapses still
        self.tasks_left = len(left)
        log.error(
            "leaving %d %s whose handler ignored its cancellation (it catches "
            "CancelledError and goes on: let it through, after any cleanup), not released "
            "after all: %s, and the rescuer runs %s again (%s)",
            len(left),
            "job" if len(left) == 1 else "jobs",
            "its lease lapses" if len(left) == 1 else "their leases lapse",
            "it" if len(left) == 1 else "them",
            ", ".join(job.lease.job_id for job in left),
            extra={"action": "cancel_ignored", "count": len(left)},
        )

    def _running_on(self) -> list[_Job]:
        """The jobs whose run's task has not ended."""
        return [job for job in self._jobs.values() if job.task and not job.task.done()]

    async def _until_idle(
        self, within_s: float, *also: asyncio.Future[Any], stop_now: bool = False
    ) -> None:
        """Wait until no run goes on, `within_s` at most, or until one of `also` is done
        (or, with `stop_now`, a second stop is asked for)."""
        if self._idle.is_set():
            return
        waits = {asyncio.create_task(self._idle.wait())}
        if stop_now:
            waits.add(asyncio.create_task(self._stop_now.wait()))
        try:
            await asyncio.wait(
                {*waits, *also}, timeout=within_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for wait in waits:
                wait.cancel()

    def _threads_left(self, left: set[str], supervisor: asyncio.Task[None]) -> None:
        """The jobs whose plain handler still runs once `_threads_return` stopped waiting:
        a side task stopped (released: their leases beat no more), or a second stop (they
        keep their leases, left to lapse: the process's end ends their threads, and the
        rescuer runs the jobs again)."""
        lapse = bool(left) and self._stop_now.is_set() and not supervisor.done()
        if lapse:
            log.warning(
                "leaving %d %s whose plain handler still runs in a thread: %s, and the "
                "rescuer runs %s again",
                len(left),
                "job" if len(left) == 1 else "jobs",
                "its lease lapses" if len(left) == 1 else "their leases lapse",
                "it" if len(left) == 1 else "them",
                extra={"action": "drain", "count": len(left)},
            )
        for job_id in left:
            if (still := self._jobs.get(job_id)) is not None:
                self._interrupt(still, _LOST if lapse else _SHUTDOWN)

    async def _shutdown(self, supervisor: asyncio.Task[None]) -> None:
        """Finish running jobs within the grace period, release the rest, flush outcomes.

        A side task stopping for good (the supervisor returns) ends the grace period."""
        self._flush_began = asyncio.get_running_loop().time()
        self._give_back(len(self._line))  # never started: give them back at once
        if self._give_back_due is not None:
            self._give_back_due.cancel()
        if self._recheck is not None:
            self._recheck.cancel()
        if self._busy and not supervisor.done():
            log.info(
                "waiting up to %.0fs for %d running %s",
                self.grace_s,
                self._busy,
                "job" if self._busy == 1 else "jobs",
                extra={"action": "drain"},
            )
            await self._until_idle(self.grace_s, supervisor, stop_now=True)
        elif self._busy:
            log.warning(
                "releasing %d running %s at once: a side task stopped",
                self._busy,
                "job" if self._busy == 1 else "jobs",
                extra={"action": "drain"},
            )
        threads = {} if supervisor.done() else self._running_in_threads()
        stopped = [job for job in self._jobs.values() if job.lease.job_id not in threads]
        running = sum(1 for job in stopped if job.task is not None and not job.task.done())
        if running and not supervisor.done():  # (a side task's stop said so above)
            log.warning(
                "releasing %d running %s (the grace period is over): queued again, the "
                "attempt given back",
                running,
                "job" if running == 1 else "jobs",
                extra={"action": "drain", "count": running},
            )
        for job in stopped:  # release what can be stopped, at once
            self._interrupt(job, _SHUTDOWN)
        returned = await self._threads_return(threads, supervisor)
        self._threads_left(threads.keys() - returned, supervisor)
        await self._cancelled_runs_end()
        self._report_held()
        supervisor.cancel()
        await asyncio.gather(supervisor, return_exceptions=True)
        settler = self._side["settler"]
        if not (self._flushed.is_set() or settler.done()):
            # Until written, or until a settle failed for good: the backend did not answer
            # within its retry deadline, and waiting on would outlast a pod's grace.
            flushed = asyncio.create_task(self._flushed.wait())
            failing = asyncio.create_task(self._settle_failing.wait())
            await asyncio.wait(
                {flushed, failing, settler},
                timeout=FLUSH_GUARD_S,
                return_when=asyncio.FIRST_COMPLETED,
            )
            flushed.cancel()
            failing.cancel()
            if self._settle_failing.is_set() and self._pending:
                self._gave_up = self._settle_failed
        for task in self._side.values():
            task.cancel()
        await asyncio.gather(*self._side.values(), return_exceptions=True)
        try:
            await self._last_settle()
        finally:
            self._threads.shutdown(wait=False, cancel_futures=True)
            await self.dispatcher.aclose()
