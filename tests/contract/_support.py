"""Helpers for the contract suite: envelope builder, status lookup, a claimer process."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from offload._ids import uuid7
from offload.brokers import Backend, open_backend
from offload.clock import Clock
from offload.contract import Envelope, JobState, Lease, Outcome, WorkerInfo, status_record
from offload.worker.rescue import decide_all
from offload.worker.retry import Backoff
from offload.worker.runner import Worker

KIND = "test.job"
#: A lease long enough that it never lapses during a test unless the test wants it to.
LONG = 60.0


def envelope(
    queue: str = "q",
    *,
    priority: int = 0,
    delay: float = 0.0,
    run_at: float | None = None,
    owner: str = "local",
    key: str | None = None,
    max_attempts: int = 3,
    kind: str = KIND,
    payload: dict[str, Any] | None = None,
    id: str | None = None,
) -> Envelope:
    """A queued-job envelope as the web tier would stamp it."""
    now = time.time()
    return Envelope(
        id=id or uuid7(),
        kind=kind,
        version=1,
        payload=payload or {"n": 1},
        queue=queue,
        priority=priority,
        attempt=0,
        max_attempts=max_attempts,
        run_at=run_at if run_at is not None else now + delay,
        enqueued_at=now,
        idempotency_key=key,
        owner=owner,
    )


async def status(backend: Backend, job_id: str) -> dict[str, Any]:
    """The job's status record, its stored error whole (as operators see it: a backend
    keeps the traceback, which the public record leaves out)."""
    row = await backend.get(job_id)
    assert row is not None, f"job {job_id} is not stored"
    return status_record(row, tracebacks=True)


async def claim(
    backend: Backend,
    queue: str = "q",
    *,
    limit: int = 10,
    lease_for: float = LONG,
    worker: str = "w1",
) -> list[Lease]:
    return await backend.claim([queue], worker_id=worker, lease_for=lease_for, limit=limit)


def done(lease: Lease, result: Any = None) -> Outcome:
    return Outcome(lease=lease, state=JobState.SUCCEEDED, result=result)


class ShiftClock(Clock):
    """Real time plus an offset the test moves: leases lapse and delays pass at once,
    with no sleep that must be long enough (and none that a loaded machine outlasts)."""

    stands_in_for_server = True

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass(frozen=True, slots=True)
class Policy:
    """A handler's retry policy, as lease rescue reads it (default: retry at once)."""

    max_attempts: int | None = None
    backoff: Backoff = field(default_factory=lambda: Backoff(base_s=0.0, jitter=0.0))


async def rescue(backend: Backend, clock: Clock, policy: Policy | None = None) -> list[Outcome]:
    """One rescue pass as a worker makes it: read lapsed leases, decide by `policy`, apply.
    Returns the decisions that applied."""
    lapsed = await backend.expired(limit=100)
    decisions = decide_all(lapsed, lambda kind: policy or Policy(), clock.now())
    applied = await backend.rescue(decisions)
    return [d for d, ok in zip(decisions, applied, strict=True) if ok]


# -- the multi-process claimer (runs in a spawned process) ----------------------------------


def claim_until_empty(url: str, queue: str, limit: int, barrier: Any, out: str) -> None:
    """Claim from `queue` and settle every job as succeeded until none is waiting;
    write the claimed ids (in claim order) as JSON to `out`."""
    got: list[str] = []
    try:
        asyncio.run(_claim_until_empty(url, queue, limit, barrier, f"proc-{Path(out).stem}", got))
    finally:
        Path(out).write_text(json.dumps(got))


async def _claim_until_empty(
    url: str, queue: str, limit: int, barrier: Any, worker: str, got: list[str]
) -> None:
    backend = open_backend(url)
    await backend.open()
    try:
        barrier.wait(30)  # start all claimers at once, so they really compete
        while True:
            leases = await backend.claim([queue], worker_id=worker, lease_for=LONG, limit=limit)
            if not leases:
                if (await backend.stats()).get(queue, {}).get("queued", 0) == 0:
                    break
                continue
            got += [le.job_id for le in leases]
            applied = await backend.settle([done(le, {"by": worker}) for le in leases])
            if not all(applied):
                raise AssertionError(f"{worker}: a fresh lease was refused: {applied}")
    finally:
        await backend.close()


def worker_info(
    worker_id: str,
    kinds: dict[str, list[int]] | None = None,
    *,
    started_at: float = 1_800_000_000.0,
    queues: tuple[str, ...] = ("q",),
    running: tuple[str, ...] = (),
    processed: int = 0,
    failed: int = 0,
) -> WorkerInfo:
    """A registry entry as a worker records it (the backend stamps `heartbeat_at`)."""
    started = datetime.fromtimestamp(started_at, UTC)
    return WorkerInfo(
        id=worker_id,
        host="host-1",
        pid=4321,
        queues=queues,
        concurrency=8,
        version="9.9.9",
        kinds={kind: tuple(versions) for kind, versions in (kinds or {}).items()},
        started_at=started,
        heartbeat_at=started,
        running=running,
        processed=processed,
        failed=failed,
    )


#: Deadline of anything asked of a real worker on the loop (CI is a loaded 2-core machine).
PATIENCE_S = 20.0


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    """`worker` running on this loop while the block runs (started when it is entered)."""
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.started.wait(), PATIENCE_S)
        yield worker
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 30)


async def until(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    """Poll `check()` (awaited) until it answers something true, and return that; fails
    after PATIENCE_S."""
    try:
        async with asyncio.timeout(PATIENCE_S):
            while not (answer := await check()):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            return answer
    except TimeoutError:
        raise AssertionError(f"not within {PATIENCE_S:g}s: {what}") from None
