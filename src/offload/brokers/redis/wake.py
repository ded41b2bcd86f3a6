"""Wake-ups of the Redis backend: one pub/sub connection that counts announcements."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from ...errors import BackendError
from .._wakeup import Wakeup

log = logging.getLogger("offload.brokers")

#: Seconds to wait for Redis to confirm a subscription.
DEFAULT_SUBSCRIBE_TIMEOUT_S = 5.0
#: Longest pause between two attempts to subscribe again after the connection dropped.
DEFAULT_RESUBSCRIBE_MAX_S = 1.0

#: What a reader saw: (epoch, counts), compared with the current ones to tell news.
WorkMark = tuple[int, dict[str, int]]
FeedMark = tuple[int, int]


class Announcements:
    """Counts what the scripts PUBLISH: work per queue, and feed growth.

    A reader takes a mark before it reads (claim, or an unfiltered feed read) and then
    waits until the counts move past the mark, so an announcement that lands between the
    read and the wait is never lost. When the connection drops, `epoch` moves: whatever was
    announced meanwhile is unknown, so every waiter looks again.

    The subscription starts with the first reader (`follow`, before it takes its first
    mark): the first `wait` for work, or the first read of the feed; not at `start`. A
    process that only enqueues (a web tier that streams nothing, a producer script) never
    reads, and a worker that waits on its wake-up tokens (`wait_and_claim`) never waits
    here: either would otherwise receive, and parse, an announcement for every job stored.

    Args:
        client: the backend's client (its pool lends the pub/sub connection).
        work: channel of work announcements (the data is a queue name).
        changes: channel of feed announcements.
    """

    def __init__(self, client: aioredis.Redis, *, work: str, changes: str) -> None:
        self.client = client
        self.channels = (work, changes)
        self.epoch = 0
        self.work: dict[str, int] = {}
        self.feed = 0
        self._wakeup = Wakeup()
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        """Ready to be waited on; the subscription itself comes with the first wait."""
        self._wakeup.open()

    async def follow(self) -> None:
        """Subscribe, unless done already: announcements made after this returns are
        counted (or, while Redis cannot be reached, `epoch` moves when it is back)."""
        if self._task is None:
            if not self._wakeup.is_open:
                return
            self._task = asyncio.create_task(self._follow(), name="offload-redis-wake")
        if not self._subscribed.is_set():
            await self._subscribed.wait()

    @property
    def following(self) -> bool:
        """Whether announcements are counted (or, while Redis cannot be reached, `epoch`
        will move when they are again): a mark taken now misses none."""
        return self._task is not None and self._subscribed.is_set()

    async def stop(self) -> None:
        """Stop listening; waiters (now and later) return at once."""
        self._subscribed.set()  # nobody waits for a subscription that will not come
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.epoch += 1
        self._wakeup.close()

    def work_mark(self) -> WorkMark:
        return self.epoch, dict(self.work)

    def work_moved(self, mark: WorkMark | None, queues: Sequence[str]) -> bool:
        if mark is None:
            return True
        epoch, seen = mark
        return epoch != self.epoch or any(self.work.get(q, 0) != seen.get(q, 0) for q in queues)

    def feed_mark(self) -> FeedMark:
        return self.epoch, self.feed

    async def wait_until(self, moved: Callable[[], bool], timeout: float) -> None:
        """Return once `moved()` holds (checked after every announcement) or on timeout."""
        await self.follow()
        await self._wakeup.wait_until(moved, timeout)

    # -- the listener -----------------------------------------------------------------------

    async def _subscribe(self) -> PubSub:
        pubsub = self.client.pubsub()
        try:
            await pubsub.subscribe(*self.channels)
            confirmed = 0
            while confirmed < len(self.channels):
                message = await pubsub.get_message(timeout=DEFAULT_SUBSCRIBE_TIMEOUT_S)
                if message is None:
                    raise BackendError("Redis did not confirm the wake-up subscription")
                confirmed += message["type"] == "subscribe"
        except BaseException:  # its connection goes back to the pool, not astray
            with contextlib.suppress(RedisError, OSError):
                # Typed from redis-py 8.2 on; untyped before it.
                await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
            raise
        return pubsub

    def _notify(self) -> None:
        self._wakeup.ring()

    async def _follow(self) -> None:
        """Subscribe (again and again while Redis cannot be reached), then listen."""
        try:
            pubsub = await self._subscribe()
        except (RedisError, OSError, BackendError) as exc:
            log.warning(
                "Redis wake-ups not subscribed: %s", exc, extra={"action": "redis_pubsub_lost"}
            )
            self._subscribed.set()  # readers go on: `epoch` moves once it is subscribed
            pubsub = await self._resubscribe()
        self._subscribed.set()
        await self._listen(pubsub)

    async def _listen(self, pubsub: PubSub) -> None:
        work = self.channels[0]
        while True:
            try:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=30.0)
            except (RedisError, OSError) as exc:
                log.warning(
                    "Redis wake-up connection lost: %s", exc, extra={"action": "redis_pubsub_lost"}
                )
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
                pubsub = await self._resubscribe()
                continue
            if message is None:
                continue
            if message["channel"] == work:
                queue = message["data"]
                self.work[queue] = self.work.get(queue, 0) + 1
            else:
                self.feed += 1
            self._notify()

    async def _resubscribe(self) -> PubSub:
        pause = 0.05
        while True:
            self.epoch += 1  # announcements are being missed: let every waiter look again
            self._notify()
            await asyncio.sleep(pause)
            try:
                pubsub = await self._subscribe()
            except (RedisError, OSError, BackendError):
                pause = min(DEFAULT_RESUBSCRIBE_MAX_S, pause * 2)
                continue
            self.epoch += 1
            self._notify()
            log.info("Redis wake-ups resubscribed", extra={"action": "redis_pubsub_back"})
            return pubsub
