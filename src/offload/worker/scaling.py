"""The autoscaler's policy: from backlog readings, when to add or remove a worker process.

Pure and clock-injected: `ScalingPolicy.decide` takes the time of each reading as an
argument, so tests step through minutes of traffic without sleeping. The supervisor that
carries the decisions out lives in `worker.autoscaler`.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

#: The oldest ready job may wait this long before a process is added (seconds).
DEFAULT_TARGET_WAIT_S = 2.0
#: A process is removed after the backlog has been quiet this long (seconds).
DEFAULT_SCALE_DOWN_AFTER_S = 30.0
#: The shortest gap between two decisions (seconds): a new process takes about this long
#: to start and show in the backlog (the gap is the target wait when that is longer).
DEFAULT_COOLDOWN_S = 1.0
#: How long a process still starting (not yet claiming) holds back a further scale-up
#: (seconds): one that takes longer no longer blocks.
DEFAULT_START_WAIT_S = 30.0
#: How far back the clearing rate is measured (seconds): busy intervals inside it count.
DEFAULT_RATE_WINDOW_S = 10.0

#: Why a decision was made, as its metric label says.
REASON_OLDEST_AGE = "oldest_age"
REASON_BACKLOG = "backlog"
REASON_QUIET = "quiet"

_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds in `text`: `2s`, `500ms`, `1m`, `1h` or plain seconds (`2`, `0.5`).

    Raises:
        ValueError: not a duration (the message says what is expected).
    """
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration: give e.g. 2s, 500ms, 1m or seconds")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def parse_bounds(text: str) -> tuple[int, int]:
    """(MIN, MAX) worker processes from `MIN:MAX`, with 1 <= MIN <= MAX.

    Raises:
        ValueError: not two whole numbers, MIN below 1 or MAX below MIN.
    """
    low, sep, high = text.partition(":")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit():
        raise ValueError(f"{text!r} is not MIN:MAX (two whole numbers, e.g. 1:8)")
    bounds = int(low), int(high)
    if bounds[0] < 1:
        raise ValueError(f"MIN must be at least 1 (got {bounds[0]}): one process always runs")
    if bounds[1] < bounds[0]:
        raise ValueError(f"MAX ({bounds[1]}) must not be below MIN ({bounds[0]})")
    return bounds


@dataclass(frozen=True)
class Backlog:
    """One reading of the queues the workers serve.

    Args:
        ready: jobs due now and waiting to be claimed.
        oldest_age_s: how long the oldest of them has been due (0.0 when none).
        completed: attempts ended so far, a running count (only its increase matters).
    """

    ready: int
    oldest_age_s: float
    completed: int


@dataclass(frozen=True)
class Decision:
    """Add or remove one process: `size` processes become `to`, for `reason` (a metric
    label), explained in `detail`."""

    direction: str
    size: int
    to: int
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"scale {self.direction} {self.size}→{self.to}: {self.detail}"


