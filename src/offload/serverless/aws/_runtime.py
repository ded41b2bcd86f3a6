"""What the Lambda handlers share: the thread's event loop and the context they are given."""

from __future__ import annotations

import asyncio
import warnings
from typing import Protocol


class LambdaContext(Protocol):
    """The part of Lambda's context object the handlers read."""

    def get_remaining_time_in_millis(self) -> int: ...


def thread_loop() -> asyncio.AbstractEventLoop:
    """The event loop of this thread, made (and set) when there is none or it was closed.

    Mangum runs each request on the thread's loop, and so do offload's handlers: a warm
    function keeps one loop for its lifetime, so the backend opened by one invocation (its
    connection pool bound to that loop) serves the next, whichever handler runs it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            loop = asyncio.get_event_loop()
        except RuntimeError:
            loop = None
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
    return loop


def remaining_s(context: LambdaContext | None) -> float | None:
    """Seconds this invocation has left, or None outside Lambda (no context)."""
    if context is None or not hasattr(context, "get_remaining_time_in_millis"):
        return None
    return context.get_remaining_time_in_millis() / 1000.0
