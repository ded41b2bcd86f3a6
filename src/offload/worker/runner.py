"""The worker: a claim loop plus named side tasks (heartbeat, rescuer, settler)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import random
import secrets
import socket
import traceback
from collections import deque
from collections.abc import Awaitable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from ..app import App, HandlerSpec
from ..brokers import Backend
from ..contract import JobState, Lease, Outcome
from ..errors import BackendError, Cancel, ConfigurationError, Retry
from ..notify.base import NOTIFY_QUEUE, Notifier
from ..notify.dispatch import Dispatcher
from ..notify.plan import follow_ups, follow_ups_of_row
from .context import Context
from .prefetch import DEFAULT_PREFETCH, Prefetch
from .retry import should_retry

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

_SHUTDOWN, _CANCEL, _LOST = "shutdown", "cancel", "lost"
_CANCELLED = {"type": "Cancelled", "message": "cancelled while running"}
_RELEASED = {"type": "Released", "message": "worker shut down; job released"}


def _error(exc: BaseException, type_name: str | None = None) -> dict[str, Any]:
    return {
        "type": type_name or type(exc).__name__,
        "message": str(exc)[:2000],
        "traceback": "".join(traceback.format_exception(exc))[-8000:],
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    orjson.dumps(value)  # raises TypeError for values a status record cannot carry
    return value


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
    ) -> None:
        if concurrency < 1:
            raise ConfigurationError("concurrency must be at least 1")
        if prefetch < 0:
            raise ConfigurationError("prefetch must be 0 or more")
        self.app = app
        handled = sorted({h.message.queue for h in app.handlers.values()})
        if not (queues or handled):
            raise ConfigurationError(f"app {app.name!r} has no handlers: import its worker module")
        self.queues = list(queues) if queues else [*handled, NOTIFY_QUEUE]
        self.dispatcher = Dispatcher(app, **(notifiers or {}))
        #: Handlers of the built-in delivery kinds (the app's own are looked up as jobs come).
        self.builtin = self.dispatcher.handlers()
        self.concurrency = concurrency
        self.lease_s = lease_s or app.settings.lease_s
        self.grace_s = grace_s
        self.prefetch = prefetch
        self.idle_poll_s = idle_poll_s
        self.heartbeat_s = min(DEFAULT_HEARTBEAT_S, self.lease_s / 3)
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"
        self._stop = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._held: dict[str, Lease] = {}
        #: Claimed ahead, waiting for a free slot (their leases beat like running ones).
        self._ahead: deque[Lease] = deque()
        #: Sizes the claims from the run times of recent jobs.
        self._prefetch = Prefetch(prefetch, concurrency)
        self._contexts: dict[str, Context] = {}
        self._reasons: dict[str, str] = {}
        self._pending: list[Outcome] = []
        self._pending_ready = asyncio.Event()
        self._settling = False
        self._slot_free = asyncio.Event()
        self._threads = ThreadPoolExecutor(concurrency, thread_name_prefix="offload-handler")
        #: Set once claiming starts; set once `run` has returned (the app released).
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()
        #: Count of settled outcomes.
        self.settled = 0

    def request_stop(self) -> None:
        """Stop claiming; running jobs get `grace_s` to finish (thread-safe via the loop)."""
        self._stop.set()

    # -- main loop --------------------------------------------------------------------------

    async def run(self) -> None:
        await self.app.open()
        backend = self.app.backend
        side = {
            name: asyncio.create_task(coro, name=f"offload-{name}")
            for name, coro in (
                ("heartbeat", self._heartbeat()),
                ("rescuer", self._rescuer()),
                ("settler", self._settler()),
            )
        }
        log.info(
            "worker started",
            extra={"action": "worker_start", "worker": self.id, "queues": self.queues},
        )
        try:
            await self._claim_loop(backend, side)
        finally:
            try:
                await self._shutdown(side)
            finally:
                try:
                    await self.app.close()
                finally:
                    self.stopped.set()
        log.info("worker stopped", extra={"action": "worker_stop", "worker": self.id})

    async def _claim_loop(self, backend: Backend, side: dict[str, asyncio.Task[None]]) -> None:
        self.started.set()
        stop_wait = asyncio.create_task(self._stop.wait())
        try:
            while not self._stop.is_set():
                for name, task in side.items():
                    if task.done():  # a side task died: stop loudly rather than run unsafely
                        raise RuntimeError(f"worker side task {name} stopped") from (
                            task.exception() if not task.cancelled() else None
                        )
                limit = self._claim_size()
                if limit <= 0:
                    self._slot_free.clear()
                    await self._race(self._slot_free.wait(), stop_wait)
                    continue
                try:
                    leases = await backend.claim(
                        self.queues, worker_id=self.id, lease_for=self.lease_s, limit=limit
                    )
                except BackendError as exc:
                    log.warning("claim failed: %s", exc, extra={"action": "claim_error"})
                    await self._race(asyncio.sleep(1.0), stop_wait)
                    continue
                self._hold(leases)
                self._fill()
                if not leases:
                    await self._race(backend.wait(self.queues, self.idle_poll_s), stop_wait)
        finally:
            stop_wait.cancel()

    @staticmethod
    async def _race(coro: Awaitable[Any], stop_wait: asyncio.Task[Any]) -> None:
        task = asyncio.ensure_future(coro)
        try:
            await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    def _hold(self, leases: Sequence[Lease]) -> None:
        """Line up claimed jobs. A job already held under an older lease (that lease lapsed
        and this worker claimed the job again) keeps only the new one."""
        again = {lease.job_id for lease in leases if lease.job_id in self._held}
        if again:
            self._ahead = deque(le for le in self._ahead if le.job_id not in again)
        for lease in leases:
            self._held[lease.job_id] = lease
        self._ahead.extend(leases)

    def _claim_size(self) -> int:
        """How many jobs to claim now: free slots plus the prefetch, or 0 to wait."""
        return self._prefetch.claim_size(self.concurrency - len(self._tasks), len(self._ahead))

    def _fill(self) -> None:
        """Start jobs held ahead while slots are free (never once stopping)."""
        while self._ahead and len(self._tasks) < self.concurrency and not self._stop.is_set():
            self._start(self._ahead.popleft())

    def _start(self, lease: Lease) -> None:
        loop = asyncio.get_running_loop()
        ctx = Context(lease, self.app.backend, self.app.blobs, loop)
        self._contexts[lease.job_id] = ctx
        task = asyncio.create_task(self._execute(lease, ctx), name=f"job-{lease.job_id}")
        self._tasks[lease.job_id] = task
        task.add_done_callback(functools.partial(self._finished, lease))

    def _finished(self, lease: Lease, task: asyncio.Task[None]) -> None:
        job_id = lease.job_id
        self._tasks.pop(job_id, None)
        self._contexts.pop(job_id, None)
        if task.cancelled():
            # Cancelled before its first step, so `_execute` never saw the cancellation:
            # report what it would have (released, cancelled, or nothing for a lost lease).
            outcome = self._interrupted(lease)
            if outcome is not None:
                self._report(lease, outcome)
        self._release_excess()
        self._fill()
        self._slot_free.set()

    def _release_excess(self) -> None:
        """Give back jobs held ahead beyond what the prefetch allows now (jobs turned out
        long): they go back to the queue unspent, for idle workers to take."""
        excess = self._prefetch.excess(len(self._ahead))
        if excess:
            self._give_back(len(self._ahead) - excess)

    def _give_back(self, keep: int) -> None:
        """Release the jobs held ahead beyond the first `keep`, attempt unspent."""
        while len(self._ahead) > keep:
            lease = self._ahead.pop()  # the last in line
            self._report(
                lease, Outcome(lease=lease, state=JobState.QUEUED, refund=True, error=_RELEASED)
            )

    def _drop_ahead(self, job_id: str, held: bool) -> None:
        """Take a job held ahead out of the line: its lease lapsed, or it was cancelled."""
        lease = next((le for le in self._ahead if le.job_id == job_id), None)
        if lease is None:
            return
        self._ahead.remove(lease)
        if not held:  # another worker may own it now: report nothing
            self._held.pop(job_id, None)
            return
        self._report(lease, Outcome(lease=lease, state=JobState.CANCELLED, error=_CANCELLED))

    # -- one job ----------------------------------------------------------------------------

    async def _execute(self, lease: Lease, ctx: Context) -> None:
        kind = lease.envelope.kind
        spec = self.app.handlers.get(kind) or self.builtin.get(kind)
        outcome: Outcome | None
        try:
            outcome = await self._attempt(lease, ctx, spec)
        except asyncio.CancelledError:
            outcome = self._interrupted(lease)
        if outcome is not None:
            self._report(lease, outcome)

    def _report(self, lease: Lease, outcome: Outcome) -> None:
        """Hand an outcome to the settler, with the notifications a final state sends."""
        if outcome.state.final:
            # Notifications of the final state commit with it, and only if it applies.
            env = lease.envelope
            notes = follow_ups(
                self.app,
                job_id=env.id,
                kind=env.kind,
                options=env.options,
                state=outcome.state,
                marker=lease.token,
            )
            if notes:
                outcome = dataclasses.replace(outcome, follow_ups=notes)
        self._pending.append(outcome)
        self._pending_ready.set()

    async def _attempt(self, lease: Lease, ctx: Context, spec: HandlerSpec | None) -> Outcome:
        env = lease.envelope
        if spec is None:
            return self._failed(
                lease, None, ConfigurationError(f"this worker has no handler for kind {env.kind!r}")
            )
        try:
            message = spec.message.cls.model_validate(env.payload)
        except ValidationError as exc:  # the payload no longer fits the contract: permanent
            return Outcome(lease=lease, state=JobState.FAILED, error=_error(exc))
        timeout = spec.timeout if spec.timeout is not None else env.timeout
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            if spec.is_async:
                call = spec.fn(message, ctx)
            else:
                call = asyncio.get_running_loop().run_in_executor(
                    self._threads, spec.fn, message, ctx
                )
            result = await asyncio.wait_for(call, timeout) if timeout else await call
            self._prefetch.ran(loop.time() - began)
            return Outcome(
                lease=lease,
                state=JobState.SUCCEEDED,
                result=_jsonable(result),
                max_attempts=spec.max_attempts,
            )
        except Retry as signal:
            return self._failed(lease, spec, signal, delay=signal.delay)
        except Cancel as signal:
            return Outcome(
                lease=lease,
                state=JobState.CANCELLED,
                error={"type": "Cancel", "message": signal.reason},
            )
        except TimeoutError as exc:
            self._prefetch.ran(loop.time() - began)
            ctx.cancelled.set()  # a threaded handler cannot be killed; tell it to stop
            if timeout and not str(exc):
                exc = TimeoutError(f"the attempt ran over its {timeout:g}s timeout")
            return self._failed(lease, spec, exc)
        except Exception as exc:
            self._prefetch.ran(loop.time() - began)
            return self._failed(lease, spec, exc)

    def _failed(
        self, lease: Lease, spec: HandlerSpec | None, exc: BaseException, delay: float | None = None
    ) -> Outcome:
        env = lease.envelope
        budget = (spec.max_attempts if spec and spec.max_attempts else None) or env.max_attempts
        error = _error(exc)
        log.warning(
            "job %s attempt %d failed: %s",
            env.id,
            env.attempt,
            exc,
            extra={"action": "job_failed", "job_id": env.id, "kind": env.kind},
        )
        if not should_retry(env.attempt, budget):
            return Outcome(lease=lease, state=JobState.DEAD, error=error, max_attempts=budget)
        if delay is None:
            delay = spec.backoff.delay(env.attempt) if spec else 5.0
        return Outcome(
            lease=lease,
            state=JobState.RETRYING,
            error=error,
            run_at=self.app.clock.now() + delay,
            max_attempts=budget,
        )

    def _interrupted(self, lease: Lease) -> Outcome | None:
        reason = self._reasons.pop(lease.job_id, _SHUTDOWN)
        if reason == _LOST:  # another worker owns the job now; report nothing
            return None
        if reason == _CANCEL:
            return Outcome(lease=lease, state=JobState.CANCELLED, error=_CANCELLED)
        return Outcome(lease=lease, state=JobState.QUEUED, refund=True, error=_RELEASED)

    def _interrupt(self, job_id: str, reason: str) -> None:
        task = self._tasks.get(job_id)
        ctx = self._contexts.get(job_id)
        if ctx is not None:
            ctx.cancelled.set()
        if task is not None and not task.done():
            self._reasons[job_id] = reason
            task.cancel()

    # -- side tasks -------------------------------------------------------------------------

    async def _settler(self) -> None:
        """Write finished attempts in batches: one transaction for many jobs."""
        backend = self.app.backend
        while True:
            await self._pending_ready.wait()
            self._pending_ready.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            self._settling = True
            try:
                await backend.settle(batch)
            except BackendError as exc:
                # Keep the outcomes (their leases keep beating) and try again shortly.
                log.warning("settle failed: %s", exc, extra={"action": "settle_error"})
                self._pending = batch + self._pending
                self._pending_ready.set()
                await asyncio.sleep(0.5)
                continue
            finally:
                self._settling = False
            for outcome in batch:
                self._held.pop(outcome.lease.job_id, None)
            self.settled += len(batch)

    async def _heartbeat(self) -> None:
        backend = self.app.backend
        while True:
            await asyncio.sleep(self.heartbeat_s)
            leases = list(self._held.values())
            if not leases:
                continue
            try:
                answers = await backend.extend(leases, lease_for=self.lease_s)
            except BackendError as exc:
                log.warning("heartbeat failed: %s", exc, extra={"action": "heartbeat_error"})
                continue
            ahead = {lease.job_id for lease in self._ahead}
            for answer in answers:
                if answer.job_id in ahead:
                    if not answer.held or answer.cancel_requested:
                        self._drop_ahead(answer.job_id, answer.held)
                    continue
                if not answer.held and answer.job_id not in self._tasks:
                    # Its handler finished and the settler wrote the outcome meanwhile: the
                    # token is gone because the job is done, not because the lease lapsed.
                    continue
                if not answer.held:
                    log.warning(
                        "lost the lease of job %s",
                        answer.job_id,
                        extra={"action": "lease_lost", "job_id": answer.job_id},
                    )
                    self._held.pop(answer.job_id, None)
                    self._interrupt(answer.job_id, _LOST)
                elif answer.cancel_requested:
                    self._interrupt(answer.job_id, _CANCEL)

    async def _rescuer(self) -> None:
        """Sweep lapsed leases often, and prune old finished jobs now and then."""
        backend = self.app.backend
        every = min(5.0, max(0.2, self.lease_s / 2))
        loop = asyncio.get_running_loop()
        next_prune = loop.time() + DEFAULT_PRUNE_EVERY_S * random.random()
        while True:
            try:
                rescued = await backend.rescue_expired()
                if rescued:
                    log.warning(
                        "rescued %d jobs whose lease lapsed",
                        len(rescued),
                        extra={"action": "rescue", "count": len(rescued)},
                    )
                    await self._notify_rescued(rescued)
                if loop.time() >= next_prune:
                    next_prune = loop.time() + DEFAULT_PRUNE_EVERY_S
                    pruned = await backend.prune(self.app.settings.retention_s)
                    if pruned:
                        log.info("pruned %d finished jobs", pruned, extra={"action": "prune"})
            except BackendError as exc:
                log.warning("rescue failed: %s", exc, extra={"action": "rescue_error"})
            await asyncio.sleep(every)

    async def _notify_rescued(self, rows: Sequence[dict[str, Any]]) -> None:
        """Enqueue the notifications of jobs the sweep ended (dead, or cancelled).

        Not in the sweep's transaction (backends sweep in one statement or script): a crash
        between the two loses these notifications. The marker is the lapsed attempt's start,
        so a repeat collapses on the idempotency key.
        """
        notes = [
            envelope
            for row in rows
            if JobState(row["state"]).final
            for envelope in follow_ups_of_row(
                self.app, row, marker=f"rescue:{row.get('started_at')!r}"
            )
        ]
        if notes:
            await self.app.backend.enqueue(notes)

    # -- shutdown ---------------------------------------------------------------------------

    async def _shutdown(self, side: dict[str, asyncio.Task[None]]) -> None:
        """Finish running jobs within the grace period, release the rest, flush outcomes."""
        self._give_back(0)  # never started: give them back at once
        running = list(self._tasks.values())
        if running:
            log.info(
                "waiting up to %.0fs for %d running jobs",
                self.grace_s,
                len(running),
                extra={"action": "drain"},
            )
            await asyncio.wait(running, timeout=self.grace_s)
        for job_id in list(self._tasks):
            self._interrupt(job_id, _SHUTDOWN)
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30.0
        while (self._pending or self._settling) and not side["settler"].done():
            if loop.time() > deadline:
                break
            await asyncio.sleep(0.02)
        for task in side.values():
            task.cancel()
        await asyncio.gather(*side.values(), return_exceptions=True)
        try:
            if self._pending:  # settler gone (or failing): one last direct try
                batch, self._pending = self._pending, []
                await self.app.backend.settle(batch)
        finally:
            self._threads.shutdown(wait=False, cancel_futures=True)
            await self.dispatcher.aclose()
