"""Unique jobs through the App and the HTTP API: a repeat returns the job holding the key
(Python: `created=False, unique_repeat=True`; HTTP: 200 with its status record and
Location), per owner, first wins in a batch, and the key is free again once the job ran."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest

from offload import App, ConfigurationError, Context, FromPrincipal, JobState, Message, Settings
from offload.web import create_app
from tests.web_clients import clients_of

from .test_openapi import Declared

pytestmark = pytest.mark.anyio
TOKENS = {"alice": "tok-alice", "bob": "tok-bob"}


class Export(Message):
    user_id: Annotated[str, FromPrincipal()]
    period: str
    format: str = "pdf"


class Digest(Message):
    team: str


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        url=f"sqlite:///{tmp_path / 'jobs.db'}",
        blobs_url=str(tmp_path / "blobs"),
        secret_key=b"test-secret-of-32-bytes-or-more!",
        api_tokens={token: principal for principal, token in TOKENS.items()},
        lease_s=2.0,
    )


@pytest.fixture
def app(settings: Settings) -> App:
    app = App("unique", settings=settings)
    app.message("t.export", unique="queued", unique_key=("user_id", "period"))(Export)
    app.message("t.digest", unique="active")(Digest)
    return app


@pytest.fixture
async def clients(app: App) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    async with clients_of(app, TOKENS) as out:
        yield out


# -- Python ---------------------------------------------------------------------------------


async def test_a_repeat_returns_the_waiting_job(app: App) -> None:
    async with app:
        # Given an export of u1's October waiting
        first = await app.enqueue(Export(user_id="u1", period="2026-10"))
        # When the same export is enqueued again, in another format (not part of the key)
        again = await app.enqueue(Export(user_id="u1", period="2026-10", format="csv"))
        # Then it is the first job, not created, and said to be a unique repeat
        assert (again.id, again.created, again.unique_repeat) == (first.id, False, True)
        assert first.created and not first.unique_repeat
        assert "unique_repeat=True" in repr(again)
        # While another period, or the same one for another owner, is a new job
        other = await app.enqueue(Export(user_id="u1", period="2026-11"))
        theirs = await app.enqueue(Export(user_id="u1", period="2026-10"), owner="bob")
        assert other.created and theirs.created
        assert len({first.id, other.id, theirs.id}) == 3


async def test_the_whole_payload_is_the_key_by_default(app: App) -> None:
    async with app:
        first = await app.enqueue(Digest(team="a"))
        assert (await app.enqueue(Digest(team="a"))).id == first.id
        assert (await app.enqueue(Digest(team="b"))).created


async def test_a_batch_repeating_a_key_stores_its_first_job(app: App) -> None:
    async with app:
        jobs = await app.enqueue_many(
            [
                Export(user_id="u1", period="2026-10"),
                Export(user_id="u1", period="2026-10", format="csv"),
                Export(user_id="u2", period="2026-10"),
            ]
        )
        assert [j.created for j in jobs] == [True, False, True]
        assert jobs[1].id == jobs[0].id and jobs[1].unique_repeat
        rows = await app.list_jobs(owner=None)
        assert sorted(r.id for r in rows) == sorted({jobs[0].id, jobs[2].id})
        assert next(r for r in rows if r.id == jobs[0].id).payload["format"] == "pdf"


async def test_an_active_key_is_held_while_the_job_runs_and_freed_when_it_ends(
    app: App, start_worker: Callable[..., Any]
) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    @app.handles(Digest)
    async def digest(msg: Digest, ctx: Context) -> None:
        started.set()
        await release.wait()

    # Given a digest running in a worker
    first = await app.enqueue(Digest(team="a"))
    await start_worker(concurrency=1)
    await asyncio.wait_for(started.wait(), 30)
    # Then a repeat while it runs is that job
    again = await app.enqueue(Digest(team="a"))
    assert (again.id, again.created) == (first.id, False)
    # And once it succeeded, the next enqueue is a new job
    release.set()
    assert (await first.wait(timeout=60)).state is JobState.SUCCEEDED
    later = await app.enqueue(Digest(team="a"))
    assert later.created and later.id != first.id


async def test_a_queued_key_is_freed_as_soon_as_a_worker_starts_the_job(
    app: App, start_worker: Callable[..., Any]
) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    @app.handles(Export)
    async def export(msg: Export, ctx: Context) -> None:
        started.set()
        await release.wait()

    first = await app.enqueue(Export(user_id="u1", period="2026-10"))
    await start_worker(concurrency=1)
    await asyncio.wait_for(started.wait(), 30)
    # A repeat while the first runs is a new job: the first may have read stale data
    second = await app.enqueue(Export(user_id="u1", period="2026-10"))
    assert second.created and second.id != first.id
    # And a third one, while the second waits, is the second
    third = await app.enqueue(Export(user_id="u1", period="2026-10"))
    assert (third.id, third.unique_repeat) == (second.id, True)
    release.set()
    assert (await second.wait(timeout=60)).state is JobState.SUCCEEDED


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"unique": "queued", "unique_key": ("user", "period")}, "does not have: user"),
        ({"unique_key": ("period",)}, "needs unique="),
        ({"unique": "forever"}, "'queued' or 'active'"),
        ({"unique": "queued", "unique_key": "period"}, "tuple of field names"),
        ({"unique": "queued", "unique_key": ()}, "names no field"),
    ],
)
def test_a_bad_unique_declaration_is_refused(
    settings: Settings, options: dict[str, Any], error: str
) -> None:
    app = App("bad", settings=settings)
    with pytest.raises(ConfigurationError, match=error):
        app.message("t.export", **options)(Export)


# -- HTTP -----------------------------------------------------------------------------------


async def test_http_repeat_answers_200_with_the_waiting_job_and_its_location(
    app: App, clients: dict[str, httpx.AsyncClient]
) -> None:
    alice = clients["alice"]
    declared = Declared((await alice.get("/openapi.json")).json())
    # Given alice's export submitted (202)
    first = await alice.post("/v1/jobs/t.export", json={"period": "2026-10"})
    assert first.status_code == 202, first.text
    declared.check("/v1/jobs/t.export", "POST", first)
    # When she submits it again
    again = await alice.post("/v1/jobs/t.export", json={"period": "2026-10", "format": "csv"})
    # Then the answer is 200, the first job's status record and Location
    assert again.status_code == 200, again.text
    declared.check("/v1/jobs/t.export", "POST", again)
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert "idempotent-replayed" not in again.headers
    assert (await alice.get(again.headers["location"])).json()["id"] == first.json()["id"]
    # While bob's same export is his own new job
    bobs = await clients["bob"].post("/v1/jobs/t.export", json={"period": "2026-10"})
    assert bobs.status_code == 202 and bobs.json()["id"] != first.json()["id"]
    assert len(await app.list_jobs(owner=None)) == 2


async def test_http_idempotency_key_replays_before_the_unique_key_answers(
    clients: dict[str, httpx.AsyncClient],
) -> None:
    alice = clients["alice"]
    headers = {"Idempotency-Key": "req-1"}
    first = await alice.post("/v1/jobs/t.digest", json={"team": "a"}, headers=headers)
    replay = await alice.post("/v1/jobs/t.digest", json={"team": "a"}, headers=headers)
    other = await alice.post("/v1/jobs/t.digest", json={"team": "a"})
    assert (first.status_code, replay.status_code, other.status_code) == (202, 202, 200)
    assert replay.headers["idempotent-replayed"] == "true"
    assert first.json()["id"] == replay.json()["id"] == other.json()["id"]


def test_the_openapi_document_declares_the_200_of_a_unique_repeat(app: App) -> None:
    document = create_app(app).openapi()
    answers = document["paths"]["/v1/jobs/t.export"]["post"]["responses"]
    assert "unique key" in answers["200"]["description"]
    assert "Location" in answers["200"]["headers"]
    assert (
        answers["200"]["content"]["application/json"]["schema"]
        == answers["202"]["content"]["application/json"]["schema"]
    )


async def test_the_kinds_list_says_which_kinds_are_unique_and_by_what(
    clients: dict[str, httpx.AsyncClient],
) -> None:
    answer = await clients["alice"].get("/v1/kinds")
    Declared((await clients["alice"].get("/openapi.json")).json()).check("/v1/kinds", "GET", answer)
    kinds = {k["kind"]: k for k in answer.json()["kinds"]}
    assert kinds["t.export"]["unique"] == {"mode": "queued", "key": ["user_id", "period"]}
    assert kinds["t.digest"]["unique"] == {"mode": "active", "key": []}
