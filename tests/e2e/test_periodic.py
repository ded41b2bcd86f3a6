"""Periodic jobs across real worker processes: three of them over ten ticks of a 1-second
schedule store exactly ten jobs, and a worker restarted after missing ticks enqueues what its
catch-up policy says, on every backend.

Ticks are read back from the jobs' idempotency keys, and the windows are bounded by ticks the
backend recorded and by when the scheduler started (the registry's `started_at`), never by
how long a sleep lasted.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TypeVar

import pytest

from offload import App, Settings, WorkerInfo
from offload.brokers.base import WORKER_LOST_AFTER_S
from offload.contract import JobFilter
from offload.periodic import PERIODIC_OWNER

from .conftest import Stack

pytestmark = pytest.mark.anyio

T = TypeVar("T")
#: Deadline of anything the processes are waited for (CI is a loaded 2-core machine).
PATIENCE_S = 60.0
KIND = "e2e.beat"
APP = """
import os
from datetime import timedelta

from offload import App, Context, Message

app = App("beats")


@app.message("e2e.beat", queue="beats")
class Beat(Message):
    pass


app.periodic(
    Beat(), every=timedelta(seconds=1), catch_up=int(os.environ["BEAT_CATCH_UP"]), name="beat"
)


@app.handles(Beat)
async def beat(msg: Beat, ctx: Context) -> None:
    return None
"""


@asynccontextmanager
async def _reader(stack: Stack, catch_up: int) -> AsyncIterator[App]:
    """Writes the project's app module, and opens an App on the stack's backend to read it."""
    (stack.root / "beats.py").write_text(APP)
    stack.env["BEAT_CATCH_UP"] = str(catch_up)
    async with App("reader", settings=Settings(url=stack.env["OFFLOAD_URL"])) as app:
        yield app


async def _until(stack: Stack, check: Callable[[], Awaitable[T | None]], what: str) -> T:
    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline:
        answer = await check()
        if answer:
            return answer
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {PATIENCE_S:g}s: {what}\n{stack.output()}")


async def _last_tick(app: App) -> float | None:
    states = await app._require_backend().schedule_states()
    return states[0].last_tick if states else None


async def _ticks(app: App) -> list[float]:
    """The tick of every job the schedule stored, oldest first (repeats kept)."""
    rows = await app.search_jobs(JobFilter(kind=KIND), limit=5000)
    assert all(r.owner == PERIODIC_OWNER for r in rows)
    stamps = [str(r.idempotency_key).removeprefix("beat@") for r in rows]
    return sorted(datetime.fromisoformat(s).timestamp() for s in stamps)


async def _workers(app: App, n: int) -> list[WorkerInfo] | None:
    found = await app._require_backend().workers(lost_after_s=WORKER_LOST_AFTER_S)
    live = [w for w in found if not w.lost]
    return live if len(live) == n else None


async def _tick_after(stack: Stack, app: App, t: float) -> float:
    async def check() -> float | None:
        last = await _last_tick(app)
        return last if last is not None and last >= t else None

    return await _until(stack, check, f"a tick stored at or after {t}")


async def test_three_workers_over_ten_ticks_store_exactly_ten_jobs(stack: Stack) -> None:
    async with _reader(stack, catch_up=0) as app:
        # Given three worker processes, all running their schedulers
        for _ in range(3):
            stack.start_worker("--queues", "beats", app="beats:app")
        await _until(stack, lambda: _workers(app, 3), "three live workers")
        # When ten ticks pass after one all three raced for
        start = await _tick_after(stack, app, time.time() + 1)
        await _tick_after(stack, app, start + 10)
        # Then each of the ten ticks after it has exactly one job
        ticks = await _ticks(app)
        window = [t for t in ticks if start < t <= start + 10]
        assert window == [start + k for k in range(1, 11)], stack.output()
        # and no tick anywhere has two, none is skipped from the first to the last
        assert len(set(ticks)) == len(ticks)
        assert ticks == [ticks[0] + k for k in range(len(ticks))]
        # Each worker said at its start which schedules it runs
        said = [line.strip() for line in stack.output().splitlines() if "schedules" in line]
        assert said == ["schedules    beat"] * 3


@pytest.mark.parametrize("catch_up", [0, 2])
async def test_a_worker_restarted_after_missed_ticks_enqueues_per_its_policy(
    stack: Stack, catch_up: int
) -> None:
    async with _reader(stack, catch_up=catch_up) as app:
        # Given a worker that stored a tick, then stopped
        worker = stack.start_worker("--queues", "beats", app="beats:app")
        await _tick_after(stack, app, time.time() + 1)
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.wait, 30) == 0
        last = await _last_tick(app)
        assert last is not None
        # When six ticks pass with no worker, and it starts again
        while time.time() < last + 6.2:  # noqa: ASYNC110  (waiting for the clock to pass)
            await asyncio.sleep(0.05)
        again = stack.start_worker("--queues", "beats", app="beats:app")
        (info,) = await _until(stack, lambda: _workers(app, 1), "the restarted worker")
        assert info.pid == again.pid
        since = info.started_at.timestamp()
        await _tick_after(stack, app, since + 1)
        # Then of the ticks missed while none ran, only the newest `catch_up` have jobs
        missed = [last + k for k in range(1, 100) if last + k < since]
        assert len(missed) >= 6
        ticks = await _ticks(app)
        assert [t for t in ticks if last < t < since] == missed[len(missed) - catch_up :]
        # and every tick since it started has its one job
        on_time = [t for t in ticks if t >= since]
        assert on_time == [on_time[0] + k for k in range(len(on_time))]
        assert on_time[0] - since <= 1.0
        assert len(set(ticks)) == len(ticks)
