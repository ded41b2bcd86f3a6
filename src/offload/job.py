"""Job: a handle on one enqueued job, to read its status, wait for its end or cancel it
(async or sync)."""

from __future__ import annotations

import asyncio
from dataclasses import KW_ONLY, dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING

from .clock import seconds
from .contract import JobState
from .errors import JobNotFound, JobTimeout
from .status import JobStatus

if TYPE_CHECKING:
    from .app import App

#: How long `Job.wait` waits for a final state by default (seconds).
DEFAULT_WAIT_S = 60.0
#: How often `Job.wait` looks at the job (seconds).
DEFAULT_WAIT_POLL_S = 0.05


@dataclass(frozen=True, slots=True, repr=False)
class Job:
    """What `enqueue` returns: a handle on one job (its id and kind), and whether this call
    created it (False: an idempotency key named an existing job, or `unique_repeat`: a job
    of a unique kind with the same key was queued, or active, and this is that job)."""

    id: str
    created: bool
    app: App
    _: KW_ONLY
    kind: str = ""
    unique_repeat: bool = False

    def __repr__(self) -> str:
        repeat = ", unique_repeat=True" if self.unique_repeat else ""
        return f"Job(id={self.id!r}, kind={self.kind!r}, created={self.created}{repeat})"

    async def status(self) -> JobStatus:
        """The job's status now, with its webhook and email deliveries.

        Raises:
            JobNotFound: the job is gone (purged, or pruned after its retention).
        """
        return JobStatus.of(await self.app.status(self.id))

    async def wait(
        self, timeout: float | timedelta = DEFAULT_WAIT_S, poll_s: float = DEFAULT_WAIT_POLL_S
    ) -> JobStatus:
        """Wait until the job is succeeded, failed, cancelled or dead; return its status.

        Raises:
            JobTimeout: not final within `timeout` (the job goes on).
            JobNotFound: the job is gone.
        """
        limit = seconds(timeout) or 0.0
        seen: list[JobState] = []
        scope = asyncio.timeout(limit)
        try:
            async with scope:
                return await self._final(poll_s, seen)
        except TimeoutError:
            if not scope.expired():
                raise
            last = seen[-1] if seen else None
            raise JobTimeout(self.id, kind=self.kind, timeout_s=limit, state=last) from None

    async def _final(self, poll_s: float, seen: list[JobState]) -> JobStatus:
        """Poll the job's row (cheaper than its record) until it is final; `seen` collects
        the states on the way, for the timeout's message."""
        while True:
            row = await self.app.get(self.id)
            if row is None:
                raise JobNotFound(self.id)
            seen.append(row.state)
            if row.state.final:
                return await self.status()
            await asyncio.sleep(poll_s)

    async def cancel(self) -> JobStatus:
        """Cancel the job (`App.cancel`): a waiting one ends `cancelled`, a running one is
        signalled (`ctx.cancelled`) and ends `cancelled` once its worker hears of it (at its
        next heartbeat). Returns its status after the change.

        Raises:
            JobNotFound: the job is gone.
            InvalidTransition: it is already final.
        """
        await self.app.cancel(self.id)
        return await self.status()

    def cancel_sync(self) -> JobStatus:
        """`cancel` for synchronous code, on the App's private loop thread."""
        return self.app._sync_call(lambda app: replace(self, app=app).cancel())

    def status_sync(self) -> JobStatus:
        """`status` for synchronous code, on the App's private loop thread (as `enqueue_sync`)."""
        return self.app._sync_call(lambda app: replace(self, app=app).status())

    def wait_sync(
        self, timeout: float | timedelta = DEFAULT_WAIT_S, poll_s: float = DEFAULT_WAIT_POLL_S
    ) -> JobStatus:
        """`wait` for synchronous code: blocks this thread, on the App's private loop thread."""
        return self.app._sync_call(lambda app: replace(self, app=app).wait(timeout, poll_s))
