"""In-process clients of a web tier, one per principal, each sending its bearer token."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import httpx
import uvicorn

from offload import App
from offload.web import create_app

from .ports import free_port

#: The Host the in-process clients send: a loopback name, as development mode requires.
BASE = "http://localhost"


@contextlib.asynccontextmanager
async def clients_of(
    app: App, tokens: Mapping[str, str]
) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """The web tier of `app`, its lifespan open, and a client per principal of `tokens`
    (principal: token) that sends that token."""
    api = create_app(app)
    async with api.router.lifespan_context(api):
        transport = httpx.ASGITransport(app=api)
        out = {
            who: httpx.AsyncClient(
                transport=transport, base_url=BASE, headers={"Authorization": f"Bearer {token}"}
            )
            for who, token in tokens.items()
        }
        try:
            yield out
        finally:
            for client in out.values():
                await client.aclose()


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the test process keeps its own signals
        yield


@contextlib.asynccontextmanager
async def uvicorn_served(api: Any, **options: Any) -> AsyncIterator[int]:
    """The ASGI app `api` served by uvicorn in this process on a loopback port (yielded),
    with uvicorn's `options` (log level warning unless given): WebSockets and the server's
    own behaviour over a real socket."""
    port = free_port()
    options.setdefault("log_level", "warning")
    server = _Server(uvicorn.Config(api, host="127.0.0.1", port=port, lifespan="on", **options))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:  # uvicorn sets a flag, no event
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
