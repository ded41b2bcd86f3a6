"""How many jobs a worker claims ahead of its free slots: a pure rule, sized by run times."""

from __future__ import annotations

from collections.abc import Iterable

#: Most jobs a worker claims ahead of free slots (`--prefetch`; 0 turns prefetch off).
DEFAULT_PREFETCH = 256
#: Prefetch holds about this many seconds of work, by the mean run time of recent jobs: short
#: jobs are claimed in big batches while long ones are never held back from other workers.
PREFETCH_HORIZON_S = 0.1
#: Weights of the newest run time in the mean that sizes the prefetch: a longer run moves it
#: half way at once (long jobs stop the prefetch quickly), a shorter one only a little.
RUN_WEIGHT_UP, RUN_WEIGHT_DOWN = 0.5, 0.05
#: A run still going counts as late (its slot finishing less than others) once it has taken
#: this many times the mean: run times spread, and a run a little past the mean is no sign
#: of a hung handler (counted, a worker of a thousand slots walked hundreds of its runs as
#: each of them ended, and gave back more on noise).
LATE_AFTER_MEANS = 2.0
#: Seconds the jobs held ahead must stay beyond what the prefetch allows before they go
#: back: a moment's slowness (one slow run moves the mean half way, and a loaded machine
#: slows every slot at once) gives nothing back, while jobs that did turn out long do, this
#: long after the first long run ended. Each give-back is a write and a claim again; on
#: noise they repeated for nearly every job held.
GIVE_BACK_AFTER_S = 0.5


class Prefetch:
    """The prefetch rule of one worker: no I/O, no clock; the worker reports run times, and
    passes its clock's time and when each of its runs still going began (`running`, loop
    times, oldest first) to the rest.

    A run still going counts at what it has taken so far once that is twice the mean:
    slots held by runs far longer than the recent ones (a hung handler, jobs that turned out
    long before any of them ended) are not expected to finish anything within the horizon,
    so the jobs held ahead for them go back to idle workers, and no more are claimed for them.

    Args:
        limit: most jobs held ahead (`--prefetch`); 0 turns prefetch off.
        concurrency: the worker's slots (handlers running at once).
        horizon_s: the seconds of work to hold ahead.
    """

    __slots__ = ("concurrency", "horizon_s", "limit", "mean_run", "over_since")

    def __init__(self, limit: int, concurrency: int, horizon_s: float = PREFETCH_HORIZON_S) -> None:
        self.limit = limit
        self.concurrency = concurrency
        self.horizon_s = horizon_s
        #: Mean seconds a handler ran, over recent jobs (None until one has run).
        self.mean_run: float | None = None
        #: Since when more than twice the allowance is held (None while it is not).
        self.over_since: float | None = None

    def ran(self, seconds: float) -> None:
        """Count one handler run (finished, failed or timed out) in the mean run time."""
        mean = self.mean_run
        if mean is None:
            self.mean_run = seconds
        else:
            weight = RUN_WEIGHT_UP if seconds > mean else RUN_WEIGHT_DOWN
            self.mean_run = mean + weight * (seconds - mean)

    def allowance(self, now: float = 0.0, running: Iterable[float] = ()) -> int:
        """Jobs to hold ahead now: what the slots finish in `horizon_s`, up to `limit` (0
        until a run time is known). A free slot, or one whose run is not late (has taken no
        more than `LATE_AFTER_MEANS` times the mean so far), finishes `horizon_s / mean`; one
        whose run has taken `t`, late, `horizon_s / t`. `running` is oldest first: the walk
        stops at the first run that is not late (none after it is), so a worker reads only
        its late runs."""
        mean = self.mean_run
        if not self.limit or mean is None:
            return 0
        mean = max(mean, 1e-6)
        late = mean * LATE_AFTER_MEANS
        slots = float(self.concurrency)
        for began in running:
            taken = now - began
            if taken <= late:
                break
            slots -= 1.0 - mean / taken
        return min(self.limit, int(slots * self.horizon_s / mean))

    def claim_size(
        self, free: int, held_ahead: int, now: float = 0.0, running: Iterable[float] = ()
    ) -> int:
        """How many jobs to claim: free slots plus the allowance, less those held ahead; 0
        to wait, also while enough is in hand that the next claim can gather a bigger batch
        (fewer than half the allowance missing)."""
        allowance = self.allowance(now, running)
        room = free + allowance - held_ahead
        if room <= 0 or (held_ahead and room < max(1, allowance // 2)):
            return 0
        return room

    def excess(self, held_ahead: int, now: float, running: Iterable[float] = ()) -> int:
        """How many of the jobs held ahead to give back (the jobs turned out long): those
        beyond the allowance, once more than twice the allowance has been held for
        GIVE_BACK_AFTER_S up to `now` (within twice it, the writes are not worth it)."""
        keep = self.allowance(now, running)
        if held_ahead <= 2 * keep:
            self.over_since = None
            return 0
        if self.over_since is None:
            self.over_since = now
        if now - self.over_since < GIVE_BACK_AFTER_S:
            return 0
        self.over_since = None
        return held_ahead - keep

    def give_back_at(self) -> float | None:
        """When the jobs held ahead go back if nothing changes (see `excess`), or None."""
        return None if self.over_since is None else self.over_since + GIVE_BACK_AFTER_S
