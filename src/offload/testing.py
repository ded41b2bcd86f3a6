"""Your own tests: run the jobs your code enqueued, in the test's process, then read them.

```python
from offload.testing import run_jobs

async def test_export(app):  # an App with the handlers imported, open on a test database
    job = await app.enqueue(ExportReport(user_id="u1", period="2026-10"))
    (ran,) = await run_jobs(app)
    assert ran.id == job.id and ran.state == "succeeded"
```

`run_jobs` runs a real worker (`offload.worker.runner.Worker`) in this process, one job at a
time by default, until no job is ready, and raises `JobsFailed` when a handler raised. Time
moves only when the test moves it if the app was made with a `FakeClock`: a delayed job or a
retry then waits until the test calls `clock.advance` and `run_jobs` again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from .app import App
from .clock import FakeClock
from .contract import JobRow, JobState
from .errors import ConfigurationError, OffloadError
from .worker.runner import HANDOFFS_END_S, Worker

__all__ = [
    "DEFAULT_MAX_JOBS",
    "FakeClock",
    "JobsFailed",
    "RunawayJobs",
    "run_jobs",
    "run_jobs_sync",
]

#: The most jobs one `run_jobs` call runs before it takes the rest for a handler that
#: enqueues jobs without end (a job that enqueues itself again).
DEFAULT_MAX_JOBS = 1_000

#: How long `run_jobs` waits for a plain handler's thread that ran on past its attempt (a
#: timeout, a cancel) to return, before it fails: a thread left running acts in later tests.
THREADS_END_S = 10.0

#: How many lines of a handler's traceback `JobsFailed` quotes for each job.
_TRACEBACK_LINES = 40


class JobsFailed(OffloadError):
    """Jobs that `run_jobs` ran ended failed, dead or retrying: their handlers raised.

    Args:
        rows: the records of those jobs, as they ended (`row.error` has the handler's error
            and traceback).
        ran: the records of every job the call ran.
    """

    def __init__(self, rows: Sequence[JobRow], ran: Sequence[JobRow]) -> None:
        self.rows = list(rows)
        self.ran = list(ran)
        count = len(self.rows)
        lines = [f"{count} job{'' if count == 1 else 's'} of {len(self.ran)} run failed:"]
        for row in self.rows:
            lines.extend(_told(row))
        super().__init__("\n".join(lines))


class RunawayJobs(OffloadError):
    """`run_jobs` ran its `max_jobs` and one more job was ready (it ran too): a handler that
    enqueues jobs without end, or a test that enqueued more than it meant to.

    Args:
        ran: the records of the jobs the call ran.
    """

    def __init__(self, ran: Sequence[JobRow], max_jobs: int) -> None:
        self.ran = list(ran)
        super().__init__(
            f"ran more than {max_jobs} jobs (max_jobs) and one more was ready: a handler "
            "that enqueues jobs without end, or more jobs than the test meant to run? Pass "
            "a larger max_jobs if it means them"
        )


async def run_jobs(
    app: App,
    *,
    queues: Sequence[str] | None = None,
    concurrency: int = 1,
    raise_errors: bool = True,
    max_jobs: int = DEFAULT_MAX_JOBS,
) -> list[JobRow]:
    """Run every job that is ready in this process, with `app`'s handlers, and every job those
    enqueue that is ready, until none is; return the records of the jobs that ran.

    A job waiting for its time (a `delay`, `run_at`, a retry's backoff) is not ready: it
    stays queued or retrying. Periodic schedules do not fire (enqueue a schedule's message
    to test its handler). Webhook and email deliveries run as their jobs come, as a worker's
    do, unless `queues` leaves the notify queue out.

    Args:
        app: the App the handlers are registered on (import your worker module first).
            Hold it open meanwhile (`async with app:`): an in-memory database (`memory://`)
            lives only as long as the app stays open.
        queues: the queues to run (every queue with a handler, and the notify queue, when
            None).
        concurrency: jobs run at once; 1 runs them one after another, in the order a worker
            claims them (priority, then time).
        raise_errors: raise `JobsFailed` when a job that ran ended failed, dead or retrying
            because its handler raised (a `Retry` asked for is no failure).
        max_jobs: the most jobs to run: a call that finds one more ready runs it and
            raises `RunawayJobs`.

    Returns:
        The records of the jobs that ran (payload and result included), in the order they
        first started, as they ended.

    Raises:
        JobsFailed: see `raise_errors`.
        RunawayJobs: see `max_jobs`.
        OffloadError: a plain handler's thread ran on past its attempt (a timeout, a
            cancel) and still ran `THREADS_END_S` later: it would act in later tests.
        ConfigurationError: the app has no handlers, or the arguments are out of range.
    """
    await app.open()
    try:
        return await _run(app, queues, concurrency, raise_errors, max_jobs)
    finally:
        await app.close()


def run_jobs_sync(
    app: App,
    *,
    queues: Sequence[str] | None = None,
    concurrency: int = 1,
    raise_errors: bool = True,
    max_jobs: int = DEFAULT_MAX_JOBS,
) -> list[JobRow]:
    """`run_jobs` for synchronous tests (Flask, Django, plain functions): it blocks until
    the jobs have run, on an event loop of its own, and sees what `app.enqueue_sync` stored
    (an in-memory database included).

    Raises:
        ConfigurationError: called where an event loop runs (in a coroutine, `await
            run_jobs(app)`); see `run_jobs` for the rest.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise ConfigurationError(
            "run_jobs_sync blocks, and an event loop runs in this thread: await run_jobs(app)"
        )
    return asyncio.run(
        run_jobs(
            app,
            queues=queues,
            concurrency=concurrency,
            raise_errors=raise_errors,
            max_jobs=max_jobs,
        )
    )


