"""`Depends(offload_jobs)` in a host's own FastAPI route: the caller's principal by the
mounted web tier's rules (tokens, an auth hook, development mode and its cross-site
refusal), 202 answers pointing at the mounted status API, and problem documents for the
host's errors once `problem_details` is installed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from offload import App, ConfigurationError, Message, Settings
from offload.contract import JobFilter
from offload.web import (
    Jobs,
    OffloadJobs,
    create_app,
    offload_jobs,
    problem_details,
    problem_responses,
)

pytestmark = pytest.mark.anyio


class Export(Message):
    user: str
    period: str


def host(app: App, *, problems: bool = True, **web: Any) -> FastAPI:
    """A user's app: its own submit route, offload's API mounted at /jobs."""
    api = FastAPI()
    api.mount("/jobs", create_app(app, **web))
    if problems:
        problem_details(api)

    @api.post("/exports", status_code=202)
    async def export(period: str, jobs: Annotated[Jobs, Depends(offload_jobs)]) -> Response:
        job = await jobs.enqueue(Export(user=jobs.principal, period=period))
        return await jobs.accepted(job)

    @api.get("/whoami")
    async def whoami(jobs: Annotated[Jobs, Depends(offload_jobs)]) -> dict[str, str]:
        return {"principal": jobs.principal, "root": jobs.root}

    return api


@pytest.fixture
def app(settings: Settings) -> App:
    app = App("host", settings=settings)
    app.message("t.export")(Export)
    return app


@pytest.fixture
async def closing(app: App) -> AsyncIterator[None]:
    yield
    await app.close()


def client(
    api: FastAPI,
    token: str | None = None,
    *,
    raising: bool = False,
    headers: dict[str, str] | None = None,
) -> httpx.AsyncClient:
    headers = dict(headers or {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=raising)
    return httpx.AsyncClient(transport=transport, base_url="http://localhost", headers=headers)


async def test_the_route_enqueues_as_the_token_holder_and_points_at_the_status_api(
    settings: Settings, closing: None
) -> None:
    app = App("host", settings=replace(settings, api_tokens={"t-a": "alice"}))
    app.message("t.export")(Export)
    api = host(app)
    async with client(api, "t-a") as alice, client(api) as nobody:
        answer = await alice.post("/exports", params={"period": "2026-10"})
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        assert answer.headers["location"] == f"/jobs/v1/jobs/{job_id}"
        assert (await alice.get(answer.headers["location"])).json()["state"] == "queued"
        assert (await app.get(job_id, owner="alice")) is not None
        # Its body is what offload's own submit route answers, field for field.
        own = await alice.post("/jobs/v1/jobs/t.export", json={"user": "a", "period": "2026-11"})
        assert own.status_code == 202, own.text
        assert list(answer.json()) == list(own.json())
        refused = await nobody.post("/exports", params={"period": "2026-10"})
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.headers["www-authenticate"].startswith("Bearer")
        invalid = await alice.post("/exports")  # no period: the host's own validation
        assert invalid.status_code == 422 and invalid.json()["errors"]
    await app.close()


async def test_an_auth_hook_names_the_principal_and_cross_site_writes_are_refused(
    app: App, closing: None
) -> None:
    def signed_in(request: Request) -> str | None:
        return request.headers.get("x-user")

    api = host(app, auth=signed_in)
    async with client(api, headers={"x-user": "carol"}) as carol:
        assert (await carol.get("/whoami")).json() == {"principal": "carol", "root": "/jobs"}
        forged = await carol.post(
            "/exports", params={"period": "x"}, headers={"Origin": "https://evil.example"}
        )
        assert forged.status_code == 403 and forged.json()["type"].endswith("cross-site-request")
        assert await app.count_jobs(JobFilter()) == 0
    async with client(api) as nobody:
        assert (await nobody.get("/whoami")).status_code == 401


async def test_without_problem_details_a_refusal_keeps_its_status_and_headers(
    settings: Settings, closing: None
) -> None:
    app = App("host", settings=replace(settings, api_tokens={"t-a": "alice"}))
    app.message("t.export")(Export)
    async with client(host(app, problems=False)) as nobody:
        refused = await nobody.get("/whoami")
        assert refused.status_code == 401 and "www-authenticate" in refused.headers
    await app.close()


async def test_the_web_tier_is_named_where_several_are_mounted(app: App, closing: None) -> None:
    web = create_app(app)
    api = FastAPI()
    api.mount("/a", create_app(app))
    api.mount("/b", web)

    @api.get("/ambiguous")
    async def ambiguous(jobs: Annotated[Jobs, Depends(offload_jobs)]) -> str:
        return jobs.root

    chosen = Depends(OffloadJobs(web))  # a local: Annotated[…] cannot name it here

    @api.get("/named")
    async def named(jobs: Jobs = chosen) -> str:
        return jobs.root

    async with client(api) as local:
        assert (await local.get("/named")).json() == "/b"
    async with client(api, raising=True) as local:  # the app's error, raised here
        with pytest.raises(ConfigurationError, match="one offload web tier"):
            await local.get("/ambiguous")


async def test_a_route_of_an_app_mounted_beside_the_web_tier_finds_it(
    app: App, closing: None
) -> None:
    # Given offload's API at /jobs and a versioned sub-app of the host's at /v2, whose
    # routes ask for offload_jobs (the request's app is the sub-app, not the host),
    web = create_app(app)
    api = FastAPI()
    api.mount("/jobs", web)
    v2 = FastAPI()
    chosen = Depends(OffloadJobs(web))

    @v2.get("/named")
    async def named(jobs: Jobs = chosen) -> str:
        return jobs.location("j1")

    @v2.post("/exports", status_code=202)
    async def export(jobs: Annotated[Jobs, Depends(offload_jobs)]) -> Response:
        return await jobs.accepted(await jobs.enqueue(Export(user=jobs.principal, period="p")))

    api.mount("/v2", v2)
    # then each finds the one mounted in the host, its links where clients reach it,
    async with client(api) as local:
        assert (await local.get("/v2/named")).json() == "/jobs/v1/jobs/j1"
        answer = await local.post("/v2/exports")
        assert answer.status_code == 202, answer.text
        assert (await local.get(answer.headers["location"])).json()["state"] == "queued"
    # under the server's own root path too (behind a proxy at /api),
    transport = httpx.ASGITransport(app=api, root_path="/api")
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as proxied:
        assert (await proxied.get("/api/v2/named")).json() == "/api/jobs/v1/jobs/j1"
    # and a sub-app beside two web tiers still has to name one.
    api.mount("/more", create_app(app))
    async with client(api, raising=True) as local:
        assert (await local.get("/v2/named")).json() == "/jobs/v1/jobs/j1"
        with pytest.raises(ConfigurationError, match="one offload web tier"):
            await local.post("/v2/exports")


async def test_a_route_of_the_host_finds_the_web_tier_inside_an_app_it_mounted(
    app: App, closing: None
) -> None:
    # Given offload's API mounted inside a sub-app of the host's (/ops/jobs),
    ops = FastAPI()
    ops.mount("/jobs", create_app(app))
    api = FastAPI()
    api.mount("/ops", ops)

    @api.get("/where")
    async def where(jobs: Annotated[Jobs, Depends(offload_jobs)]) -> str:
        return jobs.location("j1")

    # then a route of the host finds it there.
    async with client(api) as local:
        assert (await local.get("/where")).json() == "/ops/jobs/v1/jobs/j1"


async def test_a_refusal_of_the_dependency_goes_to_the_hosts_handler_of_fastapi_errors(
    settings: Settings, closing: None
) -> None:
    # Given a host that formats every fastapi.HTTPException of its own routes its way,
    app = App("host", settings=replace(settings, api_tokens={"t-a": "alice"}))
    app.message("t.export")(Export)
    api = host(app, problems=False)

    @api.exception_handler(HTTPException)
    async def own_format(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    # then the dependency's refusal is one of them, and comes in that format.
    async with client(api) as nobody:
        refused = await nobody.get("/whoami")
        assert refused.status_code == 401
        assert refused.json() == {"error": "a valid bearer token is required"}
    await app.close()


async def test_a_token_limited_to_other_kinds_may_not_enqueue_through_the_route(
    settings: Settings, closing: None
) -> None:
    limited = replace(
        settings,
        api_tokens={"t-a": "alice", "t-r": "robot"},
        token_kinds={"t-r": frozenset({"t.other"})},
    )
    app = App("host", settings=limited)
    app.message("t.export")(Export)
    api = host(app)
    async with client(api, "t-r") as robot, client(api, "t-a") as alice:
        refused = await robot.post("/exports", params={"period": "2026-10"})
        assert refused.status_code == 403, refused.text
        assert refused.json()["type"].endswith("kind-not-allowed")
        assert await app.count_jobs(JobFilter()) == 0
        assert (await alice.post("/exports", params={"period": "2026-10"})).status_code == 202
    await app.close()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("callback_url", "notaurl"),
        ("callback_url", "http://127.0.0.1/hook"),  # judged, not sent: a private host
        ("notify_email", "nope"),
        ("notify_email", "root,postmaster,a@example.com"),  # a list: one address only
    ],
)
async def test_delivery_options_the_route_passes_on_are_refused_as_the_api_refuses_them(
    app: App, closing: None, option: str, value: str
) -> None:
    """A host route handing its client's callback_url or notify_email to `jobs.enqueue`:
    what the submit route answers 422 to is 422 there too (not a 500), and stores nothing."""
    api = FastAPI()
    api.mount("/jobs", create_app(app))
    problem_details(api)

    @api.post("/exports", status_code=202)
    async def export(
        jobs: Annotated[Jobs, Depends(offload_jobs)],
        callback_url: str | None = None,
        notify_email: str | None = None,
    ) -> Response:
        message = Export(user=jobs.principal, period="2026-10")
        job = await jobs.enqueue(message, callback_url=callback_url, notify_email=notify_email)
        return await jobs.accepted(job)

    async with client(api) as local:
        refused = await local.post("/exports", params={option: value})
        assert refused.status_code == 422, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"].endswith("invalid-options")
        assert [e["loc"] for e in refused.json()["errors"]] == [[option]]
        # The detail says why too (a host without problem_details shows it alone).
        assert refused.json()["detail"].startswith(f"invalid job options ({option}: ")
        assert await app.count_jobs(JobFilter()) == 0
        fine = {"callback_url": "https://hooks.example.com/done", "notify_email": "a@example.com"}
        accepted = await local.post("/exports", params={option: fine[option]})
        assert accepted.status_code == 202, accepted.text


async def test_a_repeat_is_answered_as_the_submit_route_answers_it(app: App, closing: None) -> None:
    """A job an idempotency key named again: `Idempotent-Replayed`; the job a unique key
    named: `200`, without `Retry-After`, as offload's own submit route answers."""

    class Nightly(Message):
        user: str

    app.message("t.nightly", unique="queued")(Nightly)
    api = FastAPI()
    api.mount("/jobs", create_app(app))

    @api.post("/exports", status_code=202)
    async def export(
        jobs: Annotated[Jobs, Depends(offload_jobs)], key: str, period: str = "p"
    ) -> Response:
        job = await jobs.enqueue(Export(user=jobs.principal, period=period), idempotency_key=key)
        return await jobs.accepted(job)

    @api.post("/nightly", status_code=202)
    async def nightly(jobs: Annotated[Jobs, Depends(offload_jobs)]) -> Response:
        return await jobs.accepted(await jobs.enqueue(Nightly(user=jobs.principal)))

    async with client(api) as local:
        first, again = [await local.post("/exports", params={"key": "k1"}) for _ in range(2)]
        assert (first.status_code, again.status_code) == (202, 202)
        assert "idempotent-replayed" not in first.headers
        assert again.headers["idempotent-replayed"] == "true" and "retry-after" in again.headers
        assert again.json()["id"] == first.json()["id"]
        # (the key sent with another message is no repeat: a 409, as the submit route's)
        other = await local.post("/exports", params={"key": "k1", "period": "q"})
        assert other.status_code == 409, other.text
        assert "a repeat must send the same body" in other.json()["detail"]
        first, again = [await local.post("/nightly") for _ in range(2)]
        assert (first.status_code, again.status_code) == (202, 200)
        assert "retry-after" in first.headers and "retry-after" not in again.headers
        assert "idempotent-replayed" not in again.headers
        assert again.json()["id"] == first.json()["id"]
        assert again.headers["location"] == first.headers["location"]


