"""The operators' view over HTTP: `GET /v1/workers` shows the worker registry to admins only
(everyone else, signed in or not, finds nothing there: 404), and `GET /v1/queues` says which
queues are paused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import HTTPException, Request

from offload import App, Context, Message, Settings
from offload.web import Admin, create_app, lifespan
from offload.web.models import Queues, Workers
from offload.worker.runner import Worker

pytestmark = pytest.mark.anyio
ROOT = "http://localhost"
PATIENCE_S = 20.0
TOKENS = {"t-ops": "ops", "t-bob": "bob"}


class Ping(Message):
    n: int


def _app(settings: Settings, **changes: Any) -> App:
    app = App("operators", settings=settings.with_(**changes))
    app.message("ops.ping", queue="pings")(Ping)

    @app.handles(Ping)
    async def ping(msg: Ping, ctx: Context) -> int:
        return msg.n

    return app


def client(api: Any, **headers: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=api)
    return httpx.AsyncClient(transport=transport, base_url=ROOT, headers=headers)


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.started.wait(), PATIENCE_S)
        yield worker
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 30)


async def assert_absent(caller: httpx.AsyncClient, path: str, method: str = "GET") -> None:
    """`path` answers as a path that does not exist: the same 404 problem document."""
    answer = await caller.request(method, path)
    nowhere = await caller.request(method, "/v1/no-such-path")
    assert answer.status_code == nowhere.status_code == 404, (method, path, answer.text)
    assert answer.headers["content-type"] == "application/problem+json"
    assert "allow" not in answer.headers and "location" not in answer.headers
    if method == "HEAD":  # no body to compare
        return
    body, expected = answer.json(), nowhere.json()
    assert (body.pop("instance"), expected.pop("instance")) == (path, "/v1/no-such-path")
    assert body == expected


async def test_an_admin_sees_the_running_worker_and_others_find_nothing(
    settings: Settings,
) -> None:
    app = _app(settings, api_tokens=TOKENS, admin_principals=frozenset({"ops"}))
    async with lifespan(app), running(Worker(app, concurrency=3)) as worker:
        api = create_app(app)
        async with client(api, authorization="Bearer t-ops") as ops:
            # Given a running worker, when an admin asks for the registry
            answer = await ops.get("/v1/workers")
            # Then it is there, as the document declares it and as the app reads it
            assert answer.status_code == 200, answer.text
            body = Workers.model_validate(answer.json())
            (entry,) = body.workers
            assert (entry.id, entry.concurrency, entry.lost) == (worker.id, 3, False)
            assert entry.queues == ["pings", "offload.notify"]
            assert entry.kinds == {"ops.ping": [1]}
            # (a heartbeat may land between the two reads: it is only ever later)
            (served,) = answer.json()["workers"]
            (read,) = [w.to_dict() for w in await app.workers()]
            assert served.pop("heartbeat_at") <= read.pop("heartbeat_at")
            assert served == read
        # When a signed-in non-admin, a wrong token or nobody asks, there is nothing there
        async with client(api, authorization="Bearer t-bob") as bob:
            await assert_absent(bob, "/v1/workers")
        async with client(api, authorization="Bearer wrong") as stranger:
            await assert_absent(stranger, "/v1/workers")
        async with client(api) as anonymous:
            await assert_absent(anonymous, "/v1/workers")


async def test_the_operators_routes_tell_no_one_else_they_exist_by_any_method_or_slash(
    settings: Settings,
) -> None:
    app = _app(
        settings, api_tokens=TOKENS, admin_principals=frozenset({"ops"}), metrics_token="t-scrape"
    )
    api = create_app(app)
    paths = ("/v1/workers", "/v1/schedules", "/metrics")
    async with lifespan(app):
        # Given a signed-in non-admin and a caller with no token, whatever method they use
        # on an operators' route, or with a slash too many, there is nothing there (it was
        # a 405 naming GET, and a 307 to the route);
        async with client(api, authorization="Bearer t-bob") as bob, client(api) as nobody:
            for caller in (bob, nobody):
                for path in paths:
                    for method in ("POST", "DELETE", "HEAD"):
                        await assert_absent(caller, path, method)
                    await assert_absent(caller, path + "/")
        # The metrics token is told of /metrics alone,
        async with client(api, authorization="Bearer t-scrape") as scraper:
            answer = await scraper.post("/metrics")
            assert answer.status_code == 405 and answer.headers["allow"] == "GET"
            for path in paths[:2]:
                await assert_absent(scraper, path, "POST")
        # while an admin is told which method each route answers.
        async with client(api, authorization="Bearer t-ops") as ops:
            for path in paths:
                answer = await ops.post(path)
                assert answer.status_code == 405 and answer.headers["allow"] == "GET", path


async def test_an_auth_hooks_own_401_is_answered_whatever_the_method(settings: Settings) -> None:
    app = _app(settings)

    def hook(request: Request) -> str | None:
        raise HTTPException(401, "sign in first", headers={"WWW-Authenticate": 'Basic realm="x"'})

    async with lifespan(app), client(create_app(app, auth=hook)) as caller:
        for method in ("GET", "POST"):
            answer = await caller.request(method, "/v1/workers")
            assert answer.status_code == 401, (method, answer.text)
            assert answer.headers["www-authenticate"] == 'Basic realm="x"'
            assert answer.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("answer", "admin"), [(Admin("carol"), True), ("carol", False), (None, False)]
)
async def test_an_auth_hook_makes_admins_by_answering_admin(
    settings: Settings, answer: str | None, admin: bool
) -> None:
    app = _app(settings)

    def hook(request: Request) -> str | None:
        return answer

    async with lifespan(app), client(create_app(app, auth=hook)) as caller:
        if admin:
            got = await caller.get("/v1/workers")
            assert got.status_code == 200 and got.json() == {"workers": []}
        else:
            await assert_absent(caller, "/v1/workers")


async def test_in_development_mode_the_local_caller_is_an_admin(settings: Settings) -> None:
    app = _app(settings)
    async with lifespan(app), client(create_app(app)) as local:
        assert (await local.get("/v1/workers")).json() == {"workers": []}


async def test_queues_show_which_are_paused_an_empty_paused_one_included(
    settings: Settings,
) -> None:
    app = _app(settings, api_tokens=TOKENS)
    async with lifespan(app), client(create_app(app), authorization="Bearer t-bob") as bob:
        await app.enqueue(Ping(n=1))
        await app.pause("pings")
        await app.pause("quiet")

        async def queues() -> dict[str, Any]:
            answer = await bob.get("/v1/queues")
            assert answer.status_code == 200, answer.text
            body: dict[str, Any] = Queues.model_validate(answer.json()).model_dump()["queues"]
            return body

        shown = await queues()
        assert (shown["pings"]["queued"], shown["pings"]["paused"]) == (1, True)
        assert (shown["quiet"]["queued"], shown["quiet"]["paused"]) == (0, True)
        await app.resume("pings")
        await app.resume("quiet")
        shown = await queues()
        assert shown["pings"]["paused"] is False and "quiet" not in shown


def test_the_document_declares_the_registry_for_operators_and_its_404(settings: Settings) -> None:
    document = create_app(_app(settings, api_tokens=TOKENS)).openapi()
    operation = document["paths"]["/v1/workers"]["get"]
    # A bearer token of an admin; anyone else (without a token too) is answered 404
    assert operation["security"] == [{"bearer": []}, {}]
    assert set(operation["responses"]) == {"200", "401", "404", "408", "413", "431", "500", "503"}
    answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/Workers"}
    queue = document["components"]["schemas"]["QueueStats"]
    assert queue["properties"]["paused"]["type"] == "boolean" and "paused" in queue["required"]
