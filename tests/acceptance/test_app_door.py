"""The App is the only door to the backend: the web tier and the command line call its
façade methods, and those answer what the routes answer (status codes, fields, headers)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from offload import App, Message, Settings
from offload.web import create_app

pytestmark = pytest.mark.anyio
TOKENS = {"alice": "tok-alice", "bob": "tok-bob"}
EMPTY = {"queued": 0, "scheduled": 0, "running": 0, "dead": 0, "oldest_age_s": 0.0}


class Report(Message):
    period: str


class Spare(Message):
    pass


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        url=f"sqlite:///{tmp_path / 'jobs.db'}",
        blobs_url=str(tmp_path / "blobs"),
        secret_key=b"test-secret",
        lease_s=2.0,
        api_tokens={token: principal for principal, token in TOKENS.items()},
    )


@pytest.fixture
def app(settings: Settings) -> App:
    app = App("door", settings=settings)
    app.message("t.report", queue="reports")(Report)
    app.message("t.spare", queue="spare")(Spare)
    return app


@pytest.fixture
async def clients(app: App) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    api = create_app(app)
    async with api.router.lifespan_context(api):
        transport = httpx.ASGITransport(app=api)
        out = {}
        for who, token in TOKENS.items():
            out[who] = httpx.AsyncClient(
                transport=transport,
                base_url="http://testserver",
                headers={"Authorization": f"Bearer {token}"},
            )
        try:
            yield out
        finally:
            for client in out.values():
                await client.aclose()


# -- the routes, pinned -------------------------------------------------------------------


async def test_submit_answers_202_with_location_and_the_status_record(
    app: App, clients: dict[str, httpx.AsyncClient]
) -> None:
    alice = clients["alice"]
    response = await alice.post(
        "/v1/jobs/t.report", json={"period": "2026-10"}, params={"priority": 3}
    )
    assert response.status_code == 202, response.text
    body = response.json()
    job_id = body["id"]
    assert response.headers["location"] == f"/v1/jobs/{job_id}"
    assert response.headers["retry-after"] == "1"
    assert "idempotent-replayed" not in response.headers
    assert body["state"] == "queued" and body["queue"] == "reports" and body["priority"] == 3
    # The answer is the status record as GET shows it (without the deliveries).
    shown = (await alice.get(f"/v1/jobs/{job_id}")).json()
    assert {k: v for k, v in shown.items() if k != "deliveries"} == body
    assert shown["deliveries"] == []


async def test_a_replayed_idempotency_key_answers_the_first_job_and_says_so(
    app: App, clients: dict[str, httpx.AsyncClient]
) -> None:
    alice, bob = clients["alice"], clients["bob"]
    key = {"Idempotency-Key": "k-1"}
    first = await alice.post("/v1/jobs/t.report", json={"period": "a"}, headers=key)
    again = await alice.post("/v1/jobs/t.report", json={"period": "b"}, headers=key)
    assert first.status_code == again.status_code == 202
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]
    assert again.json() == first.json()
    # The key is the caller's own: another principal's same key is another job.
    other = await bob.post("/v1/jobs/t.report", json={"period": "a"}, headers=key)
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
    assert "idempotent-replayed" not in other.headers


async def test_another_principals_job_is_404_on_every_job_route(
    app: App, clients: dict[str, httpx.AsyncClient]
) -> None:
    alice, bob = clients["alice"], clients["bob"]
    job_id = (await alice.post("/v1/jobs/t.report", json={"period": "p"})).json()["id"]
    for method, path in (
        ("GET", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/result"),
        ("GET", f"/v1/jobs/{job_id}/events"),
        ("DELETE", f"/v1/jobs/{job_id}"),
        ("GET", "/v1/jobs/no-such-job"),
    ):
        response = await bob.request(method, path)
        assert response.status_code == 404, (method, path)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"].endswith("job-not-found")
    assert (await alice.get(f"/v1/jobs/{job_id}")).status_code == 200


async def test_list_pages_the_callers_jobs_newest_first(
    app: App, clients: dict[str, httpx.AsyncClient]
) -> None:
    alice, bob = clients["alice"], clients["bob"]
    ids = [
        (await alice.post("/v1/jobs/t.report", json={"period": str(n)})).json()["id"]
        for n in range(3)
    ]
    await bob.post("/v1/jobs/t.report", json={"period": "bob"})
    first = await alice.get("/v1/jobs", params={"limit": 2, "kind": "t.report"})
    assert first.status_code == 200
    page = first.json()
    assert [r["id"] for r in page["items"]] == ids[::-1][:2]
    assert page["next"] == f"/v1/jobs?limit=2&kind=t.report&cursor={ids[1]}"
    assert first.headers["link"] == f'<{page["next"]}>; rel="next"'
    last = (await alice.get(page["next"])).json()
    assert [r["id"] for r in last["items"]] == [ids[0]] and last["next"] is None
    queued = (await alice.get("/v1/jobs", params={"state": "queued"})).json()
    assert len(queued["items"]) == 3
    assert (await alice.get("/v1/jobs", params={"state": "dead"})).json()["items"] == []


async def test_queues_lists_every_registered_queue_even_when_empty(
    app: App, clients: dict[str, httpx.AsyncClient]
) -> None:
    alice = clients["alice"]
    await alice.post("/v1/jobs/t.report", json={"period": "p"})
    stats = (await alice.get("/v1/queues")).json()["queues"]
    assert stats["spare"] == EMPTY
    assert stats["reports"]["queued"] == 1


async def test_cancel_answers_200_then_409_once_final(
    app: App, clients: dict[str, httpx.AsyncClient]
) -> None:
    alice = clients["alice"]
    job_id = (await alice.post("/v1/jobs/t.report", json={"period": "p"})).json()["id"]
    cancelled = await alice.delete(f"/v1/jobs/{job_id}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    again = await alice.delete(f"/v1/jobs/{job_id}")
    assert again.status_code == 409 and again.json()["type"].endswith("already-final")
    result = await alice.get(f"/v1/jobs/{job_id}/result")
    assert result.status_code == 409 and result.json()["job"]["state"] == "cancelled"


async def test_readyz_is_ready_while_the_backend_answers(
    app: App, clients: dict[str, httpx.AsyncClient]
) -> None:
    response = await clients["alice"].get("/readyz")
    assert response.status_code == 200 and response.json() == {"status": "ready"}
