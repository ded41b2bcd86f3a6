"""Group commit: concurrent enqueues of one process share one backend call.

A call that finds no flush in flight lets the event loop turn once, then is sent at once,
with the calls that arrived in that turn: a lone caller is delayed by one turn of the loop
and nothing more. Calls that arrive while a flush is in flight wait for it and then go
together. Either way a group holds up to `DEFAULT_GROUP_MAX_JOBS` jobs and is one backend
call (one transaction, one script call, one statement). The added wait is bounded by one
flush.

The turn matters under load: the requests of one read of the sockets arrive in the same
turn, and without it the first went alone and the rest waited for it (two commits where one
does; on SQLite the lone one on the loop's thread). In `bench/api_latency.py`'s closed loop
on SQLite the web process's CPU per request fell by about a tenth (bench/RESULTS.md).

Each caller still gets its own results and its own error: a group the backend refuses (all
or none) is sent again one caller at a time, so a bad job fails only the call that carried
it. Every caller returns only after its own jobs are committed, as an ungrouped call does.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from .contract import EnqueueResult, Envelope
from .errors import StorageFull

#: The most jobs one group carries; a call with at least this many goes alone.
DEFAULT_GROUP_MAX_JOBS = 64

Store = Callable[[Sequence[Envelope]], Awaitable[list[EnqueueResult]]]
_Entry = tuple[Sequence[Envelope], "asyncio.Future[list[EnqueueResult]]"]


class GroupCommit:
    """Coalesces `submit` calls made on one event loop into shared `store` calls.

    Attributes:
        flushes: how many `store` calls carried groups (a count for tests and benchmarks).
    """

    def __init__(self, store: Store, *, max_jobs: int = DEFAULT_GROUP_MAX_JOBS) -> None:
        self._store = store
        self.max_jobs = max_jobs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: deque[_Entry] = deque()
        self._busy = False
        self._drainer: asyncio.Task[None] | None = None
        self.flushes = 0

    async def submit(self, envelopes: Sequence[Envelope]) -> list[EnqueueResult]:
        """Store `envelopes` (atomically, as one backend call would): when nothing is in
        flight, after one turn of the loop with the calls made in it; else in the next
        group."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        if loop is not self._loop or len(envelopes) >= self.max_jobs:
            return await self._store(envelopes)  # another loop's call, or a batch of its own
        if self._busy:
            future: asyncio.Future[list[EnqueueResult]] = loop.create_future()
            self._pending.append((envelopes, future))
            return await future
        self._busy = True
        try:
            # One turn of the loop first: the calls of requests read in the same turn (a
            # web process under load reads several sockets at once) go with this one.
            await asyncio.sleep(0)
        except BaseException:
            self._hand_on(loop)
            raise
        if self._pending:
            # They go together, flushed by a task of their own as any group is: a caller
            # that gives up then drops only its own jobs, never those it would carry.
            mine: asyncio.Future[list[EnqueueResult]] = loop.create_future()
            self._pending.appendleft((envelopes, mine))
            self._drainer = loop.create_task(self._drain())
            return await mine
        try:
            self.flushes += 1
            return await self._store(envelopes)
        finally:
            self._hand_on(loop)

    def _hand_on(self, loop: asyncio.AbstractEventLoop) -> None:
        """After a call that went alone: calls that waited for it go next, in groups."""
        if self._pending:
            self._drainer = loop.create_task(self._drain())
        else:
            self._busy = False

    async def _drain(self) -> None:
        try:
            while self._pending:
                await self._flush(self._take())
        finally:
            self._busy = False
            self._drainer = None
            while self._pending:  # the drainer itself was cancelled (the loop is closing)
                self._pending.popleft()[1].cancel()

    def _take(self) -> list[_Entry]:
        """The next group: waiting calls in arrival order, up to `max_jobs` jobs (at least
        one call); calls whose caller gave up (cancelled) are dropped, never stored."""
        group: list[_Entry] = []
        jobs = 0
        while self._pending:
            envelopes, future = self._pending[0]
            if future.done():
                self._pending.popleft()
                continue
            if group and jobs + len(envelopes) > self.max_jobs:
                break
            group.append(self._pending.popleft())
            jobs += len(envelopes)
        return group

    async def _flush(self, group: list[_Entry]) -> None:
        if not group:
            return
        self.flushes += 1
        try:
            results = await self._store([e for envelopes, _ in group for e in envelopes])
        except asyncio.CancelledError:
            for _, future in group:
                future.cancel()
            raise
        except Exception as exc:
            alike = getattr(exc, "out_of_reach", False) or isinstance(exc, StorageFull)
            if len(group) == 1 or alike:
                # Out of reach for the whole retry deadline: whether the group was stored is
                # not known, and each caller is told so, as a lone call would be (sent again
                # as a first attempt, a stored group read as "already exists: nothing was
                # stored", and each call waited out another deadline). Storage full refuses
                # every caller alike: sent alone, each would be refused again.
                for _, future in group:
                    _settle(future, exc)
                return
            # The backend refused the group as a whole (all or none: nothing was stored).
            # Each call goes again alone, so only the one that carried the fault fails.
            await asyncio.gather(*(self._alone(entry) for entry in group))
            return
        start = 0
        for envelopes, future in group:
            _settle(future, results[start : start + len(envelopes)])
            start += len(envelopes)

    async def _alone(self, entry: _Entry) -> None:
        envelopes, future = entry
        if future.done():
            return
        try:
            _settle(future, await self._store(envelopes))
        except Exception as exc:
            _settle(future, exc)


def _settle(
    future: asyncio.Future[list[EnqueueResult]], outcome: list[EnqueueResult] | Exception
) -> None:
    if future.done():  # its caller was cancelled meanwhile
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
