"""The stream of all of a caller's jobs, over a real socket: server-sent events at /v1/events
and the WebSocket at /v1/ws, with two principals, disconnects and resumption."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from starlette.exceptions import HTTPException
from starlette.requests import Request
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from offload import App, Context, Message, Settings
from offload.web import create_app

from ..ports import free_port

pytestmark = pytest.mark.anyio
TOKENS = {"alice": "tok-alice", "bob": "tok-bob"}


class Task(Message):
    name: str


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        url=f"sqlite:///{tmp_path / 'jobs.db'}",
        blobs_url=str(tmp_path / "blobs"),
        secret_key=b"test-secret-of-32-bytes-or-more!",
        lease_s=2.0,
        api_tokens={token: principal for principal, token in TOKENS.items()},
    )


@pytest.fixture
def app(settings: Settings) -> App:
    app = App("streams", settings=settings)
    app.message("t.task")(Task)

    @app.handles(Task)
    async def task(msg: Task, ctx: Context) -> str:
        await ctx.progress(0.5, "half")
        return msg.name

    return app


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the test process keeps its own signals
        yield


@pytest.fixture
async def base(app: App) -> AsyncIterator[str]:
    async with _serving(app) as served:
        yield served


@contextlib.asynccontextmanager
async def _serving(app: App, api: Any = None, **web: Any) -> AsyncIterator[str]:
    """The web tier (`api`, else made) served by uvicorn on 127.0.0.1 (a real socket), in
    the test's loop."""
    port = free_port()
    api = create_app(app, **web) if api is None else api
    config = uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.01)
    yield f"127.0.0.1:{port}"
    server.should_exit = True
    await asyncio.wait_for(task, 10)


@pytest.fixture
async def clients(base: str) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    async with contextlib.AsyncExitStack() as stack:
        yield {
            who: await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=f"http://{base}", headers={"Authorization": f"Bearer {token}"}
                )
            )
            for who, token in TOKENS.items()
        }


class EventStream:
    """A server-sent event stream read in the background: (id, event, data) triples."""

    def __init__(self, client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> None:
        self.client, self.url, self.headers = client, url, headers
        self.events: asyncio.Queue[tuple[int, str, dict[str, Any]]] = asyncio.Queue()
        self.cursor: int | None = None
        self.opened = asyncio.Event()
        self.status = 0

    async def _read(self, response: httpx.Response) -> None:
        fields: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line == "":
                if "data" in fields:
                    data = orjson.loads(fields["data"])
                    await self.events.put((int(fields["id"]), fields["event"], data))
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
                if name == "id":
                    self.cursor = int(value)
                    self.opened.set()

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[EventStream]:
        request = self.client.build_request("GET", self.url, headers=self.headers)
        response = await self.client.send(request, stream=True)
        self.status = response.status_code
        reader = asyncio.create_task(self._read(response))
        try:
            await asyncio.wait_for(self.opened.wait(), 10)  # the opening `id:` line
            yield self
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await response.aclose()

    async def until_final(self, job_id: str) -> list[tuple[int, str, dict[str, Any]]]:
        """Events up to the final state of `job_id` (every event, whichever job)."""
        seen: list[tuple[int, str, dict[str, Any]]] = []
        while True:
            event = await asyncio.wait_for(self.events.get(), 15)
            seen.append(event)
            if event[2]["id"] == job_id and event[1] == "succeeded":
                return seen


async def submit(client: httpx.AsyncClient, name: str) -> str:
    response = await client.post("/v1/jobs/t.task", json={"name": name})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


async def done(client: httpx.AsyncClient, job_id: str) -> None:
    for _ in range(1500):
        if (await client.get(f"/v1/jobs/{job_id}")).json()["state"] == "succeeded":
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"job {job_id} did not finish")


