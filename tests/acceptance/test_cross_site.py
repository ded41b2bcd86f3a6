"""Requests a browser cannot forge: `POST /v1/jobs/{kind}` takes JSON only (a page on
another site can send text/plain or a form without a CORS preflight), and development mode,
where every caller is `local` without credentials, refuses cross-site writes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from offload import App, Message, Settings
from offload.web import create_app
from offload.web.origins import cross_site_reason, loopback_host
from tests.web_clients import uvicorn_served

pytestmark = pytest.mark.anyio
BASE = "http://localhost"
EVIL = "https://evil.example"


class Task(Message):
    name: str


def make_app(tmp_path: Path, tokens: dict[str, str] | None = None) -> App:
    settings = Settings(
        url=f"sqlite:///{tmp_path / 'jobs.db'}",
        blobs_url=str(tmp_path / "blobs"),
        secret_key=b"test-secret-of-32-bytes-or-more!",
        api_tokens=tokens or {},
    )
    app = App("cross-site", settings=settings)
    app.message("t.task")(Task)
    return app


@pytest.fixture
def app(tmp_path: Path) -> App:
    return make_app(tmp_path)  # development mode: no tokens, every caller is `local`


@contextlib.asynccontextmanager
async def serving(app: App) -> AsyncIterator[httpx.AsyncClient]:
    api = create_app(app)
    async with api.router.lifespan_context(api):
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            yield client


@pytest.fixture
async def web(app: App) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(app) as client:
        yield client


async def count(app: App) -> int:
    return len(await app.list_jobs(owner=None, limit=100))


# -- JSON only --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "text/json",
        "application/+json",
    ],
)
async def test_a_body_that_is_not_declared_json_is_415_and_enqueues_nothing(
    app: App, web: httpx.AsyncClient, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    answer = await web.post("/v1/jobs/t.task", content=b'{"name": "x"}', headers=headers)
    assert answer.status_code == 415, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["status"] == 415 and problem["type"].endswith("/unsupported-media-type")
    assert "application/json" in problem["detail"]
    assert await count(app) == 0


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/vnd.api+json",
    ],
)
async def test_json_media_types_are_accepted(
    app: App, web: httpx.AsyncClient, content_type: str
) -> None:
    answer = await web.post(
        "/v1/jobs/t.task", content=b'{"name": "x"}', headers={"Content-Type": content_type}
    )
    assert answer.status_code == 202, answer.text
    assert await count(app) == 1


async def test_json_only_holds_with_api_tokens_too(tmp_path: Path) -> None:
    app = make_app(tmp_path, {"tok": "alice"})
    async with serving(app) as web:
        web.headers["Authorization"] = "Bearer tok"
        form = await web.post("/v1/jobs/t.task", data={"name": "x"})
        assert form.status_code == 415
        # A bearer token is not sent cross-site by a browser: no origin check is needed.
        ok = await web.post("/v1/jobs/t.task", json={"name": "x"}, headers={"Origin": EVIL})
        assert ok.status_code == 202
    assert await count(app) == 1


# -- cross-site requests in development mode -------------------------------------------------


async def test_a_cors_simple_request_from_another_site_enqueues_nothing(
    app: App, web: httpx.AsyncClient
) -> None:
    # What <form enctype="text/plain"> or fetch(..., {mode: "no-cors"}) on evil.example sends:
    answer = await web.post(
        "/v1/jobs/t.task",
        content=b'{"name": "forged"}',
        headers={
            "Content-Type": "text/plain;charset=UTF-8",
            "Origin": EVIL,
            "Sec-Fetch-Site": "cross-site",
        },
    )
    assert answer.status_code == 403
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["type"].endswith("/cross-site-request")
    assert await count(app) == 0


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": EVIL},
        {"Origin": "null"},  # sandboxed frames, data: URLs
        {"Origin": "http://localhost:8080"},  # another port is another origin
        {"Origin": "https://localhost"},  # another scheme too
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},  # localhost:3000 → localhost:8000
        {"Origin": BASE, "Sec-Fetch-Site": "cross-site"},
    ],
)
async def test_cross_site_writes_are_403_in_development_mode(
    app: App, web: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    job_id = (await web.post("/v1/jobs/t.task", json={"name": "mine"})).json()["id"]
    submit = await web.post("/v1/jobs/t.task", json={"name": "forged"}, headers=headers)
    cancel = await web.delete(f"/v1/jobs/{job_id}", headers=headers)
    ticket = await web.post("/v1/ws-ticket", headers=headers)
    for answer in (submit, cancel, ticket):
        assert answer.status_code == 403, (answer.request.url, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
    assert await count(app) == 1
    row = await app.get(job_id)
    assert row is not None and row.state == "queued"  # not cancelled


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, scripts, server-side clients
        {"Origin": BASE},
        {"Origin": "http://LocalHost:80"},  # the same origin, spelled otherwise
        {"Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "none"},  # typed by the user
        {"Origin": BASE, "Sec-Fetch-Site": "same-origin"},
    ],
)
async def test_same_origin_and_non_browser_writes_are_served(
    app: App, web: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    submit = await web.post("/v1/jobs/t.task", json={"name": "x"}, headers=headers)
    assert submit.status_code == 202, submit.text
    ticket = await web.post("/v1/ws-ticket", headers=headers)
    assert ticket.status_code == 201
    cancel = await web.delete(f"/v1/jobs/{submit.json()['id']}", headers=headers)
    assert cancel.status_code == 200


async def test_cross_site_reads_are_left_to_the_same_origin_policy(
    app: App, web: httpx.AsyncClient
) -> None:
    job_id = (await web.post("/v1/jobs/t.task", json={"name": "x"})).json()["id"]
    answer = await web.get(f"/v1/jobs/{job_id}", headers={"Origin": EVIL})
    assert answer.status_code == 200
    assert "access-control-allow-origin" not in answer.headers  # the page cannot read it


def served(app: App) -> contextlib.AbstractAsyncContextManager[int]:
    """`app`'s web tier served by uvicorn on a loopback port (yielded), for WebSockets."""
    return uvicorn_served(create_app(app))


