"""Calls to a database server, tried again while their connection is lost, until a deadline."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..errors import BackendError

T = TypeVar("T")

#: Seconds a call keeps trying again after a lost connection (OFFLOAD_RETRY_DEADLINE): long
#: enough for a fast restart of the server, short enough that a caller is answered.
DEFAULT_RETRY_DEADLINE_S = 10.0
#: Retry budget of a readiness ping (seconds): enough to replace a killed idle connection,
#: short enough that a probe learns at once that the server is down.
PING_DEADLINE_S = 1.0
#: Longest pause between two attempts (the first is immediate: a killed idle connection
#: is simply replaced).
_MAX_PAUSE_S = 1.0
_FIRST_PAUSE_S = 0.05
#: The least time between two warnings of retries (the others, and how many, at debug).
RETRY_WARNING_EVERY_S = 10.0


class Retrier:
    """Runs an attempt again while it fails for a lost or refused connection.

    An attempt is told whether it is a resend (an earlier attempt was sent and may have
    been applied, its reply lost): each operation decides what a resend must do to answer
    as the first attempt would have (see the backends' docstrings). Any other error, or
    one past the deadline, is raised as it is.

    Args:
        transient: whether a driver error (the BackendError's cause) is a lost connection.
        deadline_s: how long after the first attempt a new one may start.
        log: where retries are reported: at warning, at most once every
            `RETRY_WARNING_EVERY_S` with how many there were since (every call of a backend
            shares its retrier, so an outage is a few lines, not one a retry), else debug.
        engine: the engine's name, for the log.
    """

    def __init__(
        self,
        transient: Callable[[BaseException], bool],
        *,
        deadline_s: float = DEFAULT_RETRY_DEADLINE_S,
        log: logging.Logger,
        engine: str,
        on_retry: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.transient = transient
        self.deadline_s = deadline_s
        self.log = log
        self.engine = engine
        #: Run before each new attempt (PostgreSQL checks its idle pooled connections).
        self.on_retry = on_retry
        #: When a retry may be warned of again, and the retries not warned of since.
        self._warn_after = 0.0
        self._unsaid = 0
        #: Whether a retry was warned of since the backend last answered after one.
        self._warned = False

    async def run(
        self, attempt: Callable[[bool], Awaitable[T]], *, deadline_s: float | None = None
    ) -> T:
        """`attempt(resent)` until it returns, fails otherwise, or the deadline passes
        (`deadline_s` when given, else the retrier's)."""
        give_up = time.monotonic() + (self.deadline_s if deadline_s is None else deadline_s)
        pause, resent = 0.0, False
        while True:
            try:
                answer = await attempt(resent)
            except BackendError as exc:
                self._again(exc, give_up, pause)
            else:
                if resent and self._warned:
                    self._back()
                return answer
            await asyncio.sleep(pause * random.uniform(0.5, 1.0))
            pause = min(_MAX_PAUSE_S, max(_FIRST_PAUSE_S, pause * 2))
            resent = True
            if self.on_retry is not None:
                try:
                    await self.on_retry()
                except Exception as exc:  # the next attempt meets the same failure, and says it
                    self.log.debug("before a retry: %s", exc)

    def run_sync(self, attempt: Callable[[bool], T]) -> T:
        """`run` for a blocking `attempt(resent)` on the calling thread (no event loop):
        the same resends, pauses and deadline; `on_retry` is not run."""
        give_up = time.monotonic() + self.deadline_s
        pause, resent = 0.0, False
        while True:
            try:
                answer = attempt(resent)
            except BackendError as exc:
                self._again(exc, give_up, pause)
            else:
                if resent and self._warned:
                    self._back()
                return answer
            time.sleep(pause * random.uniform(0.5, 1.0))
            pause = min(_MAX_PAUSE_S, max(_FIRST_PAUSE_S, pause * 2))
            resent = True

    def _again(self, exc: BackendError, give_up: float, pause: float) -> None:
        """Raise `exc` unless it is a lost connection and the next attempt, `pause` seconds
        away, starts before `give_up`; else say that it will be tried again."""
        cause = exc.__cause__
        if cause is None or not self.transient(cause):
            raise exc
        now = time.monotonic()
        if now + pause >= give_up:
            exc.out_of_reach = True
            raise exc
        if now < self._warn_after:
            self._unsaid += 1
            self.log.debug("%s connection lost (%s); trying again", self.engine, exc)
            return
        unsaid, self._unsaid, self._warn_after = self._unsaid, 0, now + RETRY_WARNING_EVERY_S
        self._warned = True
        since = f" ({unsaid} more retries since the last warning)" if unsaid else ""
        self.log.warning(
            "%s connection lost (%s); trying again%s",
            self.engine,
            " ".join(str(exc).split()),  # one line (libpq's message has several)
            since,
            extra={"action": "backend_retry", "engine": self.engine, "unsaid": unsaid},
        )

    def _back(self) -> None:
        """A call answered after retries, one of them warned of: say so, with the retries
        not warned of since."""
        unsaid, self._unsaid, self._warned = self._unsaid, 0, False
        self.log.info(
            "%s answers again (%d more retries since the last warning)",
            self.engine,
            unsaid,
            extra={"action": "backend_back", "engine": self.engine, "unsaid": unsaid},
        )
