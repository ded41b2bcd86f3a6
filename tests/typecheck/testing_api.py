"""Checked by mypy (see `files` in pyproject.toml), never run: a user's tests with
`offload.testing` read typed records, and a misspelt option is a type error (each
`# type: ignore[...]` marks a mistake mypy must report)."""

from __future__ import annotations

from typing import Any, assert_type

from offload import App, JobRow, JobState, Settings
from offload.testing import FakeClock, JobsFailed, RunawayJobs, run_jobs, run_jobs_sync

clock = FakeClock()
app = App("typecheck", clock=clock)
app.configure(Settings(url="memory://"), clock=clock)


async def well_typed() -> None:
    ran = await run_jobs(app, queues=["reports"], concurrency=2, max_jobs=10)
    assert_type(ran, list[JobRow])
    assert_type(ran[0].state, JobState)
    clock.advance(60)
    try:
        await run_jobs(app)
    except JobsFailed as failed:
        assert_type(failed.rows, list[JobRow])
        assert_type(failed.ran, list[JobRow])
    except RunawayJobs as runaway:
        assert_type(runaway.ran, list[JobRow])


def well_typed_sync() -> None:
    assert_type(run_jobs_sync(app, raise_errors=False), list[JobRow])


async def mistakes() -> None:
    await run_jobs(app, queue="reports")  # type: ignore[call-arg]
    await run_jobs(app, concurrency="2")  # type: ignore[arg-type]
    run_jobs_sync(app, raise_errors="no")  # type: ignore[arg-type]


@app.upgrade("typecheck.ping", from_version=1)
def split_period(payload: dict[str, Any]) -> dict[str, Any]:
    return {**payload, "year": 2026}


def an_upgrader_keeps_its_type() -> None:
    # A test of the upgrader indexes what it returns: the decorator left its type alone
    assert_type(split_period({"period": "2026-10"})["year"], Any)
