"""Progress reports closer together than `PROGRESS_EVERY_S` are coalesced: a handler that
reports every row costs the backend (and every watcher) about ten writes a second, not one
per row, and the last report stands before the job's outcome."""

from __future__ import annotations

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
