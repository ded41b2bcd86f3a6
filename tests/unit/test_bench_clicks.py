"""The burst's clicks process (`offload.bench.clicks`): each click is a browser's form post
on its own connection; answered clicks are timed, refused or broken ones counted."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from offload.bench.clicks import click_request, fire

pytestmark = pytest.mark.anyio


def test_a_click_is_the_form_post_a_signed_in_page_sends() -> None:
    raw = click_request(8000, "/reports", "session=abc", "t/k+n=")
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /reports HTTP/1.1"
    assert "Cookie: session=abc" in lines and "X-CSRF-Token: t/k+n=" in lines
    assert "Connection: close" in lines and "Accept: application/json" in lines
    assert body == b"csrf=t%2Fk%2Bn%3D"
    assert f"Content-Length: {len(body)}" in lines


@contextlib.asynccontextmanager
async def _server(statuses: list[int]) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A loopback server answering the given statuses in turn, then closing; what it got."""
    got: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        got.append(head + await reader.readexactly(length))
        status = statuses[(len(got) - 1) % len(statuses)]
        body = b'{"id": "j"}'
        writer.write(
            b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (status, len(body), body)
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1], got


async def test_every_click_is_sent_at_once_and_timed() -> None:
    async with _server([202]) as (port, got):
        clicks = [click_request(port, "/reports", f"s={i}", "tok") for i in range(20)]
        out = await fire(port, clicks, timeout=10)
    assert out["errors"] == 0 and len(out["acks_ms"]) == 20
    assert all(ms > 0 for ms in out["acks_ms"])
    assert sorted(got) == sorted(clicks)


async def test_refused_clicks_count_as_errors_not_acks() -> None:
    async with _server([202, 403]) as (port, _):
        out = await fire(port, [click_request(port, "/r", "s=1", "t")] * 10, timeout=10)
    assert out["errors"] == 5 and len(out["acks_ms"]) == 5


async def test_a_server_that_is_gone_is_an_error_per_click() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    out = await fire(port, [click_request(port, "/r", "s=1", "t")] * 3, timeout=5)
    assert out == {"acks_ms": [], "errors": 3}
