"""The worker as a queue-triggered function: Lambda hands it SQS batches of job messages.

Each message names one job whose row lives in PostgreSQL. The consumer claims that row
(a fenced lease, one attempt spent), runs the handler as a worker process does
(`Worker.run_leased`: timeout, budget, backoff, dead-lettering, notifications), beats the
lease and the message's visibility while it runs, and settles the outcome. A retry is
not a visibility change: the settle makes the job ready again with its later `run_at`,
which commits an outbox row, and the broker sends a new message delayed until then (up to
SQS's 15 minutes; a job due later is sent again on arrival). So SQS's receive count and
redrive policy count only lost deliveries (a crashed or timed-out function), never
offload's own retries, and offload's budget alone decides when a job is dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Coroutine, Mapping
from typing import Any, cast

import orjson

from ...app import App
from ...brokers.sqs import SQSBackend
from ...contract import JobState, Lease, Outcome
from ...errors import BackendError, ConfigurationError
from ...worker.runner import CANCELLED_RUNS_WAIT_S, DEFAULT_HEARTBEAT_S, Worker
from ._runtime import (
    LambdaContext,
    before_threads_join,
    close_at_exit,
    remaining_s,
    thread_loop,
)

log = logging.getLogger("offload.serverless")

#: Seconds of an invocation kept back: a job still running this close to the function's
#: timeout is released unspent (sent again at once) and its outcome written in time.
DEFAULT_MARGIN_S = 3.0
#: Seconds before the invocation's end by which the handler answers, whatever still waits
#: on the backend then (a claim, a settle, the relay): those messages come back (Lambda
#: must get the batch's failures before it ends the function, or every message comes back).
ANSWER_MARGIN_S = 0.5
#: Seconds before a job due now that could not be claimed (its queue paused, or its row
#: held by another consumer this instant) is looked at again: its message is sent again.
RECHECK_S = 30.0
#: How long `close` waits for the cancelled calls of handlers' threads to end: well within
#: the bound of a close at the interpreter's exit (`_runtime.EXIT_WAIT_S`), so that the
#: app is closed after them.
CLOSE_HANDOFFS_S = 2.0


class SQSConsumer:
    """Runs the jobs of SQS event batches; one per function (it keeps the app open).

    Args:
        app: the App with its handlers imported, whose OFFLOAD_URL is `sqs://…`.
        margin_s: seconds before the invocation's end at which running jobs are released.
    """

    def __init__(self, app: App, *, margin_s: float = DEFAULT_MARGIN_S) -> None:
        self.app = app
        self.margin_s = margin_s
        self.lease_s = app.settings.lease_s
        self.heartbeat_s = min(DEFAULT_HEARTBEAT_S, self.lease_s / 3)
        self.loop = thread_loop()
        self._worker: Worker | None = None

    def __call__(self, event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
        """The Lambda handler: `{"batchItemFailures": [{"itemIdentifier": id}, …]}` names
        the messages to deliver again (Lambda deletes the others)."""
        return self.loop.run_until_complete(self.handle(event, context))

    async def open(self) -> Worker:
        """Open the app (once: a warm function keeps it) and the worker that runs its jobs."""
        if self._worker is None:
            await self.app.open()
            if not isinstance(self.app._require_backend(), SQSBackend):
                await self.app.close()
                raise ConfigurationError("sqs_handler needs OFFLOAD_URL=sqs://…")
            try:
                self._worker = Worker(self.app)
            except BaseException:
                await self.app.close()
                raise
            close_at_exit(self.loop, self.close)
            # (a thread that runs on, waiting on this loop, is told the worker has stopped)
            before_threads_join(self._worker._handoffs.close)
        return self._worker

    async def close(self) -> None:
        """Close the app (a function never needs to; tests do)."""
        if self._worker is not None:
            worker, self._worker = self._worker, None
            worker._threads.shutdown(wait=False, cancel_futures=True)
            try:  # (the cancelled calls' cleanup, before the app's: within the exit's bound)
                await worker._handoffs.aclose(CLOSE_HANDOFFS_S)
            finally:
                try:
                    await worker.dispatcher.aclose()
                finally:
                    await self.app.close()

    def _broker(self) -> SQSBackend:
        return cast(SQSBackend, self.app._require_backend())

    async def handle(
        self, event: Mapping[str, Any], context: LambdaContext | None
    ) -> dict[str, Any]:
        """Run every record of the batch at once; report the ones to deliver again."""
        left = remaining_s(context)
        loop = asyncio.get_running_loop()
        deadline = None if left is None else loop.time() + left - self.margin_s
        answer_by = None if left is None else loop.time() + left - ANSWER_MARGIN_S
        records = list(event.get("Records", []))
        try:
            async with asyncio.timeout_at(answer_by):
                worker = await self.open()  # (a cold start: PostgreSQL, and the queue's URL)
        except (BackendError, TimeoutError) as exc:
            log.warning(
                "not open before the invocation's end (%s): every message comes back",
                exc or "no answer",
                extra={"action": "sqs_record_error"},
            )
            return {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in records]}
        with contextlib.suppress(BackendError, TimeoutError):
            async with asyncio.timeout_at(answer_by):
                await worker.rescue_lapsed()  # jobs of functions that died: ready again
        done = await asyncio.gather(
            *(self._answered(self._record(worker, r, deadline), answer_by) for r in records)
        )
        with contextlib.suppress(BackendError, TimeoutError):
            async with asyncio.timeout_at(answer_by):
                await self._broker().relay()  # what is left, the next invocation's relay sends
        failures = [
            {"itemIdentifier": r["messageId"]}
            for r, ok in zip(records, done, strict=True)
            if not ok
        ]
        return {"batchItemFailures": failures}

    @staticmethod
    async def _answered(handled: Coroutine[Any, Any, bool], answer_by: float | None) -> bool:
        """A record's answer by `answer_by` (loop time): one still waiting on the backend
        then (its job's claim or settle) is False, its message delivered again (a job it
        leased lapses, and is rescued)."""
        try:
            async with asyncio.timeout_at(answer_by):
                return await handled
        except TimeoutError:
            log.warning(
                "no answer before the invocation's end (the backend's, or a run's that ignored "
                "its cancellation): the message comes back",
                extra={"action": "sqs_record_error"},
            )
            return False

    async def _record(
        self, worker: Worker, record: Mapping[str, Any], deadline: float | None
    ) -> bool:
        """One message: True to acknowledge it (its job settled, or nothing to run)."""
        try:
            job_id = str(uuid.UUID(str(orjson.loads(record["body"])["job"])))
        except (KeyError, TypeError, ValueError, orjson.JSONDecodeError):
            log.warning("not an offload message: acknowledged", extra={"action": "sqs_poison"})
            return True
        broker = self._broker()
        try:
            lease = await broker.claim_job(job_id, worker_id=worker.id, lease_for=self.lease_s)
            if lease is None:
                await self._not_claimed(worker, job_id)
                return True
            outcome = await self._run(worker, lease, record.get("receiptHandle"), deadline)
            if outcome is not None:
                worker.after_settle([outcome], await broker.settle([outcome]))
            return True
        except BackendError as exc:
            log.warning(
                "job %s: %s; its message comes back",
                job_id,
                exc,
                extra={"action": "sqs_record_error", "job_id": job_id},
            )
            return False

    async def _not_claimed(self, worker: Worker, job_id: str) -> None:
        """A message whose job could not be claimed: acknowledged, after sending it again
        when the job still waits (not due yet, or its queue paused), or rescuing it when
        it runs on a lapsed lease (its function died)."""
        broker = self._broker()
        row = await broker.get(job_id)
        if row is None or row.state.final:
            return
        if row.state in (JobState.QUEUED, JobState.RETRYING):
            await broker.send_later(job_id, row.queue, max(row.run_at, time.time() + RECHECK_S))
        elif row.state is JobState.RUNNING:
            await worker.rescue_lapsed()

    async def _run(
        self, worker: Worker, lease: Lease, receipt: str | None, deadline: float | None
    ) -> Outcome | None:
        """Run a claimed job, beating its lease and its message's visibility, within the
        deadline; None when the lease was lost (another consumer owns the job now), or the
        handler ignored its cancellation (left running: its lease lapses, and the rescuer
        runs the job again)."""
        ctx = worker.context_for(lease)
        task = asyncio.create_task(worker.run_leased(lease, ctx), name=f"job-{lease.job_id}")
        loop = asyncio.get_running_loop()
        cancel = False
        try:
            while not task.done():
                wait = (
                    self.heartbeat_s
                    if deadline is None
                    else min(self.heartbeat_s, deadline - loop.time())
                )
                if wait <= 0:
                    break  # out of time: released below
                await asyncio.wait({task}, timeout=wait)
                if task.done():
                    break
                beat = await self._beat_beside(task, lease, receipt, deadline)
                if beat is None:
                    continue  # the job ended, or its time did, first: the loop's checks say
                held, cancel = beat
                if not held:
                    await _stop(task, ctx, lease, CANCELLED_RUNS_WAIT_S)
                    return None
                if cancel:
                    break
            return await _ended(worker, task, ctx, lease, cancel=cancel)
        except asyncio.CancelledError:
            # The answer is due while the job runs (a beat stuck on an unreachable
            # backend): the job must not run on into the next invocation of this loop.
            await asyncio.shield(_stop(task, ctx, lease, ANSWER_MARGIN_S / 2))
            raise

    async def _beat_beside(
        self, task: asyncio.Task[Any], lease: Lease, receipt: str | None, deadline: float | None
    ) -> tuple[bool, bool] | None:
        """`_beat`, given up when the job ends or its time does first (None): a beat that
        waits on SQS (it answers nothing) must not hold a finished job's outcome until
        the invocation's end, which lost it."""
        beat = asyncio.create_task(self._beat(lease, receipt), name=f"beat-{lease.job_id}")
        left = None if deadline is None else deadline - asyncio.get_running_loop().time()
        try:
            await asyncio.wait({task, beat}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            return beat.result() if beat.done() else None
        finally:
            beat.cancel()  # (done: nothing; else it ends at its next step)

    async def _beat(self, lease: Lease, receipt: str | None) -> tuple[bool, bool]:
        """Extend the lease and the message's visibility: (still held, cancel asked). A
        failed beat is logged and counts as held (the next one tries again)."""
        broker = self._broker()
        try:
            (answer,) = await broker.extend([lease], lease_for=self.lease_s)
        except BackendError as exc:
            log.warning("heartbeat failed: %s", exc, extra={"action": "heartbeat_error"})
            return True, False
        if answer.held and receipt is not None:
            try:
                await broker.change_visibility(receipt, self.lease_s)
            except BackendError as exc:
                log.warning("visibility not extended: %s", exc, extra={"action": "sqs_visibility"})
        return answer.held, answer.cancel_requested


def sqs_handler(app: App, *, margin_s: float = DEFAULT_MARGIN_S) -> SQSConsumer:
    """The worker as a Lambda handler `(event, context)` for an SQS trigger with
    `ReportBatchItemFailures`: the jobs of the batch run at once, bounded by
    `context.get_remaining_time_in_millis()`, and the answer names the messages to deliver
    again (a job whose outcome could not be written)."""
    return SQSConsumer(app, margin_s=margin_s)


class RelayFunction(SQSConsumer):
    """The scheduled sweep as a Lambda handler (see `relay_handler`)."""

    def __call__(self, event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
        """`{"rescued": n, "relayed": m, "resent": k}`: jobs given back from dead functions,
        outbox rows sent, and messages sent again for jobs whose message was lost."""
        return self.loop.run_until_complete(self.sweep())

    async def sweep(self) -> dict[str, Any]:
        worker = await self.open()
        rescued = await worker.rescue_lapsed()
        broker = self._broker()
        relayed = await broker.relay()
        return {"rescued": rescued, "relayed": relayed, "resent": await broker.resend_stale()}


def relay_handler(app: App) -> RelayFunction:
    """A Lambda handler for a schedule (EventBridge, every minute): rescue the jobs whose
    function died mid-run, send the outbox rows whose send was lost (older than the URL's
    `relay_age`), and send again the messages of jobs ready for longer than `resend_after`
    (lost to a dead-letter queue). Deploy it with the worker's code (a rescue decides with the
    handlers' budgets)."""
    return RelayFunction(app)


async def _ended(
    worker: Worker, task: asyncio.Task[Outcome | None], ctx: Any, lease: Lease, *, cancel: bool
) -> Outcome | None:
    """The outcome of a run that ended, or that is to end now (its job cancelled, or out of
    the function's time); None if it goes on after its cancellation (left running)."""
    if not task.done():
        await _stop(task, ctx, lease, CANCELLED_RUNS_WAIT_S)
        if not task.done():
            return None
    try:
        return await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # the invocation's answer is due (`_answered`), not the job's end
        if cancel:
            return worker.cancelled(lease)
        # It ran all the time the function had: a failed attempt, as a timeout is
        # (released unspent, it ran again, and again, for ever).
        return worker.out_of_time(lease, "ran past the function's time")


async def _stop(
    task: asyncio.Task[Outcome | None], ctx: Any, lease: Lease, within_s: float
) -> None:
    """End a job's run: its handler told (`ctx.cancelled`) and cancelled, and waited for
    `within_s` at most. One that ignores its cancellation (it catches `CancelledError` and
    goes on) is left running, said in the log: its lease lapses and the rescuer runs its
    job again, as a worker process leaves it at its stop."""
    ctx._end_run()
    task.cancel()
    await asyncio.wait({task}, timeout=within_s)
    if not task.done():
        task.add_done_callback(_retrieved)
        log.error(
            "job %s: its handler ignored its cancellation (it catches CancelledError and "
            "goes on: let it through, after any cleanup), left running: its lease lapses, "
            "and the rescuer runs it again",
            lease.job_id,
            extra={"action": "cancel_ignored", "job_id": lease.job_id},
        )
    else:
        _retrieved(task)


def _retrieved(task: asyncio.Task[Any]) -> None:
    """Take a stopped run's end, so that asyncio does not report it as never retrieved."""
    if not task.cancelled():
        task.exception()
