"""Periodic schedules as operators see them: `offload schedules` (table and --json) and
`GET /v1/schedules` (admins only; everyone else finds nothing: 404), each showing how a
schedule ticks, its next run, its last run and that run's job with its state."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from typer.testing import CliRunner, Result

from offload import App, Message, Settings
from offload.cli import cli
from offload.clock import iso
from offload.web import create_app, lifespan
from offload.web.models import Schedules
from offload.worker.scheduler import Scheduler

#: The App the CLI loads with `--app` (this module, imported by name).
APP_REF = f"{__name__}:app"
app = App("schedules-cli")
TOKENS = {"t-ops": "ops", "t-bob": "bob"}


@app.message("ops.digest", queue="digests")
class Digest(Message):
    team: str = "all"


app.periodic(Digest(), every=timedelta(seconds=60), name="digest")
app.periodic(Digest(team="paris"), cron="0 7 * * mon-fri", tz="Europe/Paris")
CRON_NAME = "ops.digest@0 7 * * mon-fri Europe/Paris"


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return orjson.loads(result.output)


async def _fire(url: str) -> float:
    """One scheduler pass over this module's schedules (as a worker makes it) on `url`,
    started two minutes ago: the current tick of `digest` is due. Returns that tick."""
    app.configure(Settings(url=url))
    async with app:
        now = app.clock.now()
        assert await Scheduler(app, since=now - 120).fire_due() == 1
    return now // 60 * 60


def test_offload_schedules_lists_each_schedule_with_its_last_run(workdir: Path) -> None:
    url = f"sqlite:///{workdir / 'jobs.db'}"
    assert invoke("migrate", "--url", url).exit_code == 0
    # Given no scheduler ran yet: both are listed, never run, with their next run
    before = {
        e["name"]: e for e in as_json(invoke("schedules", "--app", APP_REF, "--url", url, "--json"))
    }
    assert sorted(before) == sorted(["digest", CRON_NAME])
    assert before["digest"]["last_run"] is None and before["digest"]["last_job_id"] is None
    next_run = datetime.fromisoformat(before["digest"]["next_run"]).timestamp()
    assert next_run % 60 == 0 and time.time() - 60 < next_run <= time.time() + 60
    assert (before[CRON_NAME]["cron"], before[CRON_NAME]["tz"]) == (
        "0 7 * * mon-fri",
        "Europe/Paris",
    )
    # When a worker's scheduler stores the tick of `digest`
    tick = asyncio.run(_fire(url))
    # Then its last run is that tick, with its job, still queued
    after = {
        e["name"]: e for e in as_json(invoke("schedules", "--app", APP_REF, "--url", url, "--json"))
    }
    digest = after["digest"]
    assert digest["last_run"] == iso(tick)
    assert digest["last_job_state"] == "queued" and digest["declared"] is True
    assert digest["missed_since"] is None  # its next tick is not yet due
    table = invoke("schedules", "--app", APP_REF, "--url", url)
    assert table.exit_code == 0, table.output
    assert "every 60s" in table.output and "0 7 * * mon-fri (Europe/Paris)" in table.output
    assert digest["last_job_id"] in table.output and "queued" in table.output
    # And without the app, the stored schedule still shows (as stored), the other does not
    (stored,) = as_json(invoke("schedules", "--url", url, "--json"))
    assert stored["name"] == "digest" and stored["declared"] is False
    assert stored["every_s"] == 60.0 and stored["last_job_id"] == digest["last_job_id"]
    assert "(not declared here)" in invoke("schedules", "--url", url).output


def test_offload_schedules_says_when_there_are_none(workdir: Path) -> None:
    url = f"sqlite:///{workdir / 'jobs.db'}"
    assert invoke("migrate", "--url", url).exit_code == 0
    assert invoke("schedules", "--url", url).output.strip() == "no schedules"


def _client(api: Any, **headers: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=api)
    return httpx.AsyncClient(transport=transport, base_url="http://localhost", headers=headers)


@pytest.mark.anyio
async def test_an_admin_gets_the_schedules_and_others_find_nothing(settings: Settings) -> None:
    tick = await _fire(settings.url)
    app.configure(settings.with_(api_tokens=TOKENS, admin_principals=frozenset({"ops"})))
    async with lifespan(app):
        api = create_app(app)
        async with _client(api, authorization="Bearer t-ops") as ops:
            answer = await ops.get("/v1/schedules")
            assert answer.status_code == 200, answer.text
            body = Schedules.model_validate(answer.json())
            by_name = {s.name: s for s in body.schedules}
            assert by_name["digest"].last_run is not None
            assert by_name["digest"].last_run.timestamp() == tick
            assert by_name["digest"].last_job_state == "queued"
            assert by_name[CRON_NAME].last_run is None and by_name[CRON_NAME].next_run
            assert answer.json() == {"schedules": await app.list_schedules()}
        for headers in ({"authorization": "Bearer t-bob"}, {}):
            async with _client(api, **headers) as caller:
                refused = await caller.get("/v1/schedules")
                assert refused.status_code == 404
                assert refused.headers["content-type"] == "application/problem+json"


@pytest.mark.anyio
async def test_the_dashboard_overview_lists_the_schedules(settings: Settings) -> None:
    await _fire(settings.url)
    app.configure(settings.with_(api_tokens=TOKENS, admin_principals=frozenset({"ops"})))
    async with lifespan(app):
        async with _client(create_app(app), authorization="Bearer t-ops") as ops:
            answer = await ops.get("/dashboard")
            assert answer.status_code == 200, answer.text
            (digest,) = [s for s in await app.list_schedules() if s["name"] == "digest"]
    html = answer.text
    row = html[html.index('<tr data-schedule="digest"') :]
    row = row[: row.index("</tr>")]
    assert "every 60s" in row and digest["last_run"] in row and digest["next_run"] in row
    assert f'/jobs/{digest["last_job_id"]}"' in row and "queued" in row
    assert f'<tr data-schedule="{CRON_NAME}"' in html and "0 7 * * mon-fri (Europe/Paris)" in html


@pytest.mark.anyio
async def test_a_schedule_a_running_worker_declares_is_listed_before_its_first_tick(
    settings: Settings,
) -> None:
    from offload.worker.runner import Worker

    # Given a worker running this module's schedules, none of which has ticked yet (the
    # weekday one waits for 07:00 in Paris),
    app.configure(settings)
    async with app:
        worker = Worker(app, concurrency=1, queues=["digests"])  # (this app has no handlers)
        task = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(worker.started.wait(), 10)
            # an operator's listing without the worker's module (the web tier's, the CLI's
            # without --app) shows it, declared by a live worker, never run, with its next run;
            bare = App("schedules-bare")
            bare.configure(settings)
            async with bare:
                listed = {e["name"]: e for e in await bare.list_schedules()}
        finally:
            worker.request_stop()
            await asyncio.wait_for(task, 30)
        cron = listed[CRON_NAME]
        assert cron["declared"] is False and cron["last_run"] is None
        assert (cron["cron"], cron["tz"]) == ("0 7 * * mon-fri", "Europe/Paris")
        assert cron["next_run"] is not None and cron["missed_since"] is None
        # and once the worker has stopped, a schedule that never ticked is gone from it.
        async with App("schedules-bare-after", settings=settings) as after:
            assert CRON_NAME not in {e["name"] for e in await after.list_schedules()}