async def test_a_cross_site_websocket_is_refused_in_development_mode(app: App) -> None:
    # A page on another site may open a WebSocket to loopback (no CORS there) and would
    # read every job of `local`.
    async with served(app) as port:
        url = f"ws://127.0.0.1:{port}/v1/ws"
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url, origin=EVIL):
                pass
        response = refused.value.response
        assert response.status_code == 403
        assert orjson.loads(response.body)["type"].endswith("/cross-site-request")
        async with connect(url, origin=f"http://127.0.0.1:{port}") as ws:
            assert orjson.loads(await ws.recv())["type"] == "hello"
        async with connect(url) as ws:  # no Origin: not a browser
            assert orjson.loads(await ws.recv())["type"] == "hello"


# -- DNS rebinding: a page's own name resolved to 127.0.0.1 ------------------------------


async def test_a_rebound_name_is_refused_in_development_mode(
    app: App, web: httpx.AsyncClient
) -> None:
    # A page of rebind.example, its name rebound to 127.0.0.1, is one origin with the
    # server to the browser: Origin and Host agree, so only the Host gives it away.
    page = {"Host": "rebind.example:8000", "Origin": "http://rebind.example:8000"}
    posted = await web.post("/v1/jobs/t.task", json={"name": "x"}, headers=page)
    assert posted.status_code == 421
    assert posted.headers["content-type"] == "application/problem+json"
    assert posted.json()["type"].endswith("/not-loopback-host")
    assert await count(app) == 0
    await web.post("/v1/jobs/t.task", json={"name": "mine"})
    for path in ("/v1/jobs", "/dashboard/", "/openapi.json", "/healthz"):
        read = await web.get(path, headers={"Host": "rebind.example:8000"})
        assert read.status_code == 421, path
        assert "mine" not in read.text
    for host in ("[::1", "[::1]:x", "a@localhost"):  # malformed: no loopback name either
        malformed = await web.get("/v1/jobs", headers={"Host": host})
        assert malformed.status_code == 421, host
        assert malformed.headers["content-type"] == "application/problem+json"
    for host in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000", "app.localhost"):
        assert (await web.get("/v1/jobs", headers={"Host": host})).status_code == 200, host


