"""Versions end to end in one process: the web tier's refusal of versions no live worker runs
(OFFLOAD_REQUIRE_WORKER_VERSION), and jobs whose upgrade path is gone."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from offload import App, Context, Job, JobState, Message, Settings
from offload.cli import cli
from offload.contract import Envelope
from offload.versions import LIVE_VERSIONS_TTL_S

from ..contract._support import PATIENCE_S, ShiftClock, worker_info

pytestmark = pytest.mark.anyio


class ExportV1(Message):
    period: str


class ExportV2(Message):
    period: str
    format: str = "pdf"


@pytest.fixture
def clock() -> ShiftClock:
    return ShiftClock()


@pytest.fixture
def app(settings: Settings, clock: ShiftClock) -> App:
    """The acceptance App, with the worker-version check on and a clock the test moves."""
    return App("versions", settings=settings.with_(require_worker_version=True), clock=clock)


def declare(app: App, version: int, *, upgraders: bool = True) -> type[Message]:
    """`reports.export` at `version`, handled, with the upgrader from version 1 when asked."""
    cls: type[Message] = {1: ExportV1, 2: ExportV2}[version]
    app.message("reports.export", version=version)(cls)
    if version == 2 and upgraders:
        app.upgrade("reports.export", 1)(lambda payload: {**payload, "format": "pdf"})

    @app.handles(cls)
    async def export(msg: Message, ctx: Context) -> dict[str, Any]:
        return msg.model_dump()

    return cls


async def submit(web: httpx.AsyncClient) -> httpx.Response:
    return await web.post("/v1/jobs/reports.export", json={"period": "2026-10"})


async def test_without_a_live_worker_for_its_version_a_submission_is_503_and_enqueues_nothing(
    app: App, web: httpx.AsyncClient
) -> None:
    # Given the check is on and no worker runs
    declare(app, 1)
    # When a client submits a job
    response = await submit(web)
    # Then it is refused as a problem a client may retry, and nothing is stored
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "10"
    problem = response.json()
    assert problem["type"].endswith("/no-worker-for-version")
    assert problem["status"] == 503 and "reports.export version 1" in problem["detail"]
    assert (problem["kind"], problem["version"]) == ("reports.export", 1)
    assert await app.list_jobs(owner=None) == []


async def test_a_kind_a_live_worker_runs_is_accepted_and_a_stopped_one_is_refused_again(
    app: App, web: httpx.AsyncClient, start_worker: Callable[..., Any], clock: ShiftClock
) -> None:
    # Given a worker that runs the kind's version
    declare(app, 1)
    worker = await start_worker()
    # When a client submits a job, it is accepted and runs
    response = await submit(web)
    assert response.status_code == 202, response.text
    record = await Job(response.json()["id"], True, app).wait(15)
    assert record.state is JobState.SUCCEEDED
    # When that worker stops cleanly, the web tier refuses again (once the live versions it
    # read are older than their TTL)
    worker.request_stop()
    await worker.stopped.wait()
    clock.advance(LIVE_VERSIONS_TTL_S)
    assert (await submit(web)).status_code == 503


async def test_a_worker_started_after_a_refusal_is_seen_once_the_answer_is_stale(
    app: App, web: httpx.AsyncClient, start_worker: Callable[..., Any], clock: ShiftClock
) -> None:
    declare(app, 1)
    assert (await submit(web)).status_code == 503
    await start_worker()
    clock.advance(LIVE_VERSIONS_TTL_S)
    assert (await submit(web)).status_code == 202


async def test_a_worker_of_a_newer_version_that_upgrades_from_the_web_tiers_is_enough(
    app: App, settings: Settings, clock: ShiftClock, start_worker: Callable[..., Any]
) -> None:
    # Given workers deployed at version 2 with an upgrader from 1, and a web tier still at 1
    declare(app, 2)
    await start_worker()
    web_app = App("web", settings=settings.with_(require_worker_version=True), clock=clock)
    declare(web_app, 1)
    from offload.web import create_app

    api = create_app(web_app)
    async with api.router.lifespan_context(api):
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as web:
            # When the web tier submits version 1, it is accepted and runs, upgraded
            response = await submit(web)
            assert response.status_code == 202, response.text
            record = await Job(response.json()["id"], True, app).wait(15)
    assert record.state is JobState.SUCCEEDED
    assert record.result == {"period": "2026-10", "format": "pdf"}


async def test_the_check_is_off_by_default(settings: Settings) -> None:
    app = App("off", settings=settings)
    declare(app, 1)
    from offload.web import create_app

    api = create_app(app)
    async with api.router.lifespan_context(api):
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as web:
            assert (await submit(web)).status_code == 202  # it waits in its queue


async def _stored_at_v1_without_its_upgrader(app: App) -> Envelope:
    """The app's kind declared at version 2 without the upgrader from 1, and a job of it
    stored at version 1 (as the deploy before stored it)."""
    declare(app, 2, upgraders=False)
    stored = app.envelope(ExportV2(period="2026-10"))
    async with app:
        await app.submit(dataclasses.replace(stored, version=1, payload={"period": "2026-10"}))
    return stored


async def test_a_job_whose_upgrade_step_is_gone_fails_for_good_naming_the_step(
    app: App, start_worker: Callable[..., Any]
) -> None:
    # Given a job stored at version 1, and workers at version 2 without the upgrader from 1
    stored = await _stored_at_v1_without_its_upgrader(app)
    # When a worker claims it
    await start_worker()
    record = await Job(stored.id, True, app).wait(15)
    # Then it fails at once (no retry can help), and its error names the missing step
    assert record.state is JobState.FAILED and record.attempt == 1
    assert record.error is not None and record.error.type == "MissingUpgrader"
    assert "@app.upgrade('reports.export', 1)" in record.error.message


async def test_a_job_whose_upgrade_step_is_gone_waits_while_a_live_worker_still_reads_it(
    app: App, start_worker: Callable[..., Any]
) -> None:
    # Given a job stored at version 1, a worker at version 2 without the upgrader from 1,
    # and a live worker of the deploy before, which runs version 1 (still draining),
    stored = await _stored_at_v1_without_its_upgrader(app)
    async with app:
        old = worker_info("old-deploy", {"reports.export": [1]}, queues=("reports",))
        await app._require_backend().record_worker(old)
    # when the new worker claims it,
    await start_worker()
    # then it is given back unspent, for that worker, not failed.
    async with asyncio.timeout(PATIENCE_S):
        while (row := await app.get(stored.id)) is None or row.error is None:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    assert (row.state, row.attempt) == (JobState.QUEUED, 0)
    assert row.error == {
        "type": "NewerVersion",
        "message": "reports.export version 1 waits for a worker that still reads it (the worker "
        "that claimed it has no upgrader from 1)",
    }


def test_offload_queues_shows_the_jobs_waiting_for_a_newer_worker(settings: Settings) -> None:
    runner = CliRunner()
    url = settings.url
    app = App("cli", settings=settings)
    declare(app, 1)
    app.enqueue_sync(ExportV1(period="2026-10"))
    asyncio.run(app.close())
    listed = runner.invoke(cli, ["queues", "--url", url, "--json"])
    assert listed.exit_code == 0, listed.output
    assert '"awaiting_newer_worker": 0' in listed.output
    table = runner.invoke(cli, ["queues", "--url", url], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "for newer worker" in table.output
