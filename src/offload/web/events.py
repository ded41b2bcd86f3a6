"""The change-feed hub (one watcher per web process) and server-sent event streams."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import orjson
from starlette.responses import Response, StreamingResponse

from ..brokers.base import Change
from ..contract import JobRow
from ..errors import BackendError

log = logging.getLogger("offload.web")

#: Changes buffered per subscriber before it is dropped (it resumes with Last-Event-ID).
DEFAULT_SUBSCRIBER_BUFFER = 1000
#: Seconds between keep-alive comments on an idle event stream.
DEFAULT_KEEPALIVE_S = 15.0
#: Longest wait of the watcher for a change before it checks again (seconds).
DEFAULT_WATCH_S = 1.0
#: Seconds between the moves of a hub that nobody listens to up to the feed's head.
DEFAULT_IDLE_S = 1.0
#: A read of the feed that succeeded this many seconds ago still answers `answering`.
READ_FRESH_S = 1.0
#: Seconds a stream admitted (`Hub.admit`) counts before it subscribes: its response
#: begins at once, and one that does not by then ended first.
OPENING_S = 5.0

T = TypeVar("T")


#: Headers of an event stream: no cache, and no proxy buffering (nginx) on the way.
EVENT_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class EventStreamResponse(StreamingResponse):
    """A server-sent event stream (`text/event-stream`)."""

    media_type = "text/event-stream"

    def __init__(
        self,
        content: AsyncIterator[bytes],
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(content, status_code, headers or EVENT_STREAM_HEADERS)


class Feed(Protocol):
    """What the hub and the streams read: the change feed and a job's current row.

    The App is one (the web tier reads nothing else); a bare JobStore is another.
    """

    async def get(self, job_id: str) -> JobRow | None: ...

    async def changes_since(
        self, seq: int, *, job_id: str | None = None, owner: str | None = None, limit: int = 500
    ) -> list[Change]: ...

    async def last_seq(self) -> int: ...

    async def feed_head(self, seq: int) -> int: ...

    async def wait_changes(self, timeout: float) -> None: ...


class Subscription:
    """One client's view of the feed: changes for one job, or for one owner."""

    def __init__(self, *, job_id: str | None = None, owner: str | None = None) -> None:
        self.job_id = job_id
        self.owner = owner
        #: Changes in feed order; None once the stream is to end (`end`).
        self.queue: asyncio.Queue[Change | None] = asyncio.Queue(DEFAULT_SUBSCRIBER_BUFFER)
        self.overflowed = False
        #: Set by `end`: the server is shutting down, the stream ends (the client resumes).
        self.ended = False

    def end(self) -> None:
        """End the stream that reads this subscription at its next read."""
        self.ended = True
        with contextlib.suppress(asyncio.QueueFull):  # (a full queue: it reads `ended`)
            self.queue.put_nowait(None)

    def offer(self, change: Change) -> None:
        try:
            self.queue.put_nowait(change)
        except asyncio.QueueFull:
            self.overflowed = True

    def reset(self) -> None:
        """Forget what is queued after an overflow (the reader replays from the store)."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.overflowed = False


@dataclass(eq=False, slots=True)
class Place:
    """A stream's place among those a process keeps, from its admission (`Hub.admit`) until
    its stream subscribes, or it is given back, or `OPENING_S` has passed."""

    at: float  # (monotonic seconds)


class Hub:
    """Reads the store's change feed once per process and fans it out to subscribers.

    Thousands of idle clients cost one watcher task, not one query loop each; and while
    nobody subscribes, the watcher reads no changes at all (`_idle`): a web process that only
    takes jobs in does not read back every job it stored.
    """

    def __init__(
        self,
        store: Feed,
        last_seq: Callable[[], Any],
        *,
        idle_s: float = DEFAULT_IDLE_S,
        restarts: bool = False,
    ) -> None:
        self.store = store
        self.idle_s = idle_s
        #: The feed may number its changes anew (`Capability.FEED_RESTARTS`): watched for
        #: (`_reset`). Elsewhere a newest position below the hub's is that of jobs deleted
        #: since (their entries go with them), not a feed that started again.
        self.restarts = restarts
        self._last_seq = last_seq
        self.by_job: dict[str, set[Subscription]] = {}
        self.by_owner: dict[str, set[Subscription]] = {}
        self.everyone: set[Subscription] = set()
        #: The subscriptions open now: each an event stream or a WebSocket (`admit`).
        self.streams = 0
        #: When each stream admitted but not subscribed yet was admitted (an event stream
        #: subscribes once its response has begun, after its route returned).
        self._opening: collections.deque[Place] = collections.deque()
        self.position = 0
        self._task: asyncio.Task[None] | None = None
        #: Set when a subscription begins; `_generation` counts them.
        self._wanted = asyncio.Event()
        self._generation = 0
        #: Set while the position is the feed's head as of the last read (the hub follows).
        self._caught_up = asyncio.Event()
        #: The head read that streams waiting past DEFAULT_WATCH_S share (`_shared_head`).
        self._head_read: asyncio.Future[int] | None = None
        #: The hub reads the store one read at a time (`_read`): its watcher, the streams'
        #: shared head read and their check hold one pooled connection between them.
        self._reads = asyncio.Lock()
        #: When a read of the feed last succeeded (monotonic).
        self._read_at = -math.inf
        #: The event loop the hub runs in (`start`): its lock and shared read belong to it.
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Set by `end_streams`: the server is shutting down.
        self.ending = False

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.position = await self._read(self._last_seq)
        self._task = asyncio.create_task(self._watch(), name="offload-hub")

    async def stop(self) -> None:
        if self._head_read is not None:  # a read still waiting for its turn never starts
            self._head_read.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def end_streams(self) -> None:
        """End every stream, and every one opened from now on, at its next read: the server
        is shutting down, and streams never end on their own (a server would wait for them
        until its graceful timeout, then cancel them). Their clients resume elsewhere with
        the last event's id."""
        self.ending = True
        for sub in [*self.everyone, *_all(self.by_job), *_all(self.by_owner)]:
            sub.end()

    def admit(self, limit: int) -> Place | None:
        """A place for one more stream, `limit` streams at most: those subscribed, and
        those admitted in the last `OPENING_S` that have not subscribed yet (a burst of
        requests all see the streams before theirs); None when there is none. It counts
        from now on."""
        now = time.monotonic()
        while self._opening and now - self._opening[0].at > OPENING_S:
            self._opening.popleft()  # (its request ended before its stream began)
        if self.streams + len(self._opening) >= limit:
            return None
        place = Place(now)
        self._opening.append(place)
        return place

    def release(self, place: Place | None) -> None:
        """Give back the place of a stream that will not open (its request refused, or
        answered otherwise): it was held `OPENING_S`, and cheap requests that open nothing
        kept every place taken. Only that place: one given up already (its time out) is
        not taken from another request."""
        with contextlib.suppress(ValueError):
            self._opening.remove(place)  # type: ignore[arg-type]  # (by identity)

    @contextlib.contextmanager
    def subscribe(
        self, *, job_id: str | None = None, owner: str | None = None, place: Place | None = None
    ) -> Any:
        """A subscription to one job's changes, one owner's, or (neither given) every
        change of every job (operators: the dashboard). `place`: the one its request was
        admitted to (`admit`), counted from now on as this stream."""
        sub = Subscription(job_id=job_id, owner=owner)
        if self.ending:
            sub.end()
        self._generation += 1
        self._wanted.set()
        self.streams += 1
        self.release(place)  # (its own: another request's stays taken)
        try:
            if job_id is None and owner is None:
                self.everyone.add(sub)
                try:
                    yield sub
                finally:
                    self.everyone.discard(sub)
                return
            index, key = (self.by_job, job_id) if job_id is not None else (self.by_owner, owner)
            assert key is not None
            index.setdefault(key, set()).add(sub)
            try:
                yield sub
            finally:
                subs = index.get(key)
                if subs is not None:
                    subs.discard(sub)
                    if not subs:
                        del index[key]
        finally:
            self.streams -= 1

    async def now(self) -> int:
        """The feed's position now, for a stream that begins from now on.

        Asked after subscribing: the hub passes the stream every change after its own
        position, and the answer is never below that. While the hub follows the feed that is
        its position; an idle hub, woken by the subscription, reads the feed first (one read
        for every stream that opens meanwhile, not one each), and if it cannot the streams
        read the head (one read for all, failing as the backend does), as they do at once
        from a hub that was not started.
        """
        if not self._caught_up.is_set():
            if self._task is not None:  # not started: nothing to wait for
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._caught_up.wait(), DEFAULT_WATCH_S)
            if not self._caught_up.is_set():
                return await self._shared_head()
        return self.position

    async def within(self, position: int) -> int:
        """`position`, or the feed's newest where it is past it: no event of any stream has
        it (a made-up Last-Event-ID, or one of a feed since reset); resumed there, a stream
        would skip every change numbered up to it, and a job's stream never end. Judged by
        the store's newest position, not the hub's alone: another web process may have
        sent a change this hub has not read yet."""
        if position <= self.position:
            return position
        return min(position, await self.store.last_seq())

    async def answering(self, within_s: float) -> None:
        """Whether the feed can be read now, for a response that cannot fail once it starts
        (an event stream's 200, a WebSocket accepted): a read of the hub's that succeeded
        within `READ_FRESH_S` answers, else the head read streams share, so that a thousand
        streams opened at once cost no pooled connection beyond the hub's one.

        Raises:
            BackendError: no read succeeds within `within_s`.
        """
        if time.monotonic() - self._read_at < READ_FRESH_S:
            return
        try:
            async with asyncio.timeout(within_s):
                await self._shared_head()
        except TimeoutError:
            raise BackendError(f"the backend did not answer within {within_s:g}s") from None

    async def _shared_head(self) -> int:
        """The feed's head, read once for every stream that asks while the read runs: a
        burst of new streams on a busy process must not take one pooled connection each.
        A request served in an event loop of its own (a test client's) reads it itself: the
        shared read and the hub's turn belong to the hub's loop."""
        if self._loop is not None and asyncio.get_running_loop() is not self._loop:
            return await self.store.feed_head(self.position)
        if self._head_read is None or self._head_read.done():
            read = self._read(lambda: self.store.feed_head(self.position))
            self._head_read = asyncio.ensure_future(read)
            self._head_read.add_done_callback(_retrieve)
        return await asyncio.shield(self._head_read)

    async def _read(self, read: Callable[[], Awaitable[T]]) -> T:
        """`read()`, after any other read of the hub's has ended; noted when it succeeds."""
        async with self._reads:
            result = await read()
        self._read_at = time.monotonic()
        return result

    def _listened(self) -> bool:
        return bool(self.by_job or self.by_owner or self.everyone)

    async def _watch(self) -> None:
        # A backend error must not end the watcher: every stream of the process hangs on it.
        while True:
            try:
                if self._listened():
                    await self._pass_on()
                else:
                    await self._idle()
            except BackendError as exc:
                log.warning("change feed read failed: %s", exc, extra={"action": "feed_error"})
                await asyncio.sleep(1.0)
            except Exception:  # a surprise: said loudly, and the streams still follow
                log.exception("change feed watcher failed", extra={"action": "feed_error"})
                await asyncio.sleep(1.0)

    async def _pass_on(self) -> None:
        """Read the changes after the position and offer each to its subscribers; wait for
        more when the feed has no more."""
        changes = await self._read(lambda: self.store.changes_since(self.position, limit=1000))
        for change in changes:
            self.position = change.seq
            for sub in self.by_job.get(change.job_id, ()):
                sub.offer(change)
            for sub in self.by_owner.get(change.owner, ()):
                sub.offer(change)
            for sub in self.everyone:
                sub.offer(change)
        if (
            self.restarts
            and not changes
            and 0 < (newest := await self._read(self.store.last_seq)) < self.position
        ):
            self._reset(newest)
        if len(changes) < 1000:
            self._caught_up.set()
            await self.store.wait_changes(DEFAULT_WATCH_S)

    def _reset(self, newest: int) -> None:
        """The feed numbers its changes anew from below the hub's position (a Redis that
        lost its data: a restart without persistence, a failover to a replica behind):
        every change from now on would be taken for one already sent, and no stream would
        see it. The hub follows the new feed, and every stream ends, for its client to
        resume (its last event id, past the new feed, resumes from its newest change)."""
        log.warning(
            "the change feed starts anew (its newest position %d is below %d, where this "
            "process read it up to): the backend lost its data; open streams end, for "
            "their clients to resume",
            newest,
            self.position,
            extra={"action": "feed_reset"},
        )
        self.position = newest
        for sub in [*self.everyone, *_all(self.by_job), *_all(self.by_owner)]:
            sub.end()

    async def _idle(self) -> None:
        """Nobody listens: move the position to the feed's head, reading positions only,
        then wait for a subscriber (or `idle_s`, to move again).

        A stream replays from the store what it needs after subscribing, so the hub may skip
        whatever the feed held before the subscription began, and nothing after: a head read
        that a subscription overlapped (it may have replayed before the read ended) is
        dropped, and the changes are read from the position as it was.
        """
        self._caught_up.clear()
        generation = self._generation
        head = await self._read(lambda: self.store.feed_head(self.position))
        if generation == self._generation:
            self.position = head
        if self._listened():
            return
        self._wanted.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wanted.wait(), self.idle_s)


