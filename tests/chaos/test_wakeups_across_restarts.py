"""A process's wake-ups survive a restart of its engine: once the engine is back, a waiting
claimer (worker) and a waiting feed reader (web) wake at once on news again, instead of
sleeping out their poll interval because the LISTEN or pub/sub connection died with it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from offload import App, Message
from offload.brokers import open_backend
from offload.brokers.base import Backend
from offload.errors import BackendError

from .engine_support import HOW, RESTARTABLE, migrate, private_engine

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

#: A wake-up this fast came from the news, not from the waiter's timeout.
PROMPT_S = 0.5
#: The waiters' timeout: far longer than any wake-up by news.
WAIT_S = 8.0


class Ping(Message):
    n: int = 0


async def opened(url: str) -> Backend:
    backend = open_backend(url)
    await backend.open()
    return backend


async def woken_promptly(
    waiter: Callable[[], Awaitable[None]],
    look: Callable[[], Awaitable[object]],
    news: Callable[[], Awaitable[object]],
) -> bool:
    """Look (claim, read the feed), start waiting, make news; whether the wait ended
    within PROMPT_S of the news. False when the engine was not usable yet."""
    try:
        await look()
    except BackendError:
        return False
    waiting = asyncio.ensure_future(waiter())
    await asyncio.sleep(0.05)
    if waiting.done():  # woken by the reconnection itself (news may have been missed)
        waiting.result()
        return False
    try:
        await news()
    except BackendError:
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        return False
    made = time.monotonic()
    await asyncio.wait_for(waiting, WAIT_S + 5)
    return time.monotonic() - made < PROMPT_S


async def seconds_until_prompt(
    waiter: Callable[[], Awaitable[None]],
    look: Callable[[], Awaitable[object]],
    news: Callable[[], Awaitable[object]],
) -> float:
    """Seconds from now until a wait is woken promptly by news (fails after 60 s)."""
    began = time.monotonic()
    while time.monotonic() - began < 60:
        if await woken_promptly(waiter, look, news):
            return time.monotonic() - began
        await asyncio.sleep(0.05)
    raise AssertionError("wake-ups never worked again after the restart")


async def restart(engine: object, crash: bool, outage_s: float) -> None:
    """Stop the engine, keep it down `outage_s`, start it again (off the loop: it blocks)."""
    await asyncio.to_thread(engine.stop, crash=crash)  # type: ignore[attr-defined]
    await asyncio.sleep(outage_s)
    await asyncio.to_thread(engine.start)  # type: ignore[attr-defined]


@pytest.mark.parametrize("outage_s", [0.0, 8.0], ids=["restart", "outage8s"])
@pytest.mark.parametrize("crash", HOW)
@pytest.mark.parametrize("kind", RESTARTABLE)
async def test_a_waiting_claimer_wakes_at_once_again_after_a_restart(
    kind: str, crash: bool, outage_s: float, tmp_path: Path
) -> None:
    app = App("wake")
    app.message("wake.ping", queue="q")(Ping)
    with private_engine(kind, tmp_path) as engine:
        await migrate(engine.url)
        worker, producer = await opened(engine.url), await opened(engine.url)
        try:

            async def look() -> object:
                return await worker.claim(["q"], worker_id="w", lease_for=30, limit=100)

            async def news() -> object:
                return await producer.enqueue([app.envelope(Ping())])

            # Given a claimer whose wake-ups work
            assert await seconds_until_prompt(lambda: worker.wait(["q"], WAIT_S), look, news) < 1
            # When the engine goes down and comes back
            await restart(engine, crash, outage_s)
            # Then an enqueue wakes a waiting claimer at once again, within about a second
            # of the engine's return (not after a poll interval or a long reconnect backoff:
            # one doubling to 10 s came back 7 s after an 8 s outage).
            back = await seconds_until_prompt(lambda: worker.wait(["q"], WAIT_S), look, news)
            assert back < 3.0, f"wake-ups came back {back:.2f}s after the engine"
        finally:
            await worker.close()
            await producer.close()


@pytest.mark.parametrize("crash", HOW)
@pytest.mark.parametrize("kind", RESTARTABLE)
async def test_a_waiting_feed_reader_wakes_at_once_again_after_a_restart(
    kind: str, crash: bool, tmp_path: Path
) -> None:
    app = App("wake")
    app.message("wake.ping", queue="q")(Ping)
    with private_engine(kind, tmp_path) as engine:
        await migrate(engine.url)
        web, producer = await opened(engine.url), await opened(engine.url)
        try:

            async def look() -> object:
                return await web.changes_since(await web.last_seq(), limit=1000)

            async def news() -> object:
                return await producer.enqueue([app.envelope(Ping())])

            assert await seconds_until_prompt(lambda: web.wait_changes(WAIT_S), look, news) < 3
            await restart(engine, crash, 0.0)
            back = await seconds_until_prompt(lambda: web.wait_changes(WAIT_S), look, news)
            assert back < 3.0, f"feed wake-ups came back {back:.2f}s after the engine"
        finally:
            await web.close()
            await producer.close()


async def test_failed_resubscriptions_do_not_drain_the_redis_pool(tmp_path: Path) -> None:
    """While Redis refuses the wake-up subscription (an ACL without channels), each
    attempt to subscribe again gives its connection back to the pool."""
    import redis.asyncio as aioredis

    with private_engine("redis-always", tmp_path) as engine:
        backend = await opened(engine.url + "?pool_size=2")
        admin = aioredis.Redis(host="127.0.0.1", port=engine.port)
        try:
            # Given a backend whose subscription Redis now refuses (it drops the subscriber)
            await admin.execute_command("ACL", "SETUSER", "default", "resetchannels")  # type: ignore[no-untyped-call]
            await asyncio.sleep(3.0)  # a few refused attempts (one a second at most)
            # Then its two pooled connections still serve commands,
            async with asyncio.timeout(5):
                for _ in range(4):
                    await backend.ping()
            # and once Redis takes subscriptions again, wake-ups work again.
            await admin.execute_command("ACL", "SETUSER", "default", "allchannels")  # type: ignore[no-untyped-call]
            app = App("wake")
            app.message("wake.ping", queue="q")(Ping)

            async def look() -> object:
                return await backend.claim(["q"], worker_id="w", lease_for=30, limit=100)

            async def news() -> object:
                return await backend.enqueue([app.envelope(Ping())])

            assert await seconds_until_prompt(lambda: backend.wait(["q"], WAIT_S), look, news) < 5
        finally:
            await admin.aclose()
            await backend.close()
