"""The feed's head (`JobStore.feed_head`) and the hub that moves to it while nobody listens:
a stream that opens meanwhile still gets every change after its position, on every backend."""

from __future__ import annotations

import asyncio

import pytest

from offload.brokers import Backend
from offload.web.events import Hub, owner_stream

from ..feed_support import Through
from ._support import envelope

pytestmark = pytest.mark.anyio


async def test_the_head_is_the_newest_position_and_never_behind_the_reader(
    backend: Backend,
) -> None:
    assert await backend.feed_head(0) == await backend.last_seq() == 0
    await backend.enqueue([envelope() for _ in range(5)])
    head = await backend.last_seq()
    assert head > 0
    assert await backend.feed_head(0) == head
    assert await backend.feed_head(head) == head


class LateHead(Through):
    """`backend` as the hub reads it, its head read a moment after it was asked for: a
    stream that subscribes meanwhile replays before the head is read (the race of a
    pooled backend, made likely)."""

    async def feed_head(self, seq: int) -> int:
        await asyncio.sleep(0.005)
        return await super().feed_head(seq)


async def test_streams_that_open_while_the_hub_moves_on_lose_no_change(
    backend: Backend,
) -> None:
    # Given a hub that nobody listens to, moving to the feed's head all the time,
    feed = LateHead(backend)
    hub = Hub(feed, feed.last_seq, idle_s=0)
    await hub.start()
    stop = asyncio.Event()

    async def produce() -> None:
        while not stop.is_set():
            await backend.enqueue([envelope(owner="alice")])
            await asyncio.sleep(0)

    producer = asyncio.create_task(produce())
    try:
        for _ in range(20):
            # when a stream opens from a position while jobs keep coming
            since = await backend.last_seq()
            stream = owner_stream(hub, backend, "alice", since, lambda row: {"id": row.id})
            seen: list[int] = []
            async with asyncio.timeout(10):
                await stream.__anext__()  # the opening position
                end = None
                while end is None or not seen or seen[-1] < end:
                    chunk = await stream.__anext__()
                    if chunk.startswith(b"id: "):
                        seen.append(int(chunk.split(b"\n")[0][4:]))
                    if end is None and len(seen) >= 3:
                        end = await backend.last_seq()
            await stream.aclose()  # type: ignore[attr-defined]
            # then it gets every change after it, in order, once (every job is alice's).
            assert seen == list(range(since + 1, seen[-1] + 1))
    finally:
        stop.set()
        await producer
        await hub.stop()
