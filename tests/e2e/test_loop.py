"""The whole loop over real HTTP: `offload web` and `offload worker` as separate processes."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson

from offload import App, Settings

from .conftest import Stack


def read_events(
    client: httpx.Client, url: str, headers: dict[str, str] | None = None
) -> list[tuple[int, str, dict[str, Any]]]:
    """Read a server-sent event stream to its end: (id, event, data) triples."""
    events: list[tuple[int, str, dict[str, Any]]] = []
    fields: dict[str, str] = {}
    with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line == "":
                if "data" in fields:
                    events.append(
                        (int(fields["id"]), fields["event"], orjson.loads(fields["data"]))
                    )
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
    return events


def job_count(stack: Stack) -> int:
    """Every job in the backend, whoever owns it (read through the store, not the API)."""
    app = App("counter", settings=Settings(url=stack.env["OFFLOAD_URL"]))

    async def count() -> int:
        async with app:
            return len(await app.list_jobs(owner=None, limit=10_000))

    return asyncio.run(count())


def test_submit_follow_and_fetch_result_over_http(stack: Stack) -> None:
    stack.start_web()
    stack.start_worker("--concurrency", "4")
    alice = stack.client("alice")

    # Given a valid export request, the web tier answers at once with 202 and a Location.
    response = alice.post("/v1/jobs/e2e.export", json={"user_id": "u1", "steps": 3})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert response.headers["location"] == f"/v1/jobs/{job_id}"
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["state"] == "queued"

    # When the client follows the job's events, it sees progress and then success.
    events = read_events(alice, f"/v1/jobs/{job_id}/events")
    states = [name for _, name, _ in events]
    assert states[0] == "queued" and states[-1] == "succeeded"
    assert "running" in states
    fractions = [d["progress"]["fraction"] for _, _, d in events if d["progress"]]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert [i for i, _, _ in events] == sorted(i for i, _, _ in events)

    # Then the result redirects to a signed link that serves the file.
    result = alice.get(f"/v1/jobs/{job_id}/result")
    assert result.status_code == 303
    link = result.headers["location"]
    anonymous = stack.client("alice")
    anonymous.headers.pop("Authorization")
    download = anonymous.get(link)
    assert download.status_code == 200 and download.text == "report for u1"
    tampered = anonymous.get(link.replace("signature=", "signature=x"))
    assert tampered.status_code == 403
    assert tampered.headers["content-type"] == "application/problem+json"

    # And a client that reconnects with Last-Event-ID gets only what came after it.
    resumed = read_events(
        alice, f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": str(events[1][0])}
    )
    assert [e[0] for e in resumed] == [e[0] for e in events[2:]]

    record = alice.get(f"/v1/jobs/{job_id}").json()
    assert record["state"] == "succeeded" and record["attempt"] == 1
    assert record["result"]["steps"] == 3
    assert record["result"]["file"].startswith("/files/exports/")


def test_other_principals_see_nothing(stack: Stack) -> None:
    stack.start_web()
    alice, bob = stack.client("alice"), stack.client("bob")
    job_id = alice.post("/v1/jobs/e2e.slow", json={"seconds": 0}).json()["id"]

    for method, path in [("GET", ""), ("GET", "/events"), ("GET", "/result"), ("DELETE", "")]:
        response = bob.request(method, f"/v1/jobs/{job_id}{path}")
        assert response.status_code == 404, (method, path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    assert bob.get("/v1/jobs").json()["items"] == []
    assert [j["id"] for j in alice.get("/v1/jobs").json()["items"]] == [job_id]

    nobody = stack.client("alice")
    nobody.headers.pop("Authorization")
    anonymous = nobody.get(f"/v1/jobs/{job_id}")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    wrong = nobody.get("/v1/jobs", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401


def test_rejected_requests_enqueue_nothing(stack: Stack) -> None:
    stack.start_web()
    alice = stack.client("alice")
    before = job_count(stack)

    invalid = alice.post("/v1/jobs/e2e.export", json={"user_id": "", "steps": 999})
    assert invalid.status_code == 422
    problem = invalid.json()
    assert invalid.headers["content-type"] == "application/problem+json"
    assert problem["status"] == 422 and problem["title"] and problem["type"]
    assert {tuple(e["loc"]) for e in problem["errors"]} == {("user_id",), ("steps",)}

    not_json = alice.post(
        "/v1/jobs/e2e.export", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 422
    extra = alice.post("/v1/jobs/e2e.export", json={"user_id": "u", "admin": True})
    assert extra.status_code == 422
    bad_option = alice.post("/v1/jobs/e2e.export?priority=abc", json={"user_id": "u"})
    assert bad_option.status_code == 422
    both = alice.post(
        "/v1/jobs/e2e.export?delay=5&run_at=2030-01-01T00:00:00Z", json={"user_id": "u"}
    )
    assert both.status_code == 422

    unknown = alice.post("/v1/jobs/no.such.kind", json={})
    assert unknown.status_code == 404
    assert unknown.json()["type"].endswith("/unknown-kind")

    too_big = alice.post("/v1/jobs/e2e.export", json={"user_id": "u" * 10_000})
    assert too_big.status_code == 413
    assert too_big.headers["content-type"] == "application/problem+json"
    assert too_big.json()["instance"] == "/v1/jobs/e2e.export"

    assert job_count(stack) == before == 0


def test_idempotency_key_returns_the_first_job(stack: Stack) -> None:
    stack.start_web()
    alice, bob = stack.client("alice"), stack.client("bob")
    headers = {"Idempotency-Key": "order-42"}
    first = alice.post("/v1/jobs/e2e.slow", json={"seconds": 0.1}, headers=headers)
    again = alice.post("/v1/jobs/e2e.slow", json={"seconds": 0.1}, headers=headers)
    other = bob.post("/v1/jobs/e2e.slow", json={"seconds": 0}, headers=headers)
    assert first.status_code == again.status_code == other.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert other.json()["id"] != first.json()["id"]
    # The key with another body is no repeat (the first's read back from the engine): 409
    changed = alice.post("/v1/jobs/e2e.slow", json={"seconds": 0.2}, headers=headers)
    assert changed.status_code == 409 and changed.json()["type"].endswith("/idempotency-key-reused")
    assert job_count(stack) == 2


def test_cancel_a_queued_job_and_list_queues(stack: Stack) -> None:
    stack.start_web()
    alice = stack.client("alice")
    job_id = alice.post("/v1/jobs/e2e.slow?delay=60", json={"seconds": 0}).json()["id"]
    queues = alice.get("/v1/queues").json()["queues"]
    assert queues["slow"]["scheduled"] == 1
    cancelled = alice.delete(f"/v1/jobs/{job_id}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    again = alice.delete(f"/v1/jobs/{job_id}")
    assert again.status_code == 409
    not_done = alice.get(f"/v1/jobs/{job_id}/result")
    assert not_done.status_code == 409 and not_done.json()["job"]["state"] == "cancelled"
    listed = alice.get("/v1/jobs", params={"state": "cancelled"}).json()["items"]
    assert [j["id"] for j in listed] == [job_id]


def test_web_process_never_imports_handlers(stack: Stack) -> None:
    web = stack.start_web()
    worker = stack.start_worker()
    alice = stack.client("alice")
    job_id = alice.post("/v1/jobs/e2e.slow", json={"seconds": 0}).json()["id"]
    stack.wait_state(alice, job_id, {"succeeded"})
    importers = {int(line.split()[0]) for line in stack.log_lines("imports.log")}
    assert worker.pid in importers
    assert web.pid not in importers