async def test_sse_shows_each_principal_only_their_jobs_and_resumes(
    clients: dict[str, httpx.AsyncClient], start_worker: Callable[..., Any]
) -> None:
    alice, bob = clients["alice"], clients["bob"]
    ticket = (await bob.post("/v1/ws-ticket")).json()["ticket"]
    anonymous = httpx.AsyncClient(base_url=alice.base_url)
    alice_feed = EventStream(alice, "/v1/events", {})
    bob_feed = EventStream(anonymous, f"/v1/events?ticket={ticket}", {})  # as a browser would
    await start_worker()
    async with alice_feed.open(), bob_feed.open():
        assert alice_feed.status == bob_feed.status == 200
        # Given both principals follow their streams, when each submits a job,
        a1, b1 = await submit(alice, "a1"), await submit(bob, "b1")
        # then each stream shows that principal's job, through to its end, and nothing else.
        seen_a = await alice_feed.until_final(a1)
        seen_b = await bob_feed.until_final(b1)
        assert {data["id"] for _, _, data in seen_a} == {a1}
        assert {data["id"] for _, _, data in seen_b} == {b1}
        assert [event for _, event, _ in seen_a] == ["queued", "running", "running", "succeeded"]
        assert seen_a[-1][2]["result"] == "a1"
        cursor = seen_a[-1][0]
    await anonymous.aclose()
    # Given alice disconnected at `cursor`, when jobs run while she is away,
    a2, b2 = await submit(alice, "a2"), await submit(bob, "b2")
    await done(alice, a2)
    await done(bob, b2)
    # then reconnecting with Last-Event-ID replays exactly what she missed, then goes on live.
    resumed = EventStream(alice, "/v1/events", {"Last-Event-ID": str(cursor)})
    async with resumed.open():
        missed = await resumed.until_final(a2)
        assert {data["id"] for _, _, data in missed} == {a2}
        assert [event for _, event, _ in missed] == ["queued", "running", "running", "succeeded"]
        assert all(seq > cursor for seq, _, _ in missed)
        a3 = await submit(alice, "a3")
        live = await resumed.until_final(a3)
        assert {data["id"] for _, _, data in live} == {a3}


async def test_sse_without_a_cursor_starts_now_and_tells_its_position(
    clients: dict[str, httpx.AsyncClient], start_worker: Callable[..., Any]
) -> None:
    alice = clients["alice"]
    await start_worker()
    old = await submit(alice, "before")
    await done(alice, old)
    feed = EventStream(alice, "/v1/events", {})
    async with feed.open():
        start = feed.cursor
        assert start is not None and start > 0  # the opening `id:` line
        new = await submit(alice, "after")
        seen = await feed.until_final(new)
        assert {data["id"] for _, _, data in seen} == {new}
        assert seen[0][0] > start


async def test_events_need_credentials(base: str) -> None:
    async with httpx.AsyncClient(base_url=f"http://{base}") as anonymous:
        for url in ("/v1/events", "/v1/events?ticket=bogus", "/v1/ws-ticket"):
            method = "POST" if url.endswith("ticket") else "GET"
            response = await anonymous.request(method, url)
            assert response.status_code == 401, url
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["www-authenticate"] == 'Bearer realm="offload"'
        bad = await anonymous.get(
            "/v1/events", headers={"Authorization": "Bearer tok-alice", "Last-Event-ID": "x"}
        )
        assert bad.status_code == 400 and bad.json()["type"].endswith("/bad-event-id")


async def test_a_finished_jobs_stream_tells_a_reconnecting_browser_to_stop(
    clients: dict[str, httpx.AsyncClient], start_worker: Callable[..., Any]
) -> None:
    alice = clients["alice"]
    await start_worker()
    job_id = await submit(alice, "ends")
    await done(alice, job_id)
    # Given a finished job, its stream replays its changes to the final one, then ends;
    answer = await alice.get(f"/v1/jobs/{job_id}/events")
    assert answer.status_code == 200
    ids = [line.removeprefix("id: ") for line in answer.text.splitlines() if line.startswith("id:")]
    events = [line for line in answer.text.splitlines() if line.startswith("event:")]
    assert events[-1] == "event: succeeded"
    # when the browser reconnects with the last event's id (as it does to any stream that
    # ended), it is told 204, which an EventSource takes as "stop", and no event stream;
    again = await alice.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": ids[-1]})
    assert again.status_code == 204 and again.content == b""
    assert "text/event-stream" not in again.headers.get("content-type", "")
    # while a position before its final change still replays what follows it.
    earlier = await alice.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": ids[-2]})
    assert earlier.status_code == 200 and "event: succeeded" in earlier.text
    assert f"id: {ids[-2]}\n" not in earlier.text


