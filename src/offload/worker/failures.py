"""A worker's warnings of its failed calls to the backend, each kind at most once every
`RETRY_WARNING_EVERY_S`: in an outage every loop of a worker (claims, heartbeats, the
rescuer, the scheduler, the registry, the limits) fails again every second or so, and an
operator needs to read that it fails, and since when, not a line for each failure."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..brokers._retry import RETRY_WARNING_EVERY_S

log = logging.getLogger("offload.worker")


class FailureLog:
    """Warns of a failure of one kind (`what` failed, and how) at once, then of the next
    only once `every_s` has passed, with how many it did not warn of since (at debug)."""

    def __init__(
        self, every_s: float = RETRY_WARNING_EVERY_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.every_s = every_s
        self._clock = clock
        self._next: dict[str, float] = {}
        self._unsaid: dict[str, int] = {}

    def warn(self, what: str, exc: BaseException, *, action: str) -> None:
        """Log "`what` failed: `exc`" under `action` (a record's extra), at warning unless
        one of `what` was warned of less than `every_s` ago."""
        now = self._clock()
        # One kind: the call, and how it failed (an error of another sort during an
        # outage, a bug say, is warned of at once, not counted with the outage's).
        kind = f"{what}/{type(exc).__name__}/{getattr(exc, 'out_of_reach', False)}"
        if now < self._next.get(kind, float("-inf")):
            self._unsaid[kind] = self._unsaid.get(kind, 0) + 1
            log.debug("%s failed: %s", what, exc, extra={"action": action})
            return
        unsaid = self._unsaid.pop(kind, 0)
        self._next[kind] = now + self.every_s
        since = f" ({unsaid} more since the last warning)" if unsaid else ""
        said = " ".join(str(exc).split())  # one line: libpq's CONTEXT and DETAIL lines too
        extra = {"action": action, "unsaid": unsaid}
        log.warning("%s failed: %s%s", what, said, since, extra=extra)