async def test_a_rebound_name_is_refused_at_the_path_it_asked_for_under_a_mount(
    app: App,
) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    host = Starlette(routes=[Mount("/jobs", app=create_app(app))])
    transport = httpx.ASGITransport(app=host)
    async with httpx.AsyncClient(transport=transport, base_url="http://rebind.example") as web:
        refused = await web.get("/jobs/v1/jobs")
    assert refused.status_code == 421
    assert refused.json()["instance"] == "/jobs/v1/jobs"  # (it was /jobs/jobs/v1/jobs)
    await app.close()


async def test_with_api_tokens_any_host_is_served(tmp_path: Path) -> None:
    app = make_app(tmp_path, tokens={"tok-a": "alice"})
    async with serving(app) as client:
        answer = await client.get(
            "/v1/jobs", headers={"Host": "jobs.example.com", "Authorization": "Bearer tok-a"}
        )
        assert answer.status_code == 200


async def test_the_openapi_document_declares_421_in_development_mode_only(
    tmp_path: Path, web: httpx.AsyncClient
) -> None:
    dev = (await web.get("/openapi.json")).json()
    async with serving(make_app(tmp_path / "t", tokens={"tok-a": "alice"})) as client:
        tokens = (
            await client.get("/openapi.json", headers={"Authorization": "Bearer tok-a"})
        ).json()
    for doc, expected in ((dev, True), (tokens, False)):
        for item in doc["paths"].values():
            for operation in item.values():
                assert "413" in operation["responses"]
                assert ("421" in operation["responses"]) is expected


async def test_a_rebound_websocket_handshake_is_refused(app: App) -> None:
    async with served(app) as port:

        async def handshake(host: str, *, refused: bool) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                (
                    f"GET /v1/ws HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\n"
                    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            await writer.drain()
            # A refusal is answered whole and closed; an accepted one stays open
            done = reader.read() if refused else reader.readuntil(b"\r\n\r\n")
            answer = await asyncio.wait_for(done, 10)
            writer.close()
            await writer.wait_closed()
            return answer

        refused = await handshake(f"rebind.example:{port}", refused=True)
        assert refused.startswith(b"HTTP/1.1 421 ") and b"application/problem+json" in refused
        assert b"/not-loopback-host" in refused
        accepted = await handshake(f"127.0.0.1:{port}", refused=False)
        assert accepted.startswith(b"HTTP/1.1 101 ")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LOCALHOST:8000", True),
        ("app.localhost:8000", True),
        ("localhost.:8000", True),
        ("127.0.0.1", True),
        ("127.0.0.1:8000", True),
        ("127.8.9.10:1", True),
        ("[::1]:8000", True),
        ("[::ffff:127.0.0.1]:8000", True),
        ("rebind.example", False),
        ("localhost.example:8000", False),
        ("127.0.0.1.nip.io", False),
        ("10.0.0.1:8000", False),
        ("[::2]", False),
        ("127.0.0.1:99999", False),
        ("127.0.0.1:x", False),
        ("evil.example@localhost", False),
        ("", False),
    ],
)
def test_loopback_host(host: str, loopback: bool) -> None:
    assert loopback_host(host) is loopback


