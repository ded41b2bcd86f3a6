# tests/test_exports.py: your own tests (pytest; anyio, which offload installs, runs the async ones)
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from offload import App, Settings
from offload.testing import FakeClock, JobsFailed, run_jobs

import myproj.worker  # noqa: F401  (its handlers: declared as it is imported)
from myproj.contracts import ExportReport, app

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()  # time moves when the test says


@pytest.fixture
async def jobs(tmp_path: Path, clock: FakeClock) -> AsyncIterator[App]:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    app.configure(Settings(url=url, blobs_url=str(tmp_path / "blobs")), clock=clock)
    async with app:  # held open for the test (memory:// lives as long)
        yield app


async def test_export(jobs: App) -> None:
    job = await jobs.enqueue(ExportReport(user_id="u1", period="2026-10"))
    (ran,) = await run_jobs(jobs)  # the records of the jobs that ran
    assert (ran.id, ran.state) == (job.id, "succeeded")
    assert ran.result["report"].startswith("blob:")


async def test_a_delayed_export_waits_for_its_time(jobs: App, clock: FakeClock) -> None:
    await jobs.enqueue(ExportReport(user_id="u1", period="2026-11"), delay=3600)
    assert await run_jobs(jobs) == []  # not due yet
    clock.advance(3600)
    (ran,) = await run_jobs(jobs)
    assert ran.state == "succeeded"


async def test_a_failing_export_fails_the_test_with_its_traceback(jobs: App) -> None:
    await jobs.enqueue(ExportReport(user_id="u1", period="not a period"))
    with pytest.raises(JobsFailed, match="retrying, attempt 1 of 5: ValueError"):
        await run_jobs(jobs)