class ScalingPolicy:
    """Decides, reading by reading, whether the supervisor adds or removes a process.

    Up (to at most `max_processes`) when the oldest ready job has waited longer than
    `target_wait_s`, or when more jobs are ready than the running processes clear in that
    time at the rate they were seen to clear them while busy. Down (to at least
    `min_processes`) once the backlog has been quiet for `scale_down_after_s`: nothing ready
    has waited the target, and one process fewer would clear what is ready in time. Two
    decisions are at least `cooldown_s` apart, and each removal waits out a quiet period of
    its own. No process is added while one added before is still starting (for at most
    `start_wait_s`): it has not shown in the backlog yet.

    Args:
        min_processes: the fewest processes (at least 1).
        max_processes: the most processes (at least `min_processes`).
        target_wait_s: how long a ready job may wait.
        scale_down_after_s: how long the backlog stays quiet before a process is removed.
        cooldown_s: the shortest gap between decisions; default the longer of the target
            wait and `DEFAULT_COOLDOWN_S`.
        rate_window_s: how far back the clearing rate is measured.
        start_wait_s: the longest a process still starting holds back a scale-up.

    Raises:
        ValueError: bounds or durations out of range.
    """

    def __init__(
        self,
        *,
        min_processes: int,
        max_processes: int,
        target_wait_s: float = DEFAULT_TARGET_WAIT_S,
        scale_down_after_s: float = DEFAULT_SCALE_DOWN_AFTER_S,
        cooldown_s: float | None = None,
        rate_window_s: float = DEFAULT_RATE_WINDOW_S,
        start_wait_s: float = DEFAULT_START_WAIT_S,
    ) -> None:
        if not 1 <= min_processes <= max_processes:
            raise ValueError("need 1 <= min_processes <= max_processes")
        if target_wait_s <= 0 or scale_down_after_s < 0 or rate_window_s <= 0:
            raise ValueError("target_wait_s and rate_window_s must be above 0")
        if start_wait_s < 0:
            raise ValueError("start_wait_s must be 0 or more")
        self.min_processes = min_processes
        self.max_processes = max_processes
        self.target_wait_s = target_wait_s
        self.scale_down_after_s = scale_down_after_s
        self.cooldown_s = (
            max(target_wait_s, DEFAULT_COOLDOWN_S) if cooldown_s is None else cooldown_s
        )
        self.rate_window_s = rate_window_s
        self.start_wait_s = start_wait_s
        #: When the last decision was made (None: none yet).
        self.decided_at: float | None = None
        #: Since when every reading has been quiet (None: the last one was not).
        self.quiet_since: float | None = None
        self._last: tuple[float, Backlog, int] | None = None
        # Busy intervals inside the window: (end, jobs cleared, process-seconds spent).
        self._busy: deque[tuple[float, int, float]] = deque()

    def per_process_rate(self) -> float | None:
        """Jobs one process cleared per second while the backlog kept it busy, over the
        window (None: no busy interval with a completion in it)."""
        cleared = sum(n for _, n, _ in self._busy)
        spent = sum(s for _, _, s in self._busy)
        return cleared / spent if cleared > 0 and spent > 0 else None

    def decide(
        self,
        now: float,
        size: int,
        backlog: Backlog,
        *,
        alive: int | None = None,
        starting_since: float | None = None,
    ) -> Decision | None:
        """The decision after a reading taken at `now` (seconds, any monotonic clock), with
        `size` processes kept running; `alive` (default `size`) also counts processes still
        finishing after a removal, which MAX bounds too; `starting_since` is when the oldest
        process not yet started (claiming) was launched (None: every one has started).
        None: keep the size."""
        self._observe(now, size, backlog)
        alive = size if alive is None else alive
        cooled = self.decided_at is None or now - self.decided_at >= self.cooldown_s
        up = self._reason_up(size, backlog)
        if up is not None:
            self.quiet_since = None
            if self.starting(now, starting_since):
                return None  # the one added last has not shown in the backlog yet
            if cooled and size < self.max_processes and alive < self.max_processes:
                return self._decided(now, Decision("up", size, size + 1, *up))
            return None
        if not self._quiet(size, backlog):
            self.quiet_since = None
            return None
        if self.quiet_since is None:
            self.quiet_since = now
        quiet_s = now - self.quiet_since
        if size > self.min_processes and cooled and quiet_s >= self.scale_down_after_s:
            detail = f"quiet for {quiet_s:.1f} s (scale down after {self.scale_down_after_s:g} s)"
            return self._decided(now, Decision("down", size, size - 1, REASON_QUIET, detail))
        return None

    def starting(self, now: float, starting_since: float | None) -> bool:
        """Whether a process launched at `starting_since` and not started yet still holds
        back a scale-up at `now` (for at most `start_wait_s`)."""
        return starting_since is not None and now - starting_since < self.start_wait_s

    def _decided(self, now: float, decision: Decision) -> Decision:
        self.decided_at = now
        # The next removal waits out a quiet period of its own, from this one on.
        self.quiet_since = now if decision.direction == "down" else None
        return decision

    def _observe(self, now: float, size: int, backlog: Backlog) -> None:
        """Count the interval since the last reading toward the rate if the backlog kept
        every process busy through it (jobs ready at both ends)."""
        if self._last is not None:
            then, before, was = self._last
            busy = before.ready > 0 and backlog.ready > 0
            cleared = backlog.completed - before.completed
            if busy and now > then and cleared >= 0:
                self._busy.append((now, cleared, (now - then) * min(was, size)))
        self._last = (now, backlog, size)
        while self._busy and self._busy[0][0] < now - self.rate_window_s:
            self._busy.popleft()

    def _cleared_in_target(self, processes: int) -> float | None:
        rate = self.per_process_rate()
        return None if rate is None else rate * processes * self.target_wait_s

    def _reason_up(self, size: int, backlog: Backlog) -> tuple[str, str] | None:
        target = self.target_wait_s
        if backlog.ready > 0 and backlog.oldest_age_s > target:
            age = backlog.oldest_age_s
            return REASON_OLDEST_AGE, f"oldest ready job {age:.1f} s > target {target:g} s"
        cleared = self._cleared_in_target(size)
        if cleared is not None and backlog.ready > cleared:
            processes = "1 process clears" if size == 1 else f"{size} processes clear"
            detail = f"{backlog.ready} ready jobs > {cleared:.0f} that {processes} in {target:g} s"
            return REASON_BACKLOG, detail
        return None

    def _quiet(self, size: int, backlog: Backlog) -> bool:
        """Whether one process fewer would have kept up with this reading."""
        if backlog.ready == 0:
            return True
        cleared = self._cleared_in_target(size - 1)
        return cleared is not None and backlog.ready <= cleared
