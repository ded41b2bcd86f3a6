"""Lease rescue: the policy for jobs whose worker stopped heartbeating.

The backend reports lapsed leases (`expired`) and applies decisions (`rescue`); what becomes
of each job is decided here, in Python, with the handler's own retry budget and backoff, as
for an attempt that failed: a killed worker is a failed attempt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ..contract import JobState, Lapsed, Lease, Outcome
from ..retry import MAX_RETRY_DELAY_S, Backoff, should_retry

#: The error a rescued job carries.
LEASE_EXPIRED = {
    "type": "LeaseExpired",
    "message": "the worker stopped heartbeating; its lease lapsed",
}


class RetryPolicy(Protocol):
    """What decides a lapsed job's fate: a handler's budget and backoff (`HandlerSpec`)."""

    @property
    def max_attempts(self) -> int | None: ...
    @property
    def backoff(self) -> Backoff: ...


#: Backoff of a kind this worker has no handler for (the message's budget still holds).
_DEFAULT_BACKOFF = Backoff()


def decide(lapsed: Lapsed, spec: RetryPolicy | None, now: float) -> Outcome:
    """What becomes of one lapsed job: `cancelled` when a cancel was asked for, `dead` when
    the handler's budget (else the message's) is spent, else `retrying` after the handler's
    backoff for the attempt that lapsed."""
    lease = lapsed.lease
    error = dict(LEASE_EXPIRED)
    if lapsed.cancel_requested:
        return Outcome(lease=lease, state=JobState.CANCELLED, error=error)
    return retry_or_dead(lease, spec, error, now)


def retry_or_dead(
    lease: Lease,
    spec: RetryPolicy | None,
    error: dict[str, Any],
    now: float,
    delay: float | None = None,
) -> Outcome:
    """A failed attempt (a handler's error, or a lapsed lease): `dead` when the handler's
    budget (else the message's) is spent, else `retrying` after `delay`, by default the
    handler's backoff for the attempt that failed."""
    env = lease.envelope
    budget = (spec.max_attempts if spec is not None else None) or env.max_attempts
    if not should_retry(env.attempt, budget):
        return Outcome(lease=lease, state=JobState.DEAD, error=error, max_attempts=budget)
    if delay is None or not 0 <= delay <= MAX_RETRY_DELAY_S:  # (`Retry` checks its own)
        backoff = spec.backoff if spec is not None else _DEFAULT_BACKOFF
        delay = backoff.delay(env.attempt)
    return Outcome(
        lease=lease, state=JobState.RETRYING, error=error, run_at=now + delay, max_attempts=budget
    )


def decide_all(
    lapsed: list[Lapsed], spec_of: Callable[[str], RetryPolicy | None], now: float
) -> list[Outcome]:
    """`decide` for a batch; `spec_of(kind)` finds the handler of a kind (None: unknown)."""
    return [decide(one, spec_of(one.lease.envelope.kind), now) for one in lapsed]
