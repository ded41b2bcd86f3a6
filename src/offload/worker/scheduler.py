"""The worker's scheduler: enqueues each due tick of the app's periodic schedules.

Every worker process runs one, so there is no beat process to keep alive; which process
stores a tick's job is the backend's decision (`ScheduleStore.fire_schedule`), so it is
stored once however many race for it.
"""

from __future__ import annotations

import asyncio
import logging

from ..app import App
from ..errors import BackendError
from ..periodic import Schedule, due
from .failures import FailureLog

log = logging.getLogger("offload.worker")

#: Longest sleep between two looks at the schedules (seconds): a clock that jumps, or a
#: schedule whose next tick is far off, is looked at again this often.
DEFAULT_SCHEDULER_POLL_S = 5.0
#: Seconds to wait after the backend failed before trying again.
BACKEND_RETRY_S = 1.0


class Scheduler:
    """Enqueues the due ticks of `app.schedules`, reading time from `app.clock`.

    Args:
        since: when this process began running schedules (epoch seconds): ticks before it
            fell due while it was not running, so they count as missed unless another
            process enqueued them (see `periodic.due`).
    """

    def __init__(self, app: App, *, since: float, failures: FailureLog | None = None) -> None:
        self.app = app
        self.failures = failures or FailureLog()
        self.since = since
        #: Jobs this scheduler stored (a tick another process had is not counted).
        self.created = 0
        #: The time the last look at the schedules (`fire_due`) judged what was due by.
        self.looked_at: float | None = None

    async def fire_due(self) -> int:
        """Enqueue every schedule's due ticks once; returns how many jobs this call stored."""
        backend = await self.app._opened_backend()
        last = {s.name: s.last_tick for s in await backend.schedule_states()}
        now = self.app.clock.now()
        self.looked_at = now
        stored = 0
        for schedule in self.app.schedules.values():
            ticks = due(schedule, last=last.get(schedule.name), now=now, since=self.since)
            if not ticks:
                continue
            # One schedule's failure is its own: the schedules after it still fire.
            try:
                stored += await self._fire(schedule, ticks)
            except Exception as exc:  # its message, a refusal: tried again at the next look
                if isinstance(exc, BackendError) and exc.out_of_reach:
                    self.created += stored  # an outage: every other schedule would wait it out
                    raise
                self.failures.warn(f"schedule {schedule.name}", exc, action="periodic_error")
        self.created += stored
        return stored

    async def _fire(self, schedule: Schedule, ticks: list[float]) -> int:
        jobs = await self.app.fire(schedule, ticks)
        created = [j for j in jobs if j is not None and j.created]
        for job in created:
            log.info(
                "enqueued %s for schedule %s",
                job.id,
                schedule.name,
                extra={"action": "periodic_enqueue", "schedule": schedule.name, "job_id": job.id},
            )
        return len(created)

    def sleep_s(self) -> float:
        """Seconds until the next tick of any schedule, at most `DEFAULT_SCHEDULER_POLL_S`.

        The next tick is the first after the time the last look judged by (`looked_at`),
        not after the clock now: a sleep that woke a little before a tick found it not yet
        due, and by now the clock may have passed it; the next tick after now would leave it
        waiting for the following one (up to the poll, 5 s late). This one is due at once.
        """
        now = self.app.clock.now()
        looked = now if self.looked_at is None else min(self.looked_at, now)
        ticks = [s.next_after(looked) for s in self.app.schedules.values()]
        upcoming = [t for t in ticks if t is not None]
        if not upcoming:
            return DEFAULT_SCHEDULER_POLL_S
        return max(0.0, min(min(upcoming) - now, DEFAULT_SCHEDULER_POLL_S))

    async def run(self) -> None:
        """Fire due ticks, then sleep until the next one, until cancelled."""
        while True:
            try:
                await self.fire_due()
            except BackendError as exc:
                self.failures.warn("scheduler", exc, action="periodic_error")
                await asyncio.sleep(BACKEND_RETRY_S)
                continue
            await asyncio.sleep(self.sleep_s())