# -- the rule, as a pure function ----------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "fetch_site", "scheme", "host", "refused"),
    [
        (None, None, "http", "127.0.0.1:8000", False),
        ("http://127.0.0.1:8000", None, "http", "127.0.0.1:8000", False),
        ("http://127.0.0.1:8000", None, "ws", "127.0.0.1:8000", False),
        ("https://app.example", None, "https", "app.example:443", False),
        ("http://localhost:8000", None, "http", "127.0.0.1:8000", True),
        ("http://127.0.0.1:8000", None, "https", "127.0.0.1:8000", True),
        ("http://127.0.0.1", None, "http", "127.0.0.1:8000", True),
        ("not a url", None, "http", "127.0.0.1:8000", True),
        (None, "same-origin", "http", "127.0.0.1:8000", False),
        (None, "none", "http", "127.0.0.1:8000", False),
        (None, "same-site", "http", "127.0.0.1:8000", True),
        (None, "cross-site", "http", "127.0.0.1:8000", True),
    ],
)
def test_cross_site_reason(
    origin: str | None, fetch_site: str | None, scheme: str, host: str, refused: bool
) -> None:
    headers = {k: v for k, v in (("origin", origin), ("sec-fetch-site", fetch_site)) if v}
    assert (cross_site_reason(headers, scheme, host) is not None) is refused


async def test_behind_an_auth_hook_a_cross_site_write_is_refused_too(tmp_path: Path) -> None:
    # Given an API whose hook reads the host's session cookie (a browser sends it along
    # with any request a page of another site makes)
    app = make_app(tmp_path)

    def session(request: httpx.Request | object) -> str | None:
        cookies = getattr(request, "cookies", {})
        return "alice" if cookies.get("session") == "s1" else None

    api = create_app(app, auth=session)
    async with api.router.lifespan_context(api):
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(
            transport=transport, base_url=BASE, cookies={"session": "s1"}
        ) as client:
            json = {"Content-Type": "application/json"}
            # When a page of another site posts with the cookie
            forged = await client.post(
                "/v1/jobs/t.task", content=b'{"name": "x"}', headers={**json, "Origin": EVIL}
            )
            # Then it is refused and nothing is enqueued, while the host's own page may post
            assert forged.status_code == 403
            assert forged.headers["content-type"] == "application/problem+json"
            assert await count(app) == 0
            own = await client.post(
                "/v1/jobs/t.task", content=b'{"name": "x"}', headers={**json, "Origin": BASE}
            )
            assert own.status_code == 202 and await count(app) == 1


# -- OFFLOAD_CORS_ORIGINS: pages of named other origins may call ----------------------------

APP_ORIGIN = "http://localhost:5173"  # a single-page app's dev server, say


