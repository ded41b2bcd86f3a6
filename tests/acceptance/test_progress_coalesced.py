"""Progress reports closer together than `PROGRESS_EVERY_S` are coalesced: a handler that
reports every row costs the backend (and every watcher) about ten writes a second, not one
per row, and the last report stands before the job's outcome."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from offload import App, Context, Message, SyncContext
from offload.context import PROGRESS_EVERY_S
from offload.testing import run_jobs

pytestmark = pytest.mark.anyio
ROWS = 5_000


class Rows(Message):
    n: int


class PlainRows(Message):
    n: int


@pytest.fixture
def counted(app: App) -> dict[str, Any]:
    """The reports that reached the backend, and how long the handlers ran."""
    seen: dict[str, Any] = {"writes": [], "ran_s": 0.0}
    app.message("p.rows")(Rows)
    app.message("p.plain")(PlainRows)

    @app.handles(Rows)
    async def rows(msg: Rows, ctx: Context) -> int:
        began = time.monotonic()
        for i in range(1, msg.n + 1):
            assert await ctx.progress(i / msg.n, f"row {i}") is True
        seen["ran_s"] += time.monotonic() - began
        return msg.n

    @app.handles(PlainRows)
    def plain(msg: PlainRows, ctx: SyncContext) -> int:
        began = time.monotonic()
        for i in range(1, msg.n + 1):
            assert ctx.progress(i / msg.n, f"row {i}") is True
        seen["ran_s"] += time.monotonic() - began
        return msg.n

    return seen


async def _counting(app: App, seen: dict[str, Any]) -> None:
    backend = app._require_backend()
    store = backend.progress

    async def progress(lease: Any, fraction: float | None, message: str | None) -> bool:
        seen["writes"].append((fraction, message))
        return await store(lease, fraction, message)

    backend.progress = progress  # type: ignore[method-assign]


@pytest.mark.parametrize("kind", [Rows, PlainRows])
async def test_a_report_per_row_costs_about_ten_writes_a_second(
    app: App, counted: dict[str, Any], kind: type[Rows | PlainRows]
) -> None:
    async with app:
        await _counting(app, counted)
        # Given a handler that reports each of 5,000 rows,
        job = await app.enqueue(kind(n=ROWS))
        # when it runs,
        (row,) = await run_jobs(app)
        assert row.state == "succeeded", row.error
        # then the backend stored a report about every PROGRESS_EVERY_S, not one per row
        writes = counted["writes"]
        most = 2 + counted["ran_s"] / PROGRESS_EVERY_S
        assert 1 <= len(writes) <= most, (len(writes), counted["ran_s"])
        # and the last report, before the outcome: the record says the job got to its end.
        assert writes[-1] == (1.0, f"row {ROWS}")
        stored = await app.get(job.id)
        assert stored is not None
        assert (stored.progress_fraction, stored.progress_message) == (1.0, f"row {ROWS}")


class Endless(Message):
    pass


def _slow_reports(app: App) -> None:
    """Each report takes 5 ms to store, as over a network: a handler reporting every
    millisecond has a report waiting again whenever one is stored."""
    backend = app._require_backend()
    store = backend.progress

    async def slow(lease: Any, fraction: float | None, message: str | None) -> bool:
        await asyncio.sleep(0.005)
        return await store(lease, fraction, message)

    backend.progress = slow  # type: ignore[method-assign]


async def test_a_thread_that_reports_on_past_its_timeout_holds_no_outcome_back(
    app: App,
) -> None:
    # The report waiting was stored before the outcome, and the next that came meanwhile,
    # and the next: the thread, never told to stop (its attempt's timeout told it after),
    # held the job's outcome back for as long as it reported.
    app.message("p.endless")(Endless)
    stop = threading.Event()

    @app.handles(Endless, timeout=0.3, max_attempts=1)
    def endless(msg: Endless, ctx: SyncContext) -> None:
        while not (ctx.cancelled.is_set() or stop.is_set()):
            ctx.progress(0.5, "on and on")
            time.sleep(0.0005)

    async with app:
        _slow_reports(app)
        try:
            job = await app.enqueue(Endless())
            async with asyncio.timeout(20):  # (it never came)
                (row,) = await run_jobs(app, raise_errors=False)
        finally:
            stop.set()
        assert (row.id, row.state) == (job.id, "dead")


async def test_a_task_that_reports_on_after_its_handler_returns_holds_no_outcome_back(
    app: App,
) -> None:
    app.message("p.rows")(Rows)
    stop = asyncio.Event()
    helpers: list[asyncio.Task[None]] = []

    reports = [0]

    @app.handles(Rows)
    async def rows(msg: Rows, ctx: Context) -> int:
        async def reporting() -> None:  # (a helper the handler left running)
            while not stop.is_set():
                await ctx.progress(0.5, "still here")
                reports[0] += 1
                await asyncio.sleep(0.001)

        helpers.append(asyncio.create_task(reporting()))
        await asyncio.sleep(0.05)
        return msg.n

    async with app:
        _slow_reports(app)
        await app.enqueue(Rows(n=1))
        try:
            async with asyncio.timeout(20):  # (it never came)
                (row,) = await run_jobs(app)
            # and what it reports after is stored by no task left to outlive it
            after = reports[0]
            async with asyncio.timeout(20):
                while reports[0] < after + 5:  # noqa: ASYNC110
                    await asyncio.sleep(0.001)
            waiting = [t for t in asyncio.all_tasks() if "_store_later" in repr(t.get_coro())]
            assert waiting == []
        finally:
            stop.set()
            await asyncio.gather(*helpers)
        assert row.state == "succeeded"


async def test_a_report_that_failed_later_fails_the_attempt_as_at_once(app: App) -> None:
    # An error of the backend's own (no outage) in a report stored later was lost ("Task
    # exception was never retrieved") and its job succeeded; one stored at once fails it.
    app.message("p.rows")(Rows)

    @app.handles(Rows, max_attempts=1)
    async def rows(msg: Rows, ctx: Context) -> int:
        await ctx.progress(0.1, "first")  # stored at once
        await ctx.progress(0.2, "second")  # waits, and fails as it is stored,
        await asyncio.sleep(PROGRESS_EVERY_S * 3)  # (while the handler goes on)
        return msg.n

    async with app:
        backend = app._require_backend()
        store = backend.progress
        calls = [0]

        async def failing(lease: Any, fraction: float | None, message: str | None) -> bool:
            calls[0] += 1
            if calls[0] == 2:
                raise RuntimeError("the store broke")
            return await store(lease, fraction, message)

        backend.progress = failing  # type: ignore[method-assign]
        await app.enqueue(Rows(n=1))
        (row,) = await run_jobs(app, raise_errors=False)
        assert row.state == "dead"
        assert row.error is not None and row.error["type"] == "RuntimeError", row.error


async def test_a_thread_that_reports_on_while_its_outcome_waits_is_still_coalesced(
    app: App,
) -> None:
    # Past its attempt's end (a timeout), while the worker waited for its thread to return,
    # every report of the thread was a write and an event: a thousand a second.
    app.message("p.endless")(Endless)
    told: dict[str, float] = {}

    @app.handles(Endless, timeout=0.2, max_attempts=1)
    def endless(msg: Endless, ctx: SyncContext) -> None:
        after = 0
        while after < 400:  # reports on for a while once told to stop, then returns
            ctx.progress(0.5, "on and on")
            if ctx.cancelled.is_set():
                told.setdefault("at", time.monotonic())
                after += 1
            time.sleep(0.0005)
        told["returned"] = time.monotonic()

    async with app:
        writes: list[float] = []
        backend = app._require_backend()
        store = backend.progress

        async def counted(lease: Any, fraction: float | None, message: str | None) -> bool:
            writes.append(time.monotonic())
            return await store(lease, fraction, message)

        backend.progress = counted  # type: ignore[method-assign]
        await app.enqueue(Endless())
        async with asyncio.timeout(60):
            (row,) = await run_jobs(app, raise_errors=False)
        assert row.state == "dead"
        held = [t for t in writes if told["at"] <= t <= told["returned"]]
        assert len(held) <= 3 + (told["returned"] - told["at"]) / PROGRESS_EVERY_S, len(held)
