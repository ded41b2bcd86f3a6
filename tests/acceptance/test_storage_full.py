"""A database that may not grow (`PRAGMA max_page_count`): the storage-full answers in process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from offload import App, Context, JobFilter, JobState, Message, Settings
from offload.brokers.sqlite import SQLiteBackend
from offload.web.runtime import runtime_of

from ..sqlite_support import sqlite_file

pytestmark = pytest.mark.anyio
STORAGE_FULL = "https://offload.dev/problems/storage-full"


class Note(Message):
    text: str


@pytest.fixture
def app(settings: Settings) -> App:
    app = App("full", settings=settings)
    app.message("t.note", queue="notes")(Note)

    @app.handles(Note)
    async def note(msg: Note, ctx: Context) -> str:
        return msg.text

    return app


async def _limit_pages(backend: SQLiteBackend, pages: int | None) -> None:
    """Let the database grow to `pages` pages at most (None: its present size)."""

    def limit() -> None:
        n = pages or backend.conn.execute("PRAGMA page_count").fetchone()[0]
        backend.conn.execute(f"PRAGMA max_page_count = {n}")

    await backend._run(limit)


async def test_a_database_that_cannot_grow_answers_storage_full_until_it_can(
    app: App, web: httpx.AsyncClient, start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    backend = app._require_backend()
    assert isinstance(backend, SQLiteBackend)
    accepted = []
    # Given a database held at its present size,
    await _limit_pages(backend, None)
    # when clients submit until it is full,
    for _ in range(2000):
        answer = await web.post("/v1/jobs/t.note", json={"text": "x" * 500})
        if answer.status_code != 202:
            break
        accepted.append(answer.json()["id"])
    # then, once the free room in its pages is spent, the refusal is the storage-full
    # problem, and readiness says the same
    assert accepted, "nothing fitted before the database was full"
    assert answer.status_code == 503 and answer.json()["type"] == STORAGE_FULL, answer.text
    ready = await web.get("/readyz")
    assert ready.status_code == 503 and ready.json()["type"] == STORAGE_FULL
    assert (await web.get("/readyz")).status_code == 503  # it probes again: still full
    # Reading works meanwhile: the job list, and the check an event stream or a WebSocket
    # makes before it answers (a read of the feed, no write probe), so they still open.
    assert (await web.get("/v1/jobs")).status_code == 200
    await runtime_of(app).answering()
    # When the database may grow again, readiness comes back with the next probe,
    await _limit_pages(backend, 1 << 30)
    assert (await web.get("/readyz")).status_code == 200
    late = await web.post("/v1/jobs/t.note", json={"text": "late"})
    assert late.status_code == 202
    # and every job accepted runs.
    await start_worker()
    ids = [*accepted, late.json()["id"]]
    deadline = asyncio.get_running_loop().time() + 60
    while await app.count_jobs(JobFilter(state="succeeded")) < len(ids):
        assert asyncio.get_running_loop().time() < deadline, "the accepted jobs did not run"
        await asyncio.sleep(0.05)
    for job_id in ids:
        row = await app.get(job_id)
        assert row is not None and row.state is JobState.SUCCEEDED
    with sqlite_file(tmp_path / "jobs.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
