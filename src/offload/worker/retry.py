"""Retry policy: when an attempt failed, decide between retrying later and giving up."""

from __future__ import annotations

import random
from dataclasses import dataclass

#: Delay before the first retry (seconds): soon enough that a blip heals fast.
DEFAULT_BACKOFF_BASE_S = 1.0
#: Longest delay between two attempts (seconds).
DEFAULT_BACKOFF_CAP_S = 3600.0
#: Fraction of the delay that is randomised, so retries of a burst spread out.
DEFAULT_JITTER = 0.5


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
        if self.base_s < 0 or self.factor < 1 or self.cap_s < 0 or not 0 <= self.jitter <= 1:
            raise ValueError("backoff needs base_s >= 0, factor >= 1, cap_s >= 0, 0<=jitter<=1")

    def ceiling(self, attempt: int) -> float:
        """The delay before attempt+1, without jitter. `attempt` counts from 1."""
        exponent = max(0, attempt - 1)
        # Cap the exponent before computing: factor**1000 overflows a float.
        if self.factor > 1 and exponent > 64:
            return self.cap_s
        return min(self.cap_s, self.base_s * self.factor**exponent)

    def delay(self, attempt: int, rand: random.Random | None = None) -> float:
        """The delay before the next attempt after `attempt` failed, with jitter."""
        ceiling = self.ceiling(attempt)
        r = (rand or random).random()
        return ceiling * (1 - self.jitter * r)


def should_retry(attempt: int, max_attempts: int) -> bool:
    """True while the retry budget has attempts left after `attempt` (counted from 1)."""
    return attempt < max_attempts