async def test_a_browser_follows_one_job_with_a_ticket_and_no_one_elses(
    clients: dict[str, httpx.AsyncClient], start_worker: Callable[..., Any]
) -> None:
    alice, bob = clients["alice"], clients["bob"]
    await start_worker()
    job_id = await submit(alice, "followed")
    await done(alice, job_id)
    mine = (await alice.post("/v1/ws-ticket")).json()["ticket"]
    theirs = (await bob.post("/v1/ws-ticket")).json()["ticket"]
    async with httpx.AsyncClient(base_url=alice.base_url) as browser:  # no Authorization
        # An EventSource cannot send a header: a ticket names its caller,
        answer = await browser.get(f"/v1/jobs/{job_id}/events", params={"ticket": mine})
        assert answer.status_code == 200 and "event: succeeded" in answer.text
        # another principal's ticket finds no such job, and a bad one is refused.
        other = await browser.get(f"/v1/jobs/{job_id}/events", params={"ticket": theirs})
        assert other.status_code == 404 and other.json()["type"].endswith("/job-not-found")
        bad = await browser.get(f"/v1/jobs/{job_id}/events", params={"ticket": "x" + mine})
        assert bad.status_code == 401 and bad.json()["type"].endswith("/bad-ticket")
        nothing = await browser.get(f"/v1/jobs/{job_id}/events")
        assert nothing.status_code == 401


@pytest.mark.parametrize("event_id", [b"x", b"-1", "²".encode("latin-1"), b"9" * 24])
async def test_a_job_stream_resumes_after_ascii_digits_only(
    clients: dict[str, httpx.AsyncClient], event_id: bytes
) -> None:
    # ² is a digit to str.isdigit(), not to int(): 400, not a crash
    alice = clients["alice"]
    job_id = await submit(alice, "waits")
    bad = await alice.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": event_id})
    assert bad.status_code == 400 and bad.json()["type"].endswith("/bad-event-id")


@pytest.mark.parametrize("since", ["9" * 24, "+1", " 1", "-1", "1.0", "²"])
async def test_a_job_stream_refuses_a_since_that_is_no_position(
    clients: dict[str, httpx.AsyncClient], since: str
) -> None:
    # A position no engine stores (past 64 bits) was an empty 200 stream with an overflow
    # raised inside it; `+1` and ` 1` opened a stream (as an int reads them), where the
    # other streams answer 400 to them
    alice = clients["alice"]
    job_id = await submit(alice, "waits")
    bad = await alice.get(f"/v1/jobs/{job_id}/events", params={"since": since})
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
    assert bad.json()["errors"][0]["loc"] == ["query", "since"]


async def _hello(ws: ClientConnection) -> int:
    hello = orjson.loads(await ws.recv())
    assert hello["type"] == "hello"
    cursor: int = hello["cursor"]
    return cursor


async def _changes_until_final(ws: ClientConnection, job_id: str) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    while True:
        message = orjson.loads(await asyncio.wait_for(ws.recv(), 15))
        if message["type"] != "change":
            continue
        seen.append(message)
        if message["data"]["id"] == job_id and message["event"] == "succeeded":
            return seen


