"""A worker whose clock runs ahead or behind by more than a lease, beside a worker with
the right time on the same queue: no job is lost or stuck, no stale result is accepted,
and no job runs twice, because every backend keeps its server's clock for leases (PostgreSQL
`now()`, Redis `TIME`, SQLite the one host's clock) and never a worker's."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from pathlib import Path

import pytest

from offload import App, Context, Message, Retry, Settings
from offload.clock import SkewedClock
from offload.worker.runner import Worker

from ._support import running, until
from .conftest import BackendParam

pytestmark = pytest.mark.anyio

#: The lease of both workers (seconds): the rescuers sweep every half lease.
LEASE_S = 3.0
#: How far the skewed worker's clock is off (seconds): more than two leases.
SKEW_S = 2.5 * LEASE_S
#: Jobs, and every how many one fails its first attempt (its retry is stamped by the clock
#: of the worker that ran it).
JOBS, FAIL_EVERY = 80, 10


class Tick(Message):
    n: int


def _app(
    url: str, tmp_path: Path, runs: list[tuple[str, str, int]], clock: SkewedClock | None
) -> App:
    """An App running `Tick` whose handler records (job id, which worker, attempt)."""
    settings = Settings(url=url, blobs_url=str(tmp_path / "blobs"), secret_key=b"k" * 32)
    app = App("skew", settings=settings, clock=clock)
    app.message("skew.tick", queue="ticks")(Tick)
    who = "normal" if clock is None else "skewed"

    @app.handles(Tick, max_attempts=5)
    async def tick(msg: Tick, ctx: Context) -> dict[str, object]:
        runs.append((ctx.job_id, who, ctx.attempt))
        await asyncio.sleep(0.3)  # jobs stay in flight across several sweeps of the rescuers
        if msg.n % FAIL_EVERY == 0 and ctx.attempt == 1:
            raise Retry(delay=0.2)
        return {"worker": who, "attempt": ctx.attempt}

    return app


@pytest.mark.parametrize("skew_s", [SKEW_S, -SKEW_S], ids=["ahead", "behind"])
async def test_a_worker_with_a_skewed_clock_loses_no_job_and_runs_none_twice(
    backend_name: str,
    backend_param: BackendParam,
    backend_url: str,
    tmp_path: Path,
    skew_s: float,
) -> None:
    if not backend_param.cross_process:
        pytest.skip(f"{backend_name} lives inside one backend object; workers cannot share it")
    runs: list[tuple[str, str, int]] = []
    normal = _app(backend_url, tmp_path, runs, None)
    skewed = _app(backend_url, tmp_path, runs, SkewedClock(skew_s))
    async with normal, skewed, contextlib.AsyncExitStack() as stack:
        # Given a worker whose clock is off by more than two leases, beside a right one,
        for app in (normal, skewed):
            await stack.enter_async_context(running(Worker(app, lease_s=LEASE_S, concurrency=4)))
        # when jobs come in batches while both run,
        ids: list[str] = []
        for first in range(0, JOBS, 20):
            batch = [Tick(n=n) for n in range(first, first + 20)]
            ids += [job.id for job in await normal.enqueue_many(batch)]
            await asyncio.sleep(0.2)

        async def all_done() -> bool:
            rows = [await normal.get(job_id) for job_id in ids]
            return all(row is not None and row.state == "succeeded" for row in rows)

        # then every job succeeds: none lost, none stuck (a retry the skewed worker stamped
        # ahead waits the skew out, no longer),
        await until(all_done, "every job succeeded")
        rows = [await normal.get(job_id) for job_id in ids]
    # each after exactly the attempts it needed: no healthy lease was rescued, on either
    # clock, so no job ran again,
    expected = {job_id: 2 if n % FAIL_EVERY == 0 else 1 for n, job_id in enumerate(ids)}
    assert Counter(job_id for job_id, _, _ in runs) == expected
    assert {row.id: row.attempt for row in rows if row is not None} == expected
    # with the result of its last attempt (fencing: no stale result accepted),
    assert all(row is not None and row.result["attempt"] == row.attempt for row in rows)
    # and both workers did work.
    assert {who for _, who, _ in runs} == {"normal", "skewed"}
