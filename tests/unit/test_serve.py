"""The bound on a request's head, as the server's protocol reads a connection chunk by chunk
(a transport that keeps what is written: each test chooses where the reads split)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from offload.web import serve
from offload.web.serve import MAX_HEAD_BYTES, server_options

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
    """Answers 200 to every request once its body is read; /slow only once released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.errors: list[BaseException] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        if scope["path"] == "/slow":
            await self.release.wait()
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
        except BaseException as exc:
            self.errors.append(exc)
            raise


def connection(app: App) -> tuple[asyncio.Protocol, Transport]:
    config = uvicorn.Config(app, log_level="error", lifespan="off", **server_options())
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


@pytest.mark.usefixtures("short_bounds")
@pytest.mark.parametrize("answered_before", [False, True], ids=["first", "after-an-answer"])
async def test_a_head_that_stops_coming_is_answered_408(answered_before: bool) -> None:
    protocol, transport = connection(App())
    expected = []
    if answered_before:
        protocol.data_received(_get("/a"))
        await answered(transport, [b"200"])
        expected = [b"200"]
    protocol.data_received(b"GET /b HTTP/1.1\r\nHo")  # and then nothing
    await answered(transport, [*expected, b"408"])
    await closed(transport)
    assert b"application/problem+json" in transport.out and b"request-timeout" in transport.out


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