async def test_websocket_shows_each_principal_only_their_jobs_and_resumes(
    base: str, clients: dict[str, httpx.AsyncClient], start_worker: Callable[..., Any]
) -> None:
    alice, bob = clients["alice"], clients["bob"]
    await start_worker()
    ticket = (await bob.post("/v1/ws-ticket")).json()
    assert ticket["websocket"].startswith("/v1/ws?ticket=")
    auth = {"Authorization": f"Bearer {TOKENS['alice']}"}
    # Given alice (bearer token) and bob (ticket, as a browser) on the WebSocket,
    async with (
        connect(f"ws://{base}/v1/ws", additional_headers=auth) as ws_a,
        connect(f"ws://{base}{ticket['websocket']}") as ws_b,
    ):
        await _hello(ws_a)
        await _hello(ws_b)
        # when each submits a job, each sees only their own.
        a1, b1 = await submit(alice, "a1"), await submit(bob, "b1")
        seen_a = await _changes_until_final(ws_a, a1)
        seen_b = await _changes_until_final(ws_b, b1)
        assert {m["data"]["id"] for m in seen_a} == {a1}
        assert {m["data"]["id"] for m in seen_b} == {b1}
        assert [m["event"] for m in seen_a] == ["queued", "running", "running", "succeeded"]
        cursor = seen_a[-1]["id"]
    # Given alice disconnected, when her next job runs while she is away,
    a2 = await submit(alice, "a2")
    await submit(bob, "b2")
    await done(alice, a2)
    # then reconnecting with ?since= replays what she missed.
    async with connect(f"ws://{base}/v1/ws?since={cursor}", additional_headers=auth) as ws_a:
        assert await _hello(ws_a) == cursor
        missed = await _changes_until_final(ws_a, a2)
        assert {m["data"]["id"] for m in missed} == {a2}
        assert [m["event"] for m in missed] == ["queued", "running", "running", "succeeded"]
        assert all(m["id"] > cursor for m in missed)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_a_websocket_its_client_closes_leaves_no_error_in_the_servers_log(app: App) -> None:
    records, server_log = _Records(), logging.getLogger("uvicorn.error")
    # Given clients that each open the WebSocket, read its hello and close as they should,
    try:
        async with _serving(app) as base:
            server_log.addHandler(records)  # once uvicorn has set its logging up
            auth = {"Authorization": f"Bearer {TOKENS['alice']}"}
            for _ in range(3):
                async with connect(f"ws://{base}/v1/ws", additional_headers=auth) as ws:
                    await _hello(ws)
                    await ws.send('{"type":"hello"}')  # what a client may say (unread)
        # (the server has stopped since: each connection's handler has ended)
    finally:
        server_log.removeHandler(records)
    # then the server logged no error for any of them (it logged each close's traceback).
    assert [r.getMessage() for r in records.records if r.levelno >= logging.ERROR] == []


async def test_websocket_refuses_a_bad_ticket_with_a_problem_document(base: str) -> None:
    for url in (f"ws://{base}/v1/ws", f"ws://{base}/v1/ws?ticket=abc.123.def"):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url):
                pass
        response = refused.value.response
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert orjson.loads(response.body)["status"] == 401


async def test_behind_an_auth_hook_the_streams_take_its_caller_or_a_tickets(app: App) -> None:
    asked: list[str] = []

    def session(request: Request) -> str:  # the host's hook: a session cookie, or its 401
        asked.append(request.url.path)
        cookie = request.cookies.get("session", "")
        if cookie == "boom":
            raise RuntimeError("the session store is down")
        if cookie != "s-alice":
            challenge = {"WWW-Authenticate": 'Cookie realm="app"'}
            raise HTTPException(401, "sign in first", headers=challenge)
        return "alice"

    async with _serving(app, auth=session) as base:
        # The WebSocket's caller is whom the hook names (its handshake crashed with a 500),
        signed_in = {"Cookie": "session=s-alice"}
        async with connect(f"ws://{base}/v1/ws", additional_headers=signed_in) as ws:
            await _hello(ws)
        assert asked == ["/v1/ws"]
        async with httpx.AsyncClient(base_url=f"http://{base}", headers=signed_in) as alice:
            ticket = (await alice.post("/v1/ws-ticket")).json()["ticket"]
        # a ticket's holder is whom it names, the hook not asked (it would refuse them),
        asked.clear()
        async with connect(f"ws://{base}/v1/ws?ticket={ticket}") as ws:
            await _hello(ws)
        async with httpx.AsyncClient(base_url=f"http://{base}") as anonymous:
            feed = EventStream(anonymous, f"/v1/events?ticket={ticket}", {})
            async with feed.open():
                assert feed.status == 200
        assert asked == []
        # and the hook's refusal and crash are problem documents at the handshake.
        for cookie, status in (("nobody", 401), ("boom", 500)):
            with pytest.raises(InvalidStatus) as refused:
                headers = {"Cookie": f"session={cookie}"}
                async with connect(f"ws://{base}/v1/ws", additional_headers=headers):
                    pass
            response = refused.value.response
            assert response.status_code == status
            assert response.headers["content-type"] == "application/problem+json"
            body = orjson.loads(response.body)
            assert body["status"] == status and "Traceback" not in response.body.decode()
            if status == 401:
                assert response.headers["www-authenticate"] == 'Cookie realm="app"'
                assert body["detail"] == "sign in first"


