"""Limits per kind across real worker processes, on every backend: four `offload worker`
processes of concurrency 16 never run more than 5 jobs of a `max_running=5` kind at once (the
handlers log when each run starts and ends; the overlap is computed from the log), and a
`rate="4/s"` kind never starts more than 4 jobs within any second (counted from the starts
the backend stamped)."""

from __future__ import annotations

import asyncio
import time

import pytest

from offload import App, Message, Settings
from offload.contract import JobFilter

from .conftest import Stack

pytestmark = pytest.mark.anyio

#: Deadline of anything the processes are waited for (CI is a loaded 2-core machine).
PATIENCE_S = 120.0
APP = """
import os
import time
from pathlib import Path

from offload import App, Context, Message

app = App("limited")
SPANS = Path(os.environ["E2E_LOG_DIR"]) / "spans.log"


@app.message("e2e.capped", queue="capped")
class Capped(Message):
    n: int


@app.message("e2e.rated", queue="rated")
class Rated(Message):
    n: int


@app.handles(Capped, max_running=5)
def capped(msg: Capped, ctx: Context) -> None:
    start = time.monotonic()
    time.sleep(0.05)  # the job's work: long enough for runs to overlap
    with SPANS.open("a") as out:  # one short line per O_APPEND write: never interleaved
        out.write(f"{start!r} {time.monotonic()!r}\\n")


@app.handles(Rated, rate="4/s")
def rated(msg: Rated, ctx: Context) -> None:
    return None
"""


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The most runs under way at one instant (an end before a start at the same time)."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def most_in_window(starts: list[float], window_s: float) -> int:
    """The most starts within any half-open window of `window_s` seconds."""
    starts = sorted(starts)
    most, first = 0, 0
    for last, t in enumerate(starts):
        while starts[first] <= t - window_s:
            first += 1
        most = max(most, last - first + 1)
    return most


async def _enqueue(stack: Stack, kind: str, n: int) -> App:
    (stack.root / "limited.py").write_text(APP)
    app = App("reader", settings=Settings(url=stack.env["OFFLOAD_URL"]))

    class Job(Message):
        n: int

    app.message(kind, queue=kind.removeprefix("e2e."))(Job)
    await app.open()
    await app.enqueue_many([Job(n=i) for i in range(n)])
    return app


async def _until_done(stack: Stack, app: App, kind: str, n: int) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline:
        done = await app.count_jobs(JobFilter(kind=kind, state="succeeded"))
        if done == n:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not all {n} {kind} jobs succeeded\n{stack.output()}")


async def test_four_workers_of_16_slots_never_run_more_than_max_running(stack: Stack) -> None:
    # Given 80 jobs of a kind limited to 5 running at once
    app = await _enqueue(stack, "e2e.capped", 80)
    try:
        # When four worker processes of 16 slots each run them all
        for _ in range(4):
            stack.start_worker("--queues", "capped", "--concurrency", "16", app="limited:app")
        await _until_done(stack, app, "e2e.capped", 80)
    finally:
        await app.close()
    # Then no more than 5 ran at any instant, and the runs did overlap
    spans = [tuple(map(float, line.split())) for line in stack.log_lines("spans.log")]
    assert len(spans) == 80
    overlap = max_overlap([(s, e) for s, e in spans])
    assert 2 <= overlap <= 5, overlap


async def test_a_rate_limited_kind_never_starts_more_than_its_rate_in_any_window(
    stack: Stack,
) -> None:
    # Given 20 jobs of a kind allowed 4 starts per second
    app = await _enqueue(stack, "e2e.rated", 20)
    try:
        # When two worker processes run them all
        for _ in range(2):
            stack.start_worker("--queues", "rated", "--concurrency", "16", app="limited:app")
        await _until_done(stack, app, "e2e.rated", 20)
        rows = await app.search_jobs(JobFilter(kind="e2e.rated"), limit=100)
    finally:
        await app.close()
    # Then within any one second (by the starts the backend stamped) at most 4 started
    starts = [r.started_at for r in rows if r.started_at is not None]
    assert len(starts) == 20
    assert most_in_window(starts, 1.0) == 4
    # and the next starts came as the window freed, not after a long poll
    assert max(starts) - min(starts) < 4 * 2 + 2
