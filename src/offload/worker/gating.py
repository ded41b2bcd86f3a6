"""Which claim a worker makes: the plain one, or the gated one (limits per kind, fair queues)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence

from ..app import App
from ..brokers import Backend
from ..contract import KindLimits, Lease
from ..errors import BackendError
from .failures import FailureLog

log = logging.getLogger("offload.worker")

Claim = Callable[..., Awaitable[list[Lease]]]


class ClaimGate:
    """The worker's view of the limits on its queues' kinds and of its fair queues.

    The plain claim costs nothing extra; the gated one (`Backend.claim_gated`) reads and
    obeys the stored limits inside the claim, and takes fair queues' jobs round-robin over
    owners. The worker makes the gated one while any kind of its queues is limited, by its
    own declaration or by another worker's (read back at every registry record), so a
    worker that declares nothing still obeys them, or while one of its queues is fair.
    It then claims no jobs ahead of free slots (prefetch): a job held ahead would hold a
    slot of its kind idle, or take an owner's turn before a slot is free to run it.

    Args:
        app: the app whose handlers declare the limits.
        queues: the queues the worker claims from.
    """

    def __init__(self, app: App, queues: Sequence[str], failures: FailureLog | None = None) -> None:
        self.queues = frozenset(queues)
        self.failures = failures or FailureLog()
        #: What this worker declares: every kind it runs, limited or not (the latest
        #: declaration of a kind wins, so one without limits lifts them).
        self.declared: list[KindLimits] = [
            h.limits() for h in app.handlers.values() if h.message.queue in self.queues
        ]
        #: Its fair queues: those a kind it knows (handled or not) declares fair.
        self.fair = frozenset(
            spec.queue for spec in app.kinds.values() if spec.fair and spec.queue in self.queues
        )
        self.gated = bool(self.fair) or any(lim.limited for lim in self.declared)

    async def declare(self, backend: Backend) -> None:
        """Store this worker's limits (on start), then read back every worker's."""
        try:
            await backend.declare_limits(self.declared)
        except BackendError as exc:
            self.failures.warn("declaring limits", exc, action="limits_error")
        await self.refresh(backend)

    async def refresh(self, backend: Backend) -> None:
        """Read the stored limits: gate the claims while any is on a queue of this worker
        (a failure keeps the view as it was; the next record reads again)."""
        try:
            stored = await backend.limits()
        except BackendError as exc:
            self.failures.warn("reading limits", exc, action="limits_error")
            return
        self.gated = bool(self.fair) or any(lim.queue in self.queues for lim in stored)

    def claim(self, backend: Backend) -> Claim:
        if not self.gated:
            return backend.claim
        return functools.partial(backend.claim_gated, fair=self.fair)