async def test_a_position_past_the_newest_event_resumes_from_the_newest(
    clients: dict[str, httpx.AsyncClient], base: str, start_worker: Callable[..., Any]
) -> None:
    # A job's stream resumed past every event waited for changes it would never send, and
    # never ended; the other streams skipped every change numbered up to the position
    alice = clients["alice"]
    ahead = "999999999999999999"
    await start_worker()
    done_id = await submit(alice, "done")
    await done(alice, done_id)
    for how in ({"params": {"since": ahead}}, {"headers": {"Last-Event-ID": ahead}}):
        ended = await alice.get(f"/v1/jobs/{done_id}/events", **how)  # type: ignore[arg-type]
        assert ended.status_code == 204  # it ended: its job is final, nothing follows
    feed = EventStream(alice, "/v1/events", {"Last-Event-ID": ahead})
    async with feed.open():
        assert feed.cursor is not None and feed.cursor < int(ahead)  # the newest, not past it
        new = await submit(alice, "after")
        seen = await feed.until_final(new)
        assert [event for _, event, data in seen if data["id"] == new][-1] == "succeeded"
    auth = {"Authorization": "Bearer tok-alice"}
    async with connect(f"ws://{base}/v1/ws?since={ahead}", additional_headers=auth) as ws:
        assert await _hello(ws) < int(ahead)


