"""The bound on a request's head, as the server's protocol reads a connection chunk by chunk
(a transport that keeps what is written: each test chooses where the reads split)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from offload.web import serve
from offload.web.serve import MAX_HEAD_BYTES, _h11_protocol, server_options

pytestmark = pytest.mark.anyio


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out, self.closed, self.ended = b"", False, False
        self.protocol: asyncio.BaseProtocol | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.ended = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class App:
    """Answers 200 to every request once its body is read (/early at once); /slow only once
    released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.errors: list[BaseException] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        while scope["path"] != "/early" and (await receive()).get("more_body"):
            pass  # (/early answers without reading the body, as a 413 by Content-Length does)
        if scope["path"] == "/slow":
            await self.release.wait()
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
        except BaseException as exc:
            self.errors.append(exc)
            raise


def connection(app: App, http: type | None = None) -> tuple[asyncio.Protocol, Transport]:
    """A connection served by `offload web`'s protocol (httptools'), or by `http`."""
    options = server_options() if http is None else {**server_options(), "http": http}
    config = uvicorn.Config(app, log_level="error", lifespan="off", **options)
    config.load()
    protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={})
    transport = Transport()
    transport.protocol = protocol
    protocol.connection_made(transport)
    return protocol, transport


def statuses(out: bytes) -> list[bytes]:
    return [line.split()[1] for line in out.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]


async def answered(transport: Transport, expected: list[bytes]) -> None:
    """Wait until the answers' status lines are `expected`, in order."""
    async with asyncio.timeout(10):
        while statuses(transport.out) != expected:  # noqa: ASYNC110 (what a transport kept)
            await asyncio.sleep(0.005)


def _get(path: str, fields: bytes = b"") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode() + fields + b"\r\n"


async def test_a_later_requests_head_read_at_once_is_bounded_too() -> None:
    # Given a connection whose first request was answered,
    app = App()
    protocol, transport = connection(app)
    protocol.data_received(_get("/a"))
    await answered(transport, [b"200"])
    # when the next request's head, over the bound, comes in one read, it is refused.
    protocol.data_received(_get("/b", b"X-Big: " + b"a" * (4 * MAX_HEAD_BYTES) + b"\r\n"))
    await answered(transport, [b"200", b"431"])


async def test_a_head_that_begins_in_the_read_of_a_bodys_end_is_counted_from_its_start() -> None:
    # Given a request whose large body ends in the read that begins the next request's head,
    app = App()
    protocol, transport = connection(app)
    body = b"x" * (2 * MAX_HEAD_BYTES)
    protocol.data_received(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
    protocol.data_received(body + b"GET /next HTTP/1.1\r\nHo")
    # when the rest of that small head comes, both requests are answered (no 431).
    protocol.data_received(b"st: x\r\n\r\n")
    await answered(transport, [b"200", b"200"])


async def test_a_refusal_waits_for_the_answer_under_way() -> None:
    # Given a request still being answered,
    app = App()
    protocol, transport = connection(app)
    protocol.data_received(_get("/slow"))
    await asyncio.sleep(0)
    # when the next one's head goes past the bound, nothing is written yet;
    protocol.data_received(b"GET /c HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * MAX_HEAD_BYTES)
    assert transport.out == b"" and not transport.ended
    # once the first is answered, the refusal follows it, and the answer was whole.
    app.release.set()
    await answered(transport, [b"200", b"431"])
    assert transport.ended and app.errors == []


# -- time: a head and a body that do not come --------------------------------------------

#: The bounds in these tests (seconds): short, for the timers to fire in the test's time.
SHORT_S = 0.05


@pytest.fixture
def short_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serve, "HEAD_TIMEOUT_S", SHORT_S)
    monkeypatch.setattr(serve, "BODY_IDLE_S", SHORT_S)


async def closed(transport: Transport) -> None:
    async with asyncio.timeout(10):
        while not transport.closed and not transport.ended:  # noqa: ASYNC110
            await asyncio.sleep(0.005)


@pytest.mark.usefixtures("short_bounds")
async def test_a_connection_that_sends_nothing_is_closed_without_an_answer() -> None:
    _, transport = connection(App())
    await closed(transport)
    assert transport.out == b""


#: Both protocols: httptools' (the `speed` extra), and h11's (without it).
PROTOCOLS = [pytest.param(None, id="httptools"), pytest.param(_h11_protocol(), id="h11")]


def fire_head_timer(protocol: Any) -> None:
    """Run the head's timer now, asserting it is armed (the test need not wait it out)."""
    timer = protocol._head_timer
    assert timer is not None, "the next request's head is not awaited"
    timer.cancel()
    protocol._head_late()


@pytest.mark.parametrize("http", PROTOCOLS)
@pytest.mark.parametrize("before", ["nothing", "an-answer", "two-answers-at-once"])
async def test_a_head_that_stops_coming_is_answered_408(http: type | None, before: str) -> None:
    protocol, transport = connection(App(), http)
    sent = {"nothing": b"", "an-answer": _get("/a"), "two-answers-at-once": _get("/a") + _get("/b")}
    expected = [b"200"] * sent[before].count(b"GET ")
    if expected:  # (pipelined, h11 makes the second request as the first's answer ends)
        protocol.data_received(sent[before])
        await answered(transport, expected)
    protocol.data_received(b"GET /c HTTP/1.1\r\nHo")  # and then nothing
    fire_head_timer(protocol)  # still awaited: the bytes of a head that did not end
    await answered(transport, [*expected, b"408"])
    assert b"application/problem+json" in transport.out and b"request-timeout" in transport.out


@pytest.mark.parametrize("http", PROTOCOLS)
async def test_a_body_still_coming_after_an_early_answer_is_no_late_head(
    http: type | None,
) -> None:
    # Given a request answered before its body was read (a 413 by its Content-Length),
    protocol, transport = connection(App(), http)
    protocol.data_received(b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    await answered(transport, [b"200"])
    # its body's end is awaited (as a body), not the next head: what comes is no late head
    assert protocol._head_timer is None and protocol._body_timer is not None
    protocol.data_received(b"x" * 99)
    # and once it ended, the next head is.
    fire_head_timer(protocol)
    assert transport.closed and statuses(transport.out) == [b"200"]  # nothing sent: closed


@pytest.mark.usefixtures("short_bounds")
async def test_a_body_that_stops_coming_closes_the_connection() -> None:
    app = App()
    protocol, transport = connection(app)
    protocol.data_received(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    await closed(transport)
    assert statuses(transport.out) == []


@pytest.mark.usefixtures("short_bounds")
async def test_a_request_being_answered_is_not_cut_by_the_heads_bound() -> None:
    app = App()
    protocol, transport = connection(app)
    protocol.data_received(_get("/slow"))
    await asyncio.sleep(10 * SHORT_S)  # (a longer wait only makes the check stronger)
    assert not transport.closed and statuses(transport.out) == []
    app.release.set()
    await answered(transport, [b"200"])
