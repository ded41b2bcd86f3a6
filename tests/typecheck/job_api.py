"""Checked by mypy (see `files` in pyproject.toml), never run: the typed Python API turns a
misspelt or wrongly typed enqueue option, or a status read as a dict, into a type error.

Every `# type: ignore[...]` below marks a mistake mypy must report; under `--strict` an
ignore that silences nothing is itself an error, so each line proves its mistake is caught.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import assert_type

from offload import App, Job, JobState, JobStatus, Message

app = App("typecheck")


class Ping(Message):
    n: int


async def well_typed() -> None:
    job = await app.enqueue(
        Ping(n=1),
        priority=1,
        delay=timedelta(seconds=5),
        idempotency_key="k",
        callback_url="https://example.com/hook",
        notify_email="ops@example.com",
        owner="alice",
    )
    assert_type(job, Job)
    await app.enqueue(Ping(n=1), delay=2.5)
    await app.enqueue(Ping(n=1), run_at=datetime.now(UTC))
    assert_type(await app.enqueue_many([Ping(n=1)], priority=2), list[Job])
    status = await job.status()
    assert_type(status, JobStatus)
    assert_type(status.state, JobState)
    assert_type(status.created_at, datetime)
    assert_type(await job.wait(timeout=timedelta(seconds=30)), JobStatus)
    assert_type(job.unique_repeat, bool)
    assert_type(await app.job(job.id), Job | None)


def well_typed_sync() -> None:
    job = app.enqueue_sync(Ping(n=1), priority=1)
    assert_type(job.status_sync(), JobStatus)
    assert_type(job.wait_sync(timeout=10), JobStatus)
    assert_type(app.job_sync(job.id, owner="u1"), Job | None)


async def mistakes() -> None:
    await app.enqueue(Ping(n=1), priorty=1)  # type: ignore[call-arg]
    await app.enqueue(Ping(n=1), priority="high")  # type: ignore[arg-type]
    await app.enqueue(Ping(n=1), delay="5s")  # type: ignore[arg-type]
    await app.enqueue_many([Ping(n=1)], run_at="tomorrow")  # type: ignore[arg-type]
    app.enqueue_sync(Ping(n=1), owner=42)  # type: ignore[arg-type]
    app.enqueue_sync(Ping(n=1), callback="https://example.com")  # type: ignore[call-arg]
    status = await (await app.enqueue(Ping(n=1))).status()
    status["state"]  # type: ignore[index]


class Once(Message):
    user_id: str


app.message("once", unique="active", unique_key=("user_id",))(Once)
app.message("twice", unique="sometimes")(Ping)  # type: ignore[arg-type]
