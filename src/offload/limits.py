"""Fleet-wide limits per kind: the `rate="100/m"` syntax, and how many jobs a claim may start.

The backend keeps, per limited kind, its declared limits and the start times within the
rate's window (a sliding window log: "at most N starts in any `per_s` seconds" holds
exactly, where a token bucket lets up to 2N through across a window's edge). Inside a claim,
under the backend's lock, it counts the kind's running jobs and recent starts and asks
`allowance` how many more may start now; jobs over it stay queued, attempts unspent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from .contract import KindLimits
from .errors import ConfigurationError

T = TypeVar("T")

#: Seconds of each rate unit (`rate="100/m"`).
RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smh])\s*$")


def parse_rate(rate: str) -> tuple[int, float]:
    """`"100/m"` → (100, 60.0): at most 100 starts within any 60 seconds. Units s, m, h, with
    an optional count (`"10/5s"`: 10 within any 5 seconds).

    Raises:
        ConfigurationError: not of that form, or a count of 0.
    """
    match = _RATE.match(rate)
    if match is None:
        raise ConfigurationError(f"rate {rate!r} is not of the form '100/m' (units s, m, h)")
    count, times, unit = int(match[1]), int(match[2] or 1), match[3]
    if count < 1:
        raise ConfigurationError(f"rate {rate!r} allows nothing: the count starts at 1")
    if times < 1:
        raise ConfigurationError(f"rate {rate!r} has a window of 0 seconds")
    return count, times * RATE_UNITS[unit]


def format_rate(limits: KindLimits) -> str | None:
    """The rate as declared (`100/m`), or None for none."""
    if limits.rate is None or limits.per_s is None:
        return None
    for unit, seconds in RATE_UNITS.items():
        if limits.per_s == seconds:
            return f"{limits.rate}/{unit}"
    return f"{limits.rate}/{limits.per_s:g}s"


@dataclass(frozen=True, slots=True)
class Gate:
    """What a limited claim may start now, per kind, and when a held-back kind may start
    again on its own (its oldest start leaves the window); a kind held back by
    `max_running` waits for a settle instead (its settles wake the waiting workers)."""

    #: Jobs each limited kind may start now (absent: not limited).
    allow: Mapping[str, int]
    #: The earliest time (epoch seconds) a kind held back by its rate gets a start, or None.
    next_start_at: float | None

    @property
    def blocked(self) -> list[str]:
        return sorted(kind for kind, n in self.allow.items() if n <= 0)


def gate(
    limits: Sequence[KindLimits],
    *,
    running: Mapping[str, int],
    starts: Mapping[str, tuple[int, float | None]],
    now: float,
) -> Gate:
    """How many jobs of each limited kind may start at `now`.

    Args:
        limits: the stored limits of the kinds in the claimed queues.
        running: per kind, its jobs running now.
        starts: per rate-limited kind, its starts within the window ending at `now` (a
            start at `now - per_s` has left it), and the `rate`-th newest of them (None when
            fewer): the one that must leave before one more fits.
    """
    allow: dict[str, int] = {}
    due: list[float] = []
    for lim in limits:
        room = []
        if lim.max_running is not None:
            room.append(lim.max_running - running.get(lim.kind, 0))
        if lim.rate is not None and lim.per_s is not None:
            count, nth = starts.get(lim.kind, (0, None))
            room.append(lim.rate - count)
            if count >= lim.rate and nth is not None:
                due.append(nth + lim.per_s)
        allow[lim.kind] = max(0, min(room)) if room else 0
    return Gate(allow=allow, next_start_at=min(due) if due else None)


def take(allow: Mapping[str, int], kinds: Sequence[str], limit: int) -> list[int]:
    """The positions in `kinds` (candidates in claim order) a claim takes: at most `limit`,
    and of each limited kind at most its allowance."""
    left = dict(allow)
    out: list[int] = []
    for i, kind in enumerate(kinds):
        if len(out) >= limit:
            break
        n = left.get(kind)
        if n is None:
            out.append(i)
        elif n > 0:
            left[kind] = n - 1
            out.append(i)
    return out


def round_robin(lists: Sequence[Sequence[T]]) -> list[T]:
    """The first item of each list, then the second of each, and so on: the claim order of
    a fair queue over its owners' jobs (each list one owner's, in the order to serve them),
    and of a claim over several sources."""
    out: list[T] = []
    for i in range(max((len(x) for x in lists), default=0)):
        out += [x[i] for x in lists if i < len(x)]
    return out


def in_turn(sources: Sequence[Sequence[T]], turn: int) -> list[T]:
    """`round_robin` of the sources that hold anything, the first of them the one whose
    turn it is (`turn`, counted by the claimer across its claims): a claim of one job (a
    worker of a fair queue claims no more than its free slots, often one) took from the
    first source every time, so a fair queue claimed beside a plain one waited for its
    whole backlog."""
    held = [source for source in sources if source]
    if not held:
        return []
    first = turn % len(held)
    return round_robin(held[first:] + held[:first])


__all__ = [
    "RATE_UNITS",
    "Gate",
    "format_rate",
    "gate",
    "in_turn",
    "parse_rate",
    "round_robin",
    "take",
]
