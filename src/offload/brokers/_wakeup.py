"""Wake-ups of waiting claimers and feed readers, shared by every backend.

A backend rings the `Wakeup` when something may have changed (a local write, a NOTIFY, a
pub/sub message); waiters sleep on it until the next ring or their timeout. Whether the
change concerns a given waiter is for the waiter to check: it compares what it last read
with what is current before each sleep, so a ring between its read and its sleep is never
lost, and two waiters never consume each other's wake-ups.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Wakeup:
    """A future that is resolved and replaced on every ring; waiters sleep on the current one.

    Made outside a loop, it takes its future lazily on first use (or in `open`, which a
    backend calls from its own `open`, on the loop it serves). After `close`, waiters
    return at once until it is opened again.
    """

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None
        self._closed = False

    def open(self) -> None:
        """Take a fresh future on the running loop; waiters sleep again."""
        self._closed = False
        self._future = asyncio.get_running_loop().create_future()

    @property
    def is_open(self) -> bool:
        """Not closed: waits sleep until a ring or their timeout."""
        return not self._closed

    def close(self) -> None:
        """Wake every waiter; later waits return at once."""
        self._closed = True
        wake, self._future = self._future, None
        if wake is not None and not wake.done():
            wake.set_result(None)

    def ring(self) -> None:
        """Wake everyone sleeping now; later sleepers wait for the next ring."""
        if self._closed:
            return
        wake, self._future = self._future, asyncio.get_running_loop().create_future()
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def sleep(self, timeout: float) -> None:
        """Return on the next ring, after `timeout` seconds, or at once when closed."""
        if self._closed:
            return
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
        # asyncio.wait, not wait_for: on Python 3.11 wait_for can swallow a cancellation
        # that lands as the future completes, and the waiter would never stop.
        await asyncio.wait({self._future}, timeout=timeout)

    async def wait_until(self, moved: Callable[[], bool], timeout: float) -> None:
        """Return once `moved()` holds (checked after every ring), on timeout, or on close."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # No await between the check and the sleep: no ring slips through.
        while not moved():
            left = deadline - loop.time()
            if left <= 0 or self._closed:
                return
            await self.sleep(left)
