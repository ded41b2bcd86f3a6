"""The typed Python API: enqueue options are checked, and a Job answers with a JobStatus,
waits with a JobTimeout, and serves synchronous code."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from offload import (
    App,
    Context,
    JobNotFound,
    JobState,
    JobStatus,
    JobTimeout,
    Message,
    OffloadError,
)
from offload.contract import status_record

pytestmark = pytest.mark.anyio


class Export(Message):
    period: str


async def test_status_is_a_typed_job_status(app: App) -> None:
    app.message("t.export", queue="reports")(Export)
    job = await app.enqueue(Export(period="2026-10"), priority=4, owner="alice")
    status = await job.status()
    assert isinstance(status, JobStatus)
    assert status.id == job.id and status.kind == "t.export" and status.queue == "reports"
    assert status.state is JobState.QUEUED and not status.state.final
    assert status.priority == 4 and status.attempt == 0 and status.max_attempts == 5
    assert status.progress is None and status.result is None and status.error is None
    assert status.created_at.tzinfo is not None and status.started_at is None
    assert status.deliveries == []
    # The same record the web tier and the CLI show, typed.
    assert status.model_dump(mode="json") | {"created_at": None, "run_at": None} == (
        await app.status(job.id)
    ) | {"created_at": None, "run_at": None}
    await app.close()


async def test_a_new_job_carries_its_handlers_budget_where_the_app_knows_it(app: App) -> None:
    app.message("t.export", max_attempts=4)(Export)
    assert (await (await app.enqueue(Export(period="a"))).status()).max_attempts == 4

    @app.handles(Export, max_attempts=2)
    async def export(msg: Export, ctx: Context) -> None:
        return None

    # Before any worker claims it, the job says the budget its handler will apply.
    assert (await (await app.enqueue(Export(period="b"))).status()).max_attempts == 2
    await app.close()


async def test_wait_returns_the_final_status_with_result_progress_and_times(
    app: App, start_worker: Callable[..., Any]
) -> None:
    app.message("t.export")(Export)

    @app.handles(Export)
    async def export(msg: Export, ctx: Context) -> dict[str, str]:
        await ctx.progress(1.0, "done")
        return {"period": msg.period}

    await start_worker()
    job = await app.enqueue(Export(period="2026-10"))
    status = await job.wait(timedelta(seconds=15))
    assert status.state is JobState.SUCCEEDED and status.result == {"period": "2026-10"}
    assert status.progress is not None and status.progress.fraction == 1.0
    assert status.progress.message == "done"
    assert status.started_at is not None and status.finished_at is not None
    assert status.created_at <= status.started_at <= status.finished_at
    assert status.worker is not None


async def test_a_failed_job_carries_its_error(app: App, start_worker: Callable[..., Any]) -> None:
    app.message("t.export", max_attempts=1)(Export)

    @app.handles(Export)
    async def export(msg: Export, ctx: Context) -> None:
        raise RuntimeError("no data for " + msg.period)

    await start_worker()
    job = await app.enqueue(Export(period="1999-01"))
    status = await job.wait(15)
    assert status.state is JobState.DEAD and status.error is not None
    assert status.error.type == "RuntimeError" and status.error.message == "no data for 1999-01"


async def test_wait_raises_job_timeout_naming_the_job(app: App) -> None:
    app.message("t.export")(Export)
    job = await app.enqueue(Export(period="2026-10"))  # no worker: it never finishes
    with pytest.raises(JobTimeout) as info:
        await job.wait(timeout=0.05)
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, OffloadError)
    assert job.id in str(info.value) and "t.export" in str(info.value)
    assert "queued" in str(info.value)
    assert info.value.job_id == job.id and info.value.state is JobState.QUEUED
    await app.close()


async def test_status_of_a_deleted_job_is_job_not_found(app: App) -> None:
    app.message("t.export", queue="gone")(Export)
    job = await app.enqueue(Export(period="2026-10"))
    assert await app.purge("gone") == 1
    with pytest.raises(JobNotFound):
        await job.status()
    with pytest.raises(JobNotFound):
        await job.wait(5)
    await app.close()


def test_status_sync_and_wait_sync_serve_plain_code(app: App) -> None:
    app.message("t.export")(Export)
    job = app.enqueue_sync(Export(period="2026-10"), delay=timedelta(hours=1))
    status = job.status_sync()
    assert isinstance(status, JobStatus) and status.state is JobState.QUEUED
    assert status.run_at > status.created_at + timedelta(minutes=59)
    with pytest.raises(JobTimeout):
        job.wait_sync(timeout=0.05)

    async def cancel_then_close() -> JobStatus:
        await app.cancel(job.id)
        # The Job of enqueue_sync belongs to the caller's App: it works in async code too.
        status = await job.status()
        await app.close()
        return status

    assert asyncio.run(cancel_then_close()).state is JobState.CANCELLED
    assert job.wait_sync(timeout=5).state is JobState.CANCELLED
    asyncio.run(app.close())


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("priority", "high"),
        ("priority", 1.5),
        ("priority", True),
        ("delay", "5s"),
        ("run_at", "2030-01-01T00:00:00Z"),
        ("idempotency_key", 7),
        ("callback_url", b"https://example.com"),
        ("notify_email", ["a@example.com"]),
        ("owner", None),
    ],
)
async def test_a_wrongly_typed_option_is_a_type_error_naming_it(
    app: App, option: str, value: Any
) -> None:
    app.message("t.export")(Export)
    with pytest.raises(TypeError, match=f"^{option} must be"):
        await app.enqueue(Export(period="p"), **{option: value})
    with pytest.raises(TypeError, match=f"^{option} must be"):
        await app.enqueue_many([Export(period="p")], **{option: value})
    with pytest.raises(TypeError, match=f"^{option} must be"):
        await asyncio.to_thread(app.enqueue_sync, Export(period="p"), **{option: value})
    assert await app.list_jobs(owner=None) == []
    await app.close()


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"priority": 1001}, "priority must be from -1000 to 1000"),
        ({"priority": -5000}, "priority must be from -1000 to 1000"),
        ({"delay": float("nan")}, "delay must be a finite number"),
        ({"delay": float("inf")}, "delay must be a finite number"),
        ({"delay": 5, "run_at": datetime.now(UTC)}, "give delay or run_at, not both"),
        ({"owner": "user:1\n"}, "owner must be printable text with no white space around"),
        ({"owner": " bob"}, "owner must be printable text with no white space around"),
        ({"owner": "b" * 256}, "owner is 256 characters: it may have at most 255"),
    ],
)
async def test_an_option_the_api_refuses_is_refused_from_python_too(
    app: App, options: dict[str, Any], said: str
) -> None:
    app.message("t.export")(Export)
    with pytest.raises(ValueError, match=said):
        await app.enqueue(Export(period="p"), **options)
    with pytest.raises(ValueError, match=said):
        await asyncio.to_thread(app.enqueue_sync, Export(period="p"), **options)
    assert await app.list_jobs(owner=None) == []
    await app.close()


async def test_an_envelope_checks_its_owner_and_key_as_an_enqueue_does(app: App) -> None:
    # `app.submit` stores the envelope it is given: Django's task backend made one of a
    # request's user, and PostgreSQL failed one of a few thousand characters.
    app.message("t.export")(Export)
    for options in (
        {"owner": "b" * 256},
        {"owner": " bob"},
        {"idempotency_key": "k" * 256},
        {"priority": 5000},
    ):
        with pytest.raises(ValueError):
            app.envelope(Export(period="p"), **options)  # type: ignore[arg-type]
    for wrong in ({"owner": 5}, {"idempotency_key": 5}, {"priority": True}):
        with pytest.raises(TypeError):
            app.envelope(Export(period="p"), **wrong)  # type: ignore[arg-type]
    assert app.envelope(Export(period="p"), owner="b" * 255).owner == "b" * 255
    await app.close()


async def test_listing_by_a_state_no_job_is_in_is_refused(app: App) -> None:
    # A misspelt state found no job, as if there were none: JobFilter refused it already.
    with pytest.raises(ValueError, match="'daed' is not a valid JobState"):
        await app.list_jobs(owner=None, state="daed")
    with pytest.raises(ValueError, match="'daed' is not a valid JobState"):
        await asyncio.to_thread(app.list_jobs_sync, owner=None, state="daed")
    assert await app.list_jobs(owner=None, state="dead") == []
    await app.close()


async def test_an_empty_owner_is_refused_from_python_too(app: App) -> None:
    # No caller of the API is one: its jobs would be no one's. (A scheduled job's handler
    # passes ctx.owner on, offload.periodic: that one stays allowed from code.)
    owner, said = "", "owner must not be empty"
    app.message("t.export")(Export)
    with pytest.raises(ValueError, match=said):
        await app.enqueue(Export(period="p"), owner=owner)
    with pytest.raises(ValueError, match=said):
        await app.enqueue_many([Export(period="p")], owner=owner, priority=1)
    with pytest.raises(ValueError, match=said):
        await asyncio.to_thread(app.enqueue_sync, Export(period="p"), owner=owner)
    assert await app.list_jobs(owner=None) == []
    child = await app.enqueue(Export(period="p"), owner="offload.periodic")  # a tick's child
    assert child.created
    await app.close()


async def test_well_typed_options_are_applied(app: App) -> None:
    app.message("t.export")(Export)
    when = datetime.now(UTC) + timedelta(hours=2)
    job = await app.enqueue(
        Export(period="p"), priority=-3, run_at=when, idempotency_key="k", owner="bob"
    )
    row = await app.get(job.id)
    assert row is not None and row.priority == -3 and row.owner == "bob"
    assert row.idempotency_key == "k" and abs(row.run_at - when.timestamp()) < 0.01
    delayed = await app.enqueue(Export(period="q"), delay=2)  # an int is a number of seconds
    assert (await delayed.status()).run_at > (await delayed.status()).created_at
    await app.close()


async def test_repr_shows_id_and_kind(app: App) -> None:
    app.message("t.export")(Export)
    job = await app.enqueue(Export(period="p"))
    assert repr(job) == f"Job(id={job.id!r}, kind='t.export', created=True)"
    await app.close()


def test_job_status_has_every_field_of_the_status_record() -> None:
    from offload.contract import JobRow

    row = JobRow(
        id="j",
        kind="k",
        version=1,
        queue="q",
        state=JobState.QUEUED,
        priority=0,
        attempt=0,
        max_attempts=1,
        run_at=0.0,
        enqueued_at=0.0,
        owner="o",
    )
    assert set(JobStatus.model_fields) == {*status_record(row), "deliveries"}
