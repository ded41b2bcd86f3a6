"""The HTTP server `offload web` runs, over a real socket: a request's head is bounded, and
what the server refuses before any route is a problem document like every other error."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError

from offload import App, Message, Settings
from offload.web import create_app, serve
from offload.web.serve import (
    BODY_IDLE_S,
    MAX_HEAD_BYTES,
    MAX_WS_MESSAGE_BYTES,
    _h11_protocol,
    server_options,
)
from tests.web_clients import uvicorn_served

pytestmark = pytest.mark.anyio


class Note(Message):
    n: str


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, **options: Any) -> AsyncIterator[int]:
    """The web tier served by uvicorn as `offload web` serves it, on a loopback port."""
    app = App("served", settings=Settings(url=f"sqlite:///{tmp_path / 'jobs.db'}"))
    app.message("t.note")(Note)
    async with uvicorn_served(
        create_app(app), log_level="error", **(options or server_options())
    ) as port:
        yield port


def exchange(port: int, request: bytes) -> bytes:
    """Send `request` whole and read every byte answered until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def answer_of(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    line, *fields = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
    return int(line.split()[1]), headers, body


def _get(headers: bytes = b"", end: bool = True) -> bytes:
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers
    return request + (b"\r\n" if end else b"")


async def test_a_request_head_over_the_bound_is_a_431_problem(tmp_path: Path) -> None:
    async with serving(tmp_path) as port:
        # Given a header field larger than the bound, its head never ending,
        request = _get(b"X-A: " + b"a" * (MAX_HEAD_BYTES + 1000), end=False)
        # when it is sent, the server answers 431, a problem document, and closes.
        status, headers, body = answer_of(await asyncio.to_thread(exchange, port, request))
        assert status == 431
        assert headers["content-type"] == "application/problem+json"
        assert headers["connection"] == "close"
        assert json.loads(body)["type"].endswith("/request-head-too-large")


async def test_a_head_within_the_bound_is_served_whatever_follows_it(tmp_path: Path) -> None:
    async with serving(tmp_path) as port:
        # Given a head just within the bound, followed in the same send by a body larger
        # than the bound (the count stops at the head's end),
        fields = b"X-A: " + b"a" * (MAX_HEAD_BYTES - 200) + b"\r\n"
        body = b'{"n": "' + b"b" * (2 * MAX_HEAD_BYTES) + b'"}'
        request = (
            b"POST /v1/jobs/t.note HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            + fields
            + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body
        )
        assert len(request.partition(b"\r\n\r\n")[0]) < MAX_HEAD_BYTES
        status, _, answer = answer_of(await asyncio.to_thread(exchange, port, request))
        # then the route takes it in, not the server refusing it.
        assert status == 202, answer
        # And two requests sent at once on one connection are both answered.
        both = _get() + _get(b"Connection: close\r\n")
        raw = await asyncio.to_thread(exchange, port, both)
        assert raw.count(b"HTTP/1.1 200 OK") == 2


async def test_a_request_that_is_not_http_is_a_400_problem(tmp_path: Path) -> None:
    async with serving(tmp_path) as port:
        for request in (b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nHost: \x00\r\n\r\n"):
            status, headers, body = answer_of(await asyncio.to_thread(exchange, port, request))
            assert status == 400, request
            assert headers["content-type"] == "application/problem+json"
            assert json.loads(body)["type"].endswith("/malformed-request")


async def test_without_httptools_h11_bounds_the_head_and_answers_a_problem(
    tmp_path: Path,
) -> None:
    options = {"http": _h11_protocol(), "h11_max_incomplete_event_size": MAX_HEAD_BYTES}
    async with serving(tmp_path, **options) as port:
        request = _get(b"X-A: " + b"a" * (MAX_HEAD_BYTES + 1000), end=False)
        status, headers, body = answer_of(await asyncio.to_thread(exchange, port, request))
        assert status == 400 and headers["content-type"] == "application/problem+json"
        assert json.loads(body)["type"].endswith("/malformed-request")
        ok = answer_of(await asyncio.to_thread(exchange, port, _get(b"Connection: close\r\n")))
        assert ok[0] == 200


def test_offload_web_serves_with_these_options() -> None:
    from offload.cli import _server

    server = _server(object(), "127.0.0.1", 8000)
    assert server.config.http is server_options()["http"]
    assert server.config.h11_max_incomplete_event_size == MAX_HEAD_BYTES
    assert server.config.ws_max_size == MAX_WS_MESSAGE_BYTES


async def test_a_websocket_message_over_the_bound_closes_the_stream(tmp_path: Path) -> None:
    # /v1/ws reads no client message: one within the bound is ignored, a larger one ends
    # the connection (1009) rather than being read whole, up to uvicorn's 16 MiB.
    async with serving(tmp_path) as port:
        async with connect(f"ws://127.0.0.1:{port}/v1/ws") as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
            await ws.send("x" * 1000)
            await (await ws.ping())  # answered: the stream is still open
            await ws.send("x" * (MAX_WS_MESSAGE_BYTES + 1))
            with pytest.raises(ConnectionClosedError) as closed:
                async with asyncio.timeout(30):
                    await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_a_head_that_stops_coming_is_a_408_and_a_websocket_outlives_that_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serve, "HEAD_TIMEOUT_S", 0.3)
    async with serving(tmp_path) as port:
        # Given a WebSocket open (its head came whole: the bound is not its lifetime),
        async with connect(f"ws://127.0.0.1:{port}/v1/ws") as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
            # when a head stops coming on another connection, it is answered 408 and closed
            status, headers, body = answer_of(
                await asyncio.to_thread(exchange, port, _get(end=False))
            )
            assert status == 408 and headers["content-type"] == "application/problem+json"
            assert json.loads(body)["type"].endswith("/request-timeout")
            # and the WebSocket, open for longer than that bound by now, still answers.
            await (await ws.ping())


def _handshake(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


#: Paths with no WebSocket: none at all, an HTTP route's (an event stream's, the
#: dashboard's), /v1/ws with a slash too many, and a file of the docs' static mount.
NO_WEBSOCKET = (
    "/v1/wsx", "/nope", "/dashboard", "/v1/events", "/v1/ws/", "/docs/assets/swagger-ui.css"
)  # fmt: skip


async def test_a_websocket_handshake_at_a_path_without_one_is_a_404_problem(
    tmp_path: Path,
) -> None:
    # Starlette's router (and static files) close such a handshake unanswered, which uvicorn
    # sends as a bare 403 with no body, where every other refusal is a problem document.
    async with serving(tmp_path) as port:
        for path in NO_WEBSOCKET:
            raw = await asyncio.to_thread(exchange, port, _handshake(path))
            status, headers, body = answer_of(raw)
            assert status == 404, raw[:300]
            assert headers["content-type"] == "application/problem+json"
            assert json.loads(body) == {
                "type": "https://offload.dev/problems/not-found",
                "title": "Not Found",
                "status": 404,
                "detail": "Not Found",
                "instance": path,
            }
        # while an HTTP request there is the 404 it was,
        request = b"GET /nope HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        status, headers, body = answer_of(await asyncio.to_thread(exchange, port, request))
        assert status == 404 and headers["content-type"] == "application/problem+json"
        assert json.loads(body)["instance"] == "/nope"
        # and the WebSocket route accepts.
        async with connect(f"ws://127.0.0.1:{port}/v1/ws") as ws:
            assert json.loads(await ws.recv())["type"] == "hello"


@pytest.mark.parametrize("parser", ["httptools", "h11"])
async def test_a_body_whose_chunks_do_not_parse_is_a_400_problem_at_once(
    tmp_path: Path, parser: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The refusal waited for the route's answer, and the route for a body that could no
    # longer come: nothing was answered, and the connection was held until its body's
    # idle time (30 s) ran out.
    options = server_options()
    if parser == "h11":
        options = {"http": _h11_protocol(), "h11_max_incomplete_event_size": MAX_HEAD_BYTES}
    async with serving(tmp_path, **options) as port:
        request = (
            b"POST /v1/jobs/t.note HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"zz\r\n{}\r\n0\r\n\r\n"
        )
        first = await asyncio.to_thread(_first_answer, port, request)
        status, headers, body = answer_of(first)
        assert status == 400, first
        assert headers["content-type"] == "application/problem+json"
        assert json.loads(body)["type"].endswith("/malformed-request")
        # And behind a valid request on the same connection, that one is answered first
        # (the refusal once took its place: its job stored, its client told 400)
        valid = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        for depth in (1, 2, 3):
            sent = valid * depth + request
            got = await asyncio.to_thread(_first_answer, port, sent, everything=True)
            *answers, last = got.split(b"HTTP/1.1 ")[1:]
            assert [a[:6] for a in answers] == [b"200 OK"] * depth, got
            assert last.startswith(b"400 Bad Request"), got
        # A client that waits for `100 Continue` is told 400 alone, and the log stays quiet
        with caplog.at_level(logging.ERROR):
            expecting = request.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n", 1)
            got = await asyncio.to_thread(_first_answer, port, valid + expecting, everything=True)
            assert b"100 Continue" not in got and b"400 Bad Request" in got, got
            await asyncio.sleep(0.2)  # (the route hears its client is gone)
        assert "Exception in ASGI application" not in caplog.text


def _first_answer(port: int, request: bytes, *, everything: bool = False) -> bytes:
    """What the server answers first to `request` (`everything`: all it answers until it
    closes), the connection left open (so that the server must answer before any close of
    the client's), each read within half a body's idle time."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        s.settimeout(BODY_IDLE_S / 2)
        got = s.recv(65536)
        while everything and (more := s.recv(65536)):
            got += more
        return got
