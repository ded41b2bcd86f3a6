"""Retry policy: when an attempt failed, decide between retrying later and giving up.

A leaf: the App (per-handler backoff), the worker and the delivery handlers import it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import timedelta

#: Delay before the first retry (seconds): soon enough that a blip heals fast.
DEFAULT_BACKOFF_BASE_S = 1.0
#: Longest delay between two attempts (seconds).
DEFAULT_BACKOFF_CAP_S = 3600.0
#: Fraction of the delay that is randomised, so retries of a burst spread out.
DEFAULT_JITTER = 0.5
#: Longest delay before a retry (seconds), a `Retry(delay=)`'s or a backoff's cap: 366 days,
#: the longest `delay` the API takes (a year 33715 run time broke every read of its job).
MAX_RETRY_DELAY_S = 366 * 86400.0


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with a cap and jitter: base * factor**(attempt-1), capped.

    With jitter j, the delay is drawn uniformly from [d * (1 - j), d].
    """

    base_s: float = DEFAULT_BACKOFF_BASE_S
    factor: float = 2.0
    cap_s: float = DEFAULT_BACKOFF_CAP_S
    jitter: float = DEFAULT_JITTER

    def __post_init__(self) -> None:
        # Written as "not (valid)" so that NaN, which fails every comparison, is refused too.
        valid = (
            0 <= self.base_s < math.inf
            and 1 <= self.factor < math.inf
            and 0 <= self.cap_s <= MAX_RETRY_DELAY_S
            and 0 <= self.jitter <= 1
        )
        if not valid:
            raise ValueError(
                "backoff needs 0 <= base_s, 1 <= factor (finite), 0 <= cap_s <= "
                f"{MAX_RETRY_DELAY_S:.0f} (366 days), 0 <= jitter <= 1"
            )

    def ceiling(self, attempt: int) -> float:
        """The delay before attempt+1, without jitter. `attempt` counts from 1."""
        exponent = max(0, attempt - 1)
        try:
            value: float = self.base_s * math.pow(self.factor, exponent)
        except OverflowError:  # a float power past 1e308 is past any cap
            return self.cap_s
        return min(self.cap_s, value)

    def delay(self, attempt: int, rand: random.Random | None = None) -> float:
        """The delay before the next attempt after `attempt` failed, with jitter."""
        ceiling = self.ceiling(attempt)
        r = (rand or random).random()
        return ceiling * (1 - self.jitter * r)


def retry_delay(delay: float | timedelta) -> float:
    """`delay` as a retry's delay: seconds (or a `timedelta`) from 0 to `MAX_RETRY_DELAY_S`.

    Raises:
        ValueError: anything else (a NaN, an infinity, a negative or a longer delay).
    """
    if isinstance(delay, timedelta):
        delay = delay.total_seconds()
    if isinstance(delay, bool) or not isinstance(delay, int | float):
        raise ValueError(f"a retry's delay is a number of seconds, not {delay!r}")
    if not 0 <= delay <= MAX_RETRY_DELAY_S:  # (NaN fails both)
        raise ValueError(
            f"a retry's delay is 0 to {MAX_RETRY_DELAY_S:.0f} seconds (366 days), not {delay!r}"
        )
    return float(delay)


def should_retry(attempt: int, max_attempts: int) -> bool:
    """True while the retry budget has attempts left after `attempt` (counted from 1)."""
    return attempt < max_attempts
