"""How long a held lease surely lasts, by this worker's own clocks: the rule that keeps a
worker that stalled (SIGSTOP, a long pause, a suspended VM) from starting a job whose
lease lapsed meanwhile."""

from __future__ import annotations

from dataclasses import dataclass

#: A job held ahead starts without asking the backend only while its lease surely has more
#: than this many heartbeat intervals left; else the worker renews every lease it holds
#: first (one batched extend) and drops the jobs the backend refuses.
FRESH_HEARTBEATS = 1.0
#: A heartbeat that wakes this many intervals late means the worker stalled: it says so.
STALL_HEARTBEATS = 1.0


@dataclass(frozen=True, slots=True)
class Renewal:
    """When a lease was granted or last renewed, as this worker saw it: the moment the
    claim or extend left, by the loop's monotonic clock and by the wall clock.

    The backend stamps the expiry after the request left, so the lease lasts at least
    `lease_s` from then. Both clocks count: the monotonic one ignores wall-clock steps,
    while the wall clock also moves across a suspended machine, which the monotonic clock
    may not count. Whichever ran further decides.
    """

    mono: float
    wall: float

    def left_s(self, lease_s: float, *, mono: float, wall: float) -> float:
        """Seconds the lease surely has left at (`mono`, `wall`); 0 or less: it may have
        lapsed."""
        return lease_s - max(mono - self.mono, wall - self.wall)


def fresh(
    renewal: Renewal, lease_s: float, heartbeat_s: float, *, mono: float, wall: float
) -> bool:
    """Whether a held job may start on its lease as it stands: more than
    `FRESH_HEARTBEATS` heartbeat intervals surely left (the next beat renews it in time)."""
    return renewal.left_s(lease_s, mono=mono, wall=wall) > FRESH_HEARTBEATS * heartbeat_s


def stalled_s(slept_s: float, meant_s: float) -> float:
    """How long the worker stalled, from a heartbeat sleep of `meant_s` that took
    `slept_s`: the lateness, when more than `STALL_HEARTBEATS` intervals, else 0."""
    late = slept_s - meant_s
    return late if late > STALL_HEARTBEATS * meant_s else 0.0