@pytest.mark.parametrize("period", ["a\x00b", "nan", "big"])
async def test_a_message_no_engine_stores_is_a_422_from_the_route_too(
    app: App, closing: None, period: str
) -> None:
    """A host route's message holding a NUL, a NaN or an integer past 64 bits: the submit
    route's 422, not a 500."""

    class Odd(Message):
        text: str
        ratio: float = 0.0
        n: int = 0

    app.message("t.odd")(Odd)
    api = FastAPI()
    api.mount("/jobs", create_app(app))
    problem_details(api)
    odd = {"nan": Odd(text="x", ratio=float("nan")), "big": Odd(text="x", n=2**64)}

    @api.post("/odd", status_code=202)
    async def submit(jobs: Annotated[Jobs, Depends(offload_jobs)]) -> Response:
        return await jobs.accepted(await jobs.enqueue(odd.get(period, Odd(text=period))))

    async with client(api) as local:
        refused = await local.post("/odd")
        assert refused.status_code == 422, refused.text
        assert refused.json()["type"].endswith("invalid-payload")
        assert refused.json()["detail"].startswith("a t.odd message ")
    assert await app.count_jobs(JobFilter()) == 0


def test_the_hosts_document_declares_its_problem_answers_as_problem_documents() -> None:
    api = FastAPI()
    problem_details(api)

    @api.post("/exports", status_code=202, responses=problem_responses(401, 422, 503))
    async def export(period: str) -> None: ...

    @api.get("/own", responses={404: {"description": "the host's own, in its own format"}})
    async def own() -> None: ...

    @api.get("/page", response_class=HTMLResponse, responses=problem_responses(404))
    async def page() -> str: ...

    answers = api.openapi()["paths"]["/exports"]["post"]["responses"]
    for status in ("401", "422", "503"):
        assert list(answers[status]["content"]) == ["application/problem+json"], status
    assert answers["401"]["content"]["application/problem+json"]["schema"] == {
        "$ref": "#/components/schemas/Problem"
    }
    assert "examples" in answers["503"]["content"]["application/problem+json"]
    assert list(answers["202"]["content"]) == ["application/json"]
    html = api.openapi()["paths"]["/page"]["get"]["responses"]
    assert list(html["404"]["content"]) == ["application/problem+json"]
    assert list(html["200"]["content"]) == ["text/html"]
    assert api.openapi()["paths"]["/own"]["get"]["responses"]["404"] == {
        "description": "the host's own, in its own format"
    }
