"""A call for the tests of those a handler's thread hands to its worker's loop
(`offload.context.Handoffs`): a blob store's `put` that never answers, so that the call is
under way when the worker (or the serverless consumer) stops."""

from __future__ import annotations

import asyncio
from typing import Any


class HandedCall:
    """`put` sets `handed` once called; cancelled, sets `cancelled`, then ends after `cleanup_s`
    (noting "began" and "ended" in `cleanup`), or, while `stubborn`, goes on waiting."""

    def __init__(self, cleanup_s: float = 0.0, *, stubborn: bool = False) -> None:
        self.cleanup_s = cleanup_s
        self.stubborn = stubborn
        self.handed = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.cleanup: list[str] = []

    async def put(self, key: str, data: bytes, *args: Any, **kwargs: Any) -> None:
        self.handed.set()
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                if self.stubborn:
                    continue
                self.cleanup.append("began")
                await asyncio.sleep(self.cleanup_s)
                self.cleanup.append("ended")
                raise