def _retrieve(read: asyncio.Future[int]) -> None:
    """Mark a shared read's error as seen: its streams got it, or had all gone."""
    if not read.cancelled():
        read.exception()


def sse(change: Change, present: Callable[[JobRow], dict[str, Any]]) -> bytes:
    """One server-sent event: id = feed position, event = the job's state."""
    data = orjson.dumps(present(change.row))
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (change.seq, change.row.state.encode(), data)


async def _ending_cleanly(stream: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
    """`stream`, ended (not broken) when the backend stays unreachable past its retry
    deadline while the stream reads it: the response has begun, so no problem document
    can follow; the client reconnects with Last-Event-ID and resumes where it was."""
    try:
        async with contextlib.aclosing(stream):
            async for chunk in stream:
                yield chunk
    except BackendError as exc:
        log.warning("event stream ended: %s", exc, extra={"action": "stream_backend_error"})


async def job_events_response(
    hub: Hub,
    store: Feed,
    row: JobRow,
    since: int,
    present: Callable[[JobRow], dict[str, Any]],
    place: Place | None = None,
) -> Response:
    """The response of one job's event stream from feed position `since`: `job_stream`, or
    204 when the job is final and no change of it follows `since`. A browser reconnects to
    a stream that ended, with the last event's id, every few seconds for as long as the page
    stays open; an EventSource stops only when told 204 (which opens no stream: its caller
    releases the place `admit_stream` gave the request)."""
    if row.state.final and not await store.changes_since(since, job_id=row.id, limit=1):
        return Response(status_code=204)
    return EventStreamResponse(job_stream(hub, store, row.id, since, present, place=place))


def _all(index: Mapping[str, set[Subscription]]) -> list[Subscription]:
    return [sub for subs in index.values() for sub in subs]


def job_stream(
    hub: Hub,
    store: Feed,
    job_id: str,
    since: int,
    present: Callable[[JobRow], dict[str, Any]],
    keepalive_s: float = DEFAULT_KEEPALIVE_S,
    place: Place | None = None,
) -> AsyncIterator[bytes]:
    """Replay a job's changes after `since`, then follow it live until its final state
    (ended early if the backend stays unreachable: the client resumes). `place`: its
    request's among the streams (`Hub.admit`)."""
    return _ending_cleanly(_job_events(hub, store, job_id, since, present, keepalive_s, place))


async def _job_events(
    hub: Hub,
    store: Feed,
    job_id: str,
    since: int,
    present: Callable[[JobRow], dict[str, Any]],
    keepalive_s: float,
    place: Place | None,
) -> AsyncGenerator[bytes, None]:
    with hub.subscribe(job_id=job_id, place=place) as sub:
        last = since
        while True:  # replay from the store first; live changes queue up meanwhile
            changes = await store.changes_since(last, job_id=job_id)
            for change in changes:
                last = change.seq
                yield sse(change, present)
                if change.final:
                    return
            if len(changes) < 500:
                break
        row = await store.get(job_id)
        if row is not None and row.state.final:
            # It ended: its final change came before `since`, or after the replay read the
            # feed (then it is the one left to send; the hub may not have passed it on yet).
            for change in await store.changes_since(last, job_id=job_id):
                yield sse(change, present)
            return
        yield b"retry: 1000\n\n"
        async for chunk in _follow_job(sub, store, job_id, last, present, keepalive_s):
            yield chunk


async def _follow_job(
    sub: Subscription,
    store: Feed,
    job_id: str,
    last: int,
    present: Callable[[JobRow], dict[str, Any]],
    keepalive_s: float,
) -> AsyncGenerator[bytes, None]:
    """A job's live changes after `last`, until its final one (or its deletion)."""
    while not sub.overflowed:
        try:
            change = await asyncio.wait_for(sub.queue.get(), keepalive_s)
        except TimeoutError:
            if await _deleted(store, job_id):
                return  # deleted (purged) while waiting: no change will come; a client
                # that comes back is answered 404, which ends an EventSource for good
            yield b": keep-alive\n\n"
            continue
        if change is None or sub.ended:
            return
        if change.seq <= last:
            continue
        last = change.seq
        yield sse(change, present)
        if change.final:
            return


async def _deleted(store: Feed, job_id: str) -> bool:
    """Whether the job is gone; a backend that does not answer says nothing (an outage
    must not end a stream: its reconnect would be answered 503, which ends an
    EventSource for good)."""
    try:
        return await store.get(job_id) is None
    except BackendError:
        return False


async def follow_owner(
    hub: Hub,
    store: Feed,
    sub: Subscription,
    owner: str | None,
    last: int,
    *,
    replay: bool,
    keepalive_s: float = DEFAULT_KEEPALIVE_S,
) -> AsyncGenerator[Change | None, None]:
    """Every change of `owner`'s jobs (None: of every job) after feed position `last`,
    forever.

    With `replay`, changes already in the store come first; then live ones from the hub
    subscription `sub` (made before `last` was read, so nothing falls between). A reader
    that falls so far behind that its buffer overflowed catches up from the store. Yields
    None after `keepalive_s` without a change (time for a keep-alive).

    A replay reads the store only up to the hub's position (`Hub.now`, asked after
    subscribing): every change at or below it is in the store for good, and every change
    after it reaches `sub`. Read further, a PostgreSQL feed may hold a change of one job
    whose neighbour, a change of another job at a lower position, has not committed yet:
    that one would then come from the hub below `last`, and be dropped.
    """
    while True:
        if replay:
            settled = await hub.now()
            replayed = _replay(store, owner, last, settled)
            async with contextlib.aclosing(replayed):
                async for change in replayed:
                    last = change.seq
                    yield change
            last = max(last, settled)
            replay = False
        try:
            live = await asyncio.wait_for(sub.queue.get(), keepalive_s)
        except TimeoutError:
            yield None
            continue
        if live is None or sub.ended:
            return
        if sub.overflowed:
            sub.reset()
            replay = True
        elif live.seq > last:
            last = live.seq
            yield live


async def _replay(
    store: Feed, owner: str | None, last: int, settled: int
) -> AsyncGenerator[Change, None]:
    """`owner`'s changes (None: every job's) after position `last`, up to `settled`."""
    while last < settled:
        changes = await store.changes_since(last, owner=owner)
        for change in changes:
            if change.seq > settled:
                return
            last = change.seq
            yield change
        if len(changes) < 500:
            return


def owner_stream(
    hub: Hub,
    store: Feed,
    owner: str | None,
    since: int | None,
    present: Callable[[JobRow], dict[str, Any]],
    keepalive_s: float = DEFAULT_KEEPALIVE_S,
    place: Place | None = None,
) -> AsyncIterator[bytes]:
    """Server-sent events of every change of `owner`'s jobs (None: of every job, for
    operators): after `since` when given
    (resuming), else from now on. Opens with the stream's position as its event id, so a
    client that reconnects before any event still resumes where it was. Ends if the
    backend stays unreachable while it replays (the client resumes). `place`: its
    request's among the streams (`Hub.admit`)."""
    events = _owner_events(hub, store, owner, since, present, keepalive_s, place)
    return _ending_cleanly(events)


async def _owner_events(
    hub: Hub,
    store: Feed,
    owner: str | None,
    since: int | None,
    present: Callable[[JobRow], dict[str, Any]],
    keepalive_s: float,
    place: Place | None,
) -> AsyncGenerator[bytes, None]:
    with hub.subscribe(owner=owner, place=place) as sub:
        last = await hub.now() if since is None else since
        yield b"retry: 1000\nid: %d\n\n" % last
        changes = follow_owner(
            hub, store, sub, owner, last, replay=since is not None, keepalive_s=keepalive_s
        )
        async with contextlib.aclosing(changes):
            async for change in changes:
                yield b": keep-alive\n\n" if change is None else sse(change, present)
