"""In-process clients of a web tier, one per principal, each sending its bearer token."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping

import httpx

from offload import App
from offload.web import create_app

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