async def _run(
    app: App,
    queues: Sequence[str] | None,
    concurrency: int,
    raise_errors: bool,
    max_jobs: int,
) -> list[JobRow]:
    """`run_jobs` on an open app: workers one after another until one finds nothing to run
    (a job's follow-ups, its deliveries, are written as its outcome is, after the worker
    that ran it may have looked for more)."""
    if isinstance(queues, str):
        raise ConfigurationError(f"queues is a list of queue names: queues=[{queues!r}]")
    if queues is not None and not queues:
        raise ConfigurationError("queues names no queue: None runs every queue")
    if max_jobs < 1:
        raise ConfigurationError(f"max_jobs must be at least 1, not {max_jobs}")
    since = await app.last_seq()
    workers: set[str] = set()
    ran_on = 0
    left = max_jobs + 1  # the one more that a call without end runs shows it
    while left > 0:
        worker = Worker(
            app,
            queues=queues,
            concurrency=concurrency,
            prefetch=0,
            max_jobs=left,
            exit_when_idle_s=0,
            scheduler=False,
        )
        worker._closes_handoffs = False  # (closed below, once threads that ran on ended)
        workers.add(worker.id)
        try:
            await worker.run()
            ran_on = max(ran_on, await _threads_end(worker))
        finally:
            await worker._handoffs.aclose(HANDOFFS_END_S)
        if not worker.begun:
            break
        left -= worker.begun
    if ran_on:
        raise OffloadError(
            f"{ran_on} plain handler thread{'' if ran_on == 1 else 's'} still ran "
            f"{THREADS_END_S:g}s after the attempt ended (a timeout, a cancel): it would act "
            "in the tests that come next; return when ctx.cancelled is set"
        )
    ran = await _ran(app, since, workers)
    if left <= 0:
        raise RunawayJobs(ran, max_jobs)
    if raise_errors:
        failed = [row for row in ran if _raised(row)]
        if failed:
            raise JobsFailed(failed, ran)
    return ran


async def _threads_end(worker: Worker) -> int:
    """Wait up to `THREADS_END_S` for the threads of `worker`'s plain handlers that ran on
    past their attempts (a timeout, a cancel) to return: how many still run."""
    deadline = asyncio.get_running_loop().time() + THREADS_END_S
    while worker.threads_running_on and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110 (a pool's futures: no event to await)
        await asyncio.sleep(0.01)
    return worker.threads_running_on


async def _ran(app: App, since: int, workers: set[str]) -> list[JobRow]:
    """The jobs `workers` started since feed position `since`, in the order they first
    started, as they are now."""
    started: dict[str, None] = {}
    while True:
        changes = await app.changes_since(since)
        if not changes:
            break
        for change in changes:
            if change.row.state is JobState.RUNNING and change.row.worker in workers:
                started.setdefault(change.job_id, None)
        since = changes[-1].seq
    rows = [await app.get(job_id) for job_id in started]
    return [row for row in rows if row is not None]  # (a handler may have deleted one)


def _raised(row: JobRow) -> bool:
    """Whether `row` ended as it did because its handler raised (not a `Retry` it asked
    for, not a cancel)."""
    if row.state in (JobState.FAILED, JobState.DEAD):
        return True
    error = row.error or {}
    return row.state is JobState.RETRYING and error.get("type") != "Retry"


def _told(row: JobRow) -> list[str]:
    """A failed job's lines in `JobsFailed`: what, where it stands, and its traceback."""
    error = row.error or {}
    told = [
        f"- {row.kind} {row.id}: {row.state}, attempt {row.attempt} of {row.max_attempts}: "
        f"{error.get('type', 'error')}: {error.get('message', '')}"
    ]
    trace = (error.get("traceback") or "").rstrip().splitlines()
    if len(trace) > _TRACEBACK_LINES:
        trace = ["  ...", *trace[-_TRACEBACK_LINES:]]
    told.extend(f"    {line}" for line in trace)
    return told