async def test_streams_past_what_the_open_files_leave_are_refused_and_the_rest_is_served(
    app: App, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Past its limit of open files a web tier refused every connection, its POSTs' and its
    # probes' too, without a word: streams past what the limit leaves are a 503 instead.
    from offload.web import feeds

    monkeypatch.setattr(feeds, "stream_limit", lambda open_files: 2)
    monkeypatch.setattr(feeds, "_warned_at", -3600.0)  # (as in a process that has not warned)
    api = create_app(app)
    auth = {"Authorization": f"Bearer {TOKENS['alice']}"}
    async with _serving(app, api) as base, httpx.AsyncClient(base_url=f"http://{base}") as web:
        hub = api.state.runtime.hub
        # Given as many streams open as the process can keep (two, here),
        with hub.subscribe(owner="alice"), hub.subscribe(owner="bob"):
            # a new event stream, of every job or of one, and a WebSocket are refused,
            with caplog.at_level(logging.WARNING, logger="offload.web"):
                refused = await web.get("/v1/events", headers=auth)
            assert refused.status_code == 503, refused.text
            assert refused.json()["type"].endswith("/too-many-streams")
            assert refused.headers["retry-after"] == "5"
            assert refused.headers["connection"] == "close"  # (no file held for it)
            posted = await web.post("/v1/jobs/t.task", json={"name": "x"}, headers=auth)
            assert posted.status_code == 202, posted.text  # while the rest is served
            job = await web.get(f"/v1/jobs/{posted.json()['id']}/events", headers=auth)
            assert job.status_code == 503
            with pytest.raises(InvalidStatus) as ws_refused:
                async with connect(f"ws://{base}/v1/ws", additional_headers=auth):
                    pass
            assert ws_refused.value.response.status_code == 503
            assert (await web.get("/healthz")).status_code == 200
            warned = [r for r in caplog.records if getattr(r, "action", "") == "streams_refused"]
            assert len(warned) == 1  # (once a minute, not for each)
        # and once one closes, a new stream opens.
        async with web.stream("GET", "/v1/events", headers=auth) as opened:
            assert opened.status_code == 200


async def test_streams_admitted_in_a_burst_count_before_they_subscribe(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An event stream subscribes once its response has begun: a burst of requests each saw
    # the streams before theirs, and all were let in, past the limit.
    from offload.web import events, feeds
    from offload.web.problems import Problem

    monkeypatch.setattr(feeds, "stream_limit", lambda open_files: 2)
    api = create_app(app)
    async with _serving(app, api):
        hub = api.state.runtime.hub
        feeds.admit_stream(hub)
        feeds.admit_stream(hub)  # two admitted, none subscribed yet
        with pytest.raises(Problem) as refused:
            feeds.admit_stream(hub)
        assert refused.value.status_code == 503
        with hub.subscribe(owner="alice"), hub.subscribe(owner="bob"):  # (they subscribe)
            with pytest.raises(Problem):
                feeds.admit_stream(hub)
        # A place admitted whose stream never began is given up after a while.
        monkeypatch.setattr(events, "OPENING_S", 0.0)
        feeds.admit_stream(hub)
        feeds.admit_stream(hub)
        await asyncio.sleep(0.01)  # (any time past OPENING_S, 0 here)
        feeds.admit_stream(hub)


async def test_requests_that_open_no_stream_hold_no_place_among_the_streams(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A job's stream answered 204 (its job final) after taking a place among the streams,
    # which it held for 5 s: cheap requests by one tenant kept every place taken, and the
    # others' streams were refused.
    from offload.web import feeds

    monkeypatch.setattr(feeds, "stream_limit", lambda open_files: 2)
    api = create_app(app)
    auth = {"Authorization": f"Bearer {TOKENS['bob']}"}
    async with _serving(app, api) as base, httpx.AsyncClient(base_url=f"http://{base}") as web:
        posted = await web.post("/v1/jobs/t.task", json={"name": "x"}, headers=auth)
        job_id = posted.json()["id"]
        assert (await web.delete(f"/v1/jobs/{job_id}", headers=auth)).status_code < 300
        # Given requests answered without a stream, more of them than the places:
        ahead = {**auth, "Last-Event-ID": "999999999999999999"}
        for _ in range(4):
            ended = await web.get(f"/v1/jobs/{job_id}/events", headers=ahead)
            assert ended.status_code == 204  # (final, nothing follows)
            refused = await web.get("/v1/events", headers={**auth, "Last-Event-ID": "x"})
            assert refused.status_code == 400
            with pytest.raises(InvalidStatus) as ws_refused:
                async with connect(f"ws://{base}/v1/ws?since=x", additional_headers=auth):
                    pass
            assert ws_refused.value.response.status_code == 400
        # then streams still open, up to the limit
        async with (
            web.stream("GET", "/v1/events", headers=auth) as one,
            web.stream("GET", "/v1/events", headers=auth) as two,
        ):
            assert (one.status_code, two.status_code) == (200, 200)


async def test_each_stream_takes_its_own_place_as_it_begins(app: App, tmp_path: Path) -> None:
    # A stream that subscribed gave back the oldest place, not its own: each route must
    # hand its place to its subscription (a route that did not left its place taken 5 s
    # beside its stream, refusing requests the limit had room for).
    operators = app.settings.with_(
        api_tokens={**app.settings.api_tokens, "tok-ops": "ops"},
        admin_principals=frozenset({"ops"}),
    )
    served = App("streams-ops", settings=operators)
    served.message("t.task")(Task)
    api = create_app(served)
    auth = {"Authorization": f"Bearer {TOKENS['alice']}"}
    ops = {"Authorization": "Bearer tok-ops"}
    async with _serving(served, api) as base, httpx.AsyncClient(base_url=f"http://{base}") as web:
        hub = api.state.runtime.hub  # (once the web tier is open)
        posted = await web.post("/v1/jobs/t.task", json={"name": "x"}, headers=auth)
        job_id = posted.json()["id"]  # (no worker: it waits, its stream stays open)
        for path, who in (
            ("/v1/events", auth),
            (f"/v1/jobs/{job_id}/events", auth),
            ("/dashboard/events", ops),
            (f"/dashboard/jobs/{job_id}/events", ops),
        ):
            async with asyncio.timeout(10):  # (the stream before ended: its server saw)
                while hub.streams:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            earlier = hub.admit(100)  # (a request admitted before, its stream to come)
            async with web.stream("GET", path, headers=who) as stream:
                assert stream.status_code == 200, path
                await asyncio.wait_for(anext(stream.aiter_bytes()), 10)  # (it began)
                assert hub.streams == 1 and list(hub._opening) == [earlier], path
            hub.release(earlier)
        async with asyncio.timeout(10):
            while hub.streams:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        earlier = hub.admit(100)
        async with connect(f"ws://{base}/v1/ws", additional_headers=auth) as ws:
            await asyncio.wait_for(ws.recv(), 10)  # hello: subscribed
            assert hub.streams == 1 and list(hub._opening) == [earlier], "/v1/ws"
    await served.close()
