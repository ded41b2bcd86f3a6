"""offload's API mounted in a user's own FastAPI app: opened by the host's lifespan or on
first use, every link under the mount path, and 503 (never 400) while the backend is down."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI, WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import offload.web
from offload import App, BackendError, Context, Message, Settings
from offload.web import create_app
from offload.web.runtime import runtime_of
from tests.web_clients import uvicorn_served

ROOT = "http://localhost"


class Export(Message):
    user_id: str


@pytest.fixture
def app(settings: Settings) -> App:
    app = App("embedded", settings=settings)
    app.message("reports.export", queue="reports")(Export)

    @app.handles(Export)
    async def export(msg: Export, ctx: Context) -> dict[str, Any]:
        ref = await ctx.blobs.put(f"exports/{ctx.job_id}.txt", f"report for {msg.user_id}".encode())
        return {"file": ref}

    return app


def host_app(jobs: App, *, with_lifespan: bool) -> FastAPI:
    """A user's application: a route of its own, and offload's API mounted under /jobs."""
    api = FastAPI()
    if with_lifespan:

        @contextlib.asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            async with offload.web.lifespan(jobs):  # the host's own start-up would go here
                yield

        api = FastAPI(lifespan=lifespan)
    api.mount("/jobs", create_app(jobs))

    @api.get("/")
    async def home() -> dict[str, str]:
        return {"app": "host"}

    return api


def client(api: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url=ROOT)


async def read_events(c: httpx.AsyncClient, url: str) -> list[tuple[str, dict[str, Any]]]:
    """A finished server-sent event stream: (event, data) pairs."""
    response = await c.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = []
    for block in response.text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            events.append((fields["event"], orjson.loads(fields["data"])))
    return events


def assert_links_under_jobs(record: dict[str, Any]) -> None:
    job_id = record["id"]
    assert record["links"] == {
        "self": f"/jobs/v1/jobs/{job_id}",
        "events": f"/jobs/v1/jobs/{job_id}/events",
        "result": f"/jobs/v1/jobs/{job_id}/result",
    }


@pytest.mark.anyio
async def test_mounted_under_jobs_the_whole_loop_stays_under_the_mount_path(
    app: App, start_worker: Callable[..., Any]
) -> None:
    api = host_app(app, with_lifespan=True)
    async with api.router.lifespan_context(api), client(api) as c:
        assert (await c.get("/")).json() == {"app": "host"}
        await start_worker()

        # Given the API mounted at /jobs, a submission answers 202 with a Location there.
        submitted = await c.post("/jobs/v1/jobs/reports.export", json={"user_id": "u1"})
        assert submitted.status_code == 202, submitted.text
        record = submitted.json()
        assert submitted.headers["location"] == f"/jobs/v1/jobs/{record['id']}"
        assert_links_under_jobs(record)

        # When the client polls and follows the events the record links to,
        polled = await c.get(submitted.headers["location"])
        assert polled.status_code == 200
        assert_links_under_jobs(polled.json())
        events = await read_events(c, record["links"]["events"])
        assert events[-1][0] == "succeeded"
        for _, data in events:
            assert_links_under_jobs(data)

        # Then the result is a 303 to a signed link under /jobs that downloads the file.
        result = await c.get(record["links"]["result"])
        assert result.status_code == 303
        link = result.headers["location"]
        assert link.startswith(f"/jobs/files/exports/{record['id']}.txt?")
        download = await c.get(link)
        assert download.status_code == 200 and download.text == "report for u1"
        assert (await c.get(link.removeprefix("/jobs"))).status_code == 404  # the host's

        # And a refusal names the path as the client sent it, the body limit's too.
        path = "/jobs/v1/jobs/reports.export"
        too_big = await c.post(path, json={"user_id": "u" * (2 << 20)})
        assert too_big.status_code == 413 and too_big.json()["instance"] == path
        missing = await c.get("/jobs/v1/jobs/0193a1c2-0000-7000-8000-000000000000")
        assert missing.status_code == 404
        assert missing.json()["instance"] == "/jobs/v1/jobs/0193a1c2-0000-7000-8000-000000000000"


@pytest.mark.anyio
async def test_mounted_pages_tickets_and_signed_results_carry_the_mount_path(app: App) -> None:
    api = host_app(app, with_lifespan=True)
    async with api.router.lifespan_context(api), client(api) as c:
        for n in range(2):
            await c.post("/jobs/v1/jobs/reports.export", json={"user_id": f"u{n}"})
        page = await c.get("/jobs/v1/jobs", params={"limit": 1})
        assert page.json()["next"].startswith("/jobs/v1/jobs?limit=1&cursor=")
        assert page.headers["link"] == f'<{page.json()["next"]}>; rel="next"'
        assert_links_under_jobs(page.json()["items"][0])
        following = await c.get(page.json()["next"])
        assert len(following.json()["items"]) == 1

        ticket = (await c.post("/jobs/v1/ws-ticket")).json()
        assert ticket["websocket"].startswith("/jobs/v1/ws?ticket=")
        assert ticket["events"].startswith("/jobs/v1/events?ticket=")

        docs = await c.get("/jobs/docs")
        assert "'/jobs/openapi.json'" in docs.text
        schema = (await c.get("/jobs/openapi.json")).json()
        assert (
            schema["servers"] == [{"url": "/jobs"}] and "/v1/jobs/reports.export" in schema["paths"]
        )


@pytest.mark.anyio
async def test_the_host_lifespan_opens_the_backend_and_closes_it_at_shutdown(app: App) -> None:
    api = host_app(app, with_lifespan=True)
    async with api.router.lifespan_context(api):
        assert app._backend is not None  # open before any request
        async with client(api) as c:
            assert (await c.get("/jobs/readyz")).status_code == 200
    assert app._backend is None and app._users == 0


def test_without_a_lifespan_it_opens_on_first_use_and_closes_when_the_loop_ends(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a host that mounts the API and never runs its lifespan (a mounted app's never
    # runs), as a server does: one event loop until shutdown.
    api = host_app(app, with_lifespan=False)

    async def serve(requests: Callable[[httpx.AsyncClient], Any]) -> Any:
        async with client(api) as c:
            return await requests(c)

    async def submit(c: httpx.AsyncClient) -> httpx.Response:
        return await c.post("/jobs/v1/jobs/reports.export", json={"user_id": "u1"})

    # When the first request comes, the web tier opens the backend and answers as usual;
    submitted = asyncio.run(serve(submit))
    assert submitted.status_code == 202, submitted.text
    assert submitted.headers["location"].startswith("/jobs/v1/jobs/")
    # Then the end of the loop closes it (no task or connection left behind),
    assert app._backend is None and app._users == 0
    assert runtime_of(app)._hub is None

    async def follow(c: httpx.AsyncClient) -> tuple[int, int]:
        shown = await c.get(submitted.headers["location"])
        ready = await c.get("/jobs/readyz")
        return shown.status_code, ready.status_code

    # and a server started again opens it again.
    assert asyncio.run(serve(follow)) == (200, 200)
    assert app._backend is None
    leftovers = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert leftovers == []


#: `api` served by uvicorn on a loopback port (yielded): WebSockets over a real socket.
served = uvicorn_served


async def refusal(url: str) -> tuple[int, str | None, bytes]:
    """The status, type and body of the HTTP answer that refused a WebSocket handshake."""
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url):
            pass
    answer = refused.value.response
    return answer.status_code, answer.headers.get("content-type"), bytes(answer.body or b"")


@pytest.mark.anyio
async def test_mounted_a_websocket_at_a_path_without_one_is_its_404_the_hosts_are_its_own(
    app: App,
) -> None:
    # Given a host with a WebSocket of its own and the API mounted at /jobs,
    api = host_app(app, with_lifespan=True)

    @api.websocket("/live")
    async def live(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("host")
        await websocket.close()

    async with served(api) as port:
        base = f"ws://127.0.0.1:{port}"
        # When a handshake goes to a path under the mount that has no WebSocket, it is the
        # mounted API's 404 problem document, naming the path as the client sent it;
        status, media_type, body = await refusal(f"{base}/jobs/nope")
        assert (status, media_type) == (404, "application/problem+json")
        assert orjson.loads(body)["instance"] == "/jobs/nope"
        # Then the API's own WebSocket and the host's are accepted,
        async with connect(f"{base}/jobs/v1/ws") as ws:
            assert orjson.loads(await ws.recv())["type"] == "hello"
        async with connect(f"{base}/live") as ws:
            assert await ws.recv() == "host"
        # and a path outside the mount is the host's to answer (Starlette's: a bare 403).
        assert (await refusal(f"{base}/nope"))[0] == 403


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once closed


@pytest.fixture
def down(settings: Settings) -> App:
    """An App whose backend does not answer: a Redis URL on a port nothing listens on."""
    pytest.importorskip("redis")
    url = f"redis://127.0.0.1:{closed_port()}/0"
    app = App("down", settings=settings.with_(url=url))
    app.message("reports.export", queue="reports")(Export)
    return app


@pytest.mark.anyio
async def test_while_the_backend_is_unreachable_every_route_answers_503_problems(
    down: App,
) -> None:
    api = host_app(down, with_lifespan=False)
    async with client(api) as c:
        requests = [
            ("POST", "/jobs/v1/jobs/reports.export"),
            ("GET", "/jobs/v1/jobs/0193a1c2"),
            ("GET", "/jobs/v1/jobs/0193a1c2/result"),
            ("GET", "/jobs/v1/jobs/0193a1c2/events"),
            ("DELETE", "/jobs/v1/jobs/0193a1c2"),
            ("GET", "/jobs/v1/jobs"),
            ("GET", "/jobs/v1/queues"),
            ("GET", "/jobs/v1/kinds"),
            ("GET", "/jobs/v1/events"),
            ("POST", "/jobs/v1/ws-ticket"),
            ("GET", "/jobs/readyz"),
        ]
        for method, path in requests:
            body = {"user_id": "u1"} if method == "POST" else None
            answer = await c.request(method, path, json=body)
            assert answer.status_code == 503, (path, answer.text)
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.headers["retry-after"] == "5", path
            assert answer.json()["status"] == 503
        assert (await c.get("/jobs/healthz")).status_code == 200  # liveness: the process
        assert (await c.get("/")).json() == {"app": "host"}  # the host is not affected


@pytest.mark.anyio
async def test_readiness_logs_why_the_backend_is_unreachable_once_not_at_every_probe(
    down: App, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="offload.web")
    async with client(host_app(down, with_lifespan=False)) as c:
        for _ in range(3):  # a monitor polling while the backend is down
            assert (await c.get("/jobs/readyz")).status_code == 503
    said = [r for r in caplog.records if getattr(r, "action", None) == "not_ready"]
    assert [r.levelno for r in said] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert "127.0.0.1" in said[0].getMessage()  # the reason, for the operator


@pytest.mark.anyio
async def test_with_the_host_lifespan_an_unreachable_backend_fails_the_start(down: App) -> None:
    api = host_app(down, with_lifespan=True)
    with pytest.raises(BackendError):
        async with api.router.lifespan_context(api):
            pass  # pragma: no cover


@pytest.mark.anyio
async def test_a_backend_that_cannot_be_used_is_a_server_error_never_a_400(
    settings: Settings,
) -> None:
    broken = App("broken", settings=settings.with_(url="nosuchdb://somewhere"))
    broken.message("reports.export")(Export)
    async with client(host_app(broken, with_lifespan=False)) as c:
        answer = await c.get("/jobs/v1/jobs")
        assert answer.status_code == 500
        assert answer.headers["content-type"] == "application/problem+json"