async def test_a_named_origins_page_may_call_and_read_and_no_other(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    app.configure(app.settings.with_(cors_origins=frozenset({APP_ORIGIN + "/"})))
    async with serving(app) as web:
        # Given a page of a named origin, its preflight for a JSON post with a key is granted,
        asked = {
            "Origin": APP_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, idempotency-key",
        }
        preflight = await web.options("/v1/jobs/t.task", headers=asked)
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == APP_ORIGIN
        assert preflight.headers["access-control-allow-credentials"] == "true"
        # its post is served (not refused as cross-site), and it may read the answer's
        # headers it needs,
        sent = {"Origin": APP_ORIGIN, "Sec-Fetch-Site": "same-site"}
        submit = await web.post("/v1/jobs/t.task", json={"name": "spa"}, headers=sent)
        assert submit.status_code == 202, submit.text
        assert submit.headers["access-control-allow-origin"] == APP_ORIGIN
        exposed = submit.headers["access-control-expose-headers"].lower()
        assert "location" in exposed and "content-disposition" in exposed
        assert "content-range" in exposed  # (a download resumed from the page)
        ranged = await web.options(
            "/files/reports/r.pdf",
            headers={**asked, "Access-Control-Request-Method": "GET",
                     "Access-Control-Request-Headers": "range"},
        )  # fmt: skip
        assert ranged.status_code == 200, ranged.text
        read = await web.get(submit.headers["location"], headers=sent)
        assert read.headers["access-control-allow-origin"] == APP_ORIGIN
        # while another origin's preflight is refused with a problem document, its
        # writes are refused as before, and it may read nothing.
        evil = {**asked, "Origin": EVIL}
        refused = await web.options("/v1/jobs/t.task", headers=evil)
        assert refused.status_code == 403
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"].endswith("/cross-origin-refused")
        forged = await web.post(
            "/v1/jobs/t.task", json={"name": "forged"}, headers={"Origin": EVIL}
        )
        assert forged.status_code == 403
        other = await web.get(submit.headers["location"], headers={"Origin": EVIL})
        assert "access-control-allow-origin" not in other.headers
        # The operators' pages are no API of its: not even a named origin may read them.
        for path in ("/dashboard", "/metrics"):
            page = await web.get(path, headers=sent)
            assert "access-control-allow-origin" not in page.headers, path
    assert await count(app) == 1


async def test_with_no_origin_named_a_preflight_is_refused_as_cross_origin(
    tmp_path: Path,
) -> None:
    app = make_app(tmp_path)
    async with serving(app) as web:
        # Given no OFFLOAD_CORS_ORIGINS, a page of another origin's preflight (a dev server's)
        asked = {"Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST"}
        refused = await web.options("/v1/jobs/t.task", headers=asked)
        # is refused as cross-origin, saying what would let it call, not as a bad method;
        assert refused.status_code == 403, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"].endswith("/cross-origin-refused")
        assert "OFFLOAD_CORS_ORIGINS" in refused.json()["detail"]
        assert "access-control-allow-origin" not in refused.headers
        # (as for a path of the API that no route answers, the WebSocket's among them),
        for path in ("/v1/nope", "/v1/ws"):
            elsewhere = await web.options(path, headers=asked)
            assert elsewhere.status_code == 403, path
            assert elsewhere.json()["type"].endswith("/cross-origin-refused"), path
        # an OPTIONS that is no preflight, or one for a page that is no API, is a 405 as ever.
        plain = await web.options("/v1/jobs/t.task")
        assert plain.status_code == 405 and "POST" in plain.headers["allow"]
        page = await web.options("/healthz", headers=asked)
        assert page.status_code == 405
    assert await count(app) == 0


@pytest.mark.parametrize(
    "origin", ["*", "https://*.example.com", "https://app.example.com/path", "ftp://x", "app"]
)
async def test_an_origin_that_names_no_page_exactly_is_a_configuration_error(
    tmp_path: Path, origin: str
) -> None:
    from offload.errors import ConfigurationError

    app = make_app(tmp_path)
    app.configure(app.settings.with_(cors_origins=frozenset({origin})))
    with pytest.raises(ConfigurationError, match="OFFLOAD_CORS_ORIGINS"):
        create_app(app)


def test_the_setting_reads_a_comma_separated_list() -> None:
    env = {"OFFLOAD_CORS_ORIGINS": " https://app.example.com, http://localhost:5173 ,"}
    assert Settings.from_env(env).cors_origins == frozenset(
        {"https://app.example.com", "http://localhost:5173"}
    )


async def test_with_tokens_a_websocket_from_another_origin_needs_it_named(tmp_path: Path) -> None:
    # No CORS applies to a WebSocket: with a ticket (which travels in URLs) a page of any
    # site could read the stream. Only a named origin's page may open it.
    app = make_app(tmp_path, tokens={"tok-alice": "alice"})
    app.configure(app.settings.with_(cors_origins=frozenset({APP_ORIGIN})))
    async with served(app) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            auth = {"Authorization": "Bearer tok-alice"}
            tickets = [(await client.post("/v1/ws-ticket", headers=auth)).json()["ticket"]]
            tickets.append((await client.post("/v1/ws-ticket", headers=auth)).json()["ticket"])
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"ws://127.0.0.1:{port}/v1/ws?ticket={tickets[0]}", origin=EVIL):
                pass
        assert refused.value.response.status_code == 403
        named = f"ws://127.0.0.1:{port}/v1/ws?ticket={tickets[1]}"
        async with connect(named, origin=APP_ORIGIN) as ws:
            assert orjson.loads(await ws.recv())["type"] == "hello"
        async with connect(f"ws://127.0.0.1:{port}/v1/ws", additional_headers=auth) as ws:
            assert orjson.loads(await ws.recv())["type"] == "hello"  # no Origin: no browser
