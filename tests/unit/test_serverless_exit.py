"""What the serverless handlers left on the thread's loop is ended when a script exits,
within a bound: a task that never ends does not hold the exit."""

from __future__ import annotations

import asyncio
import time

import pytest

from offload.serverless.aws import _runtime


def test_a_task_that_ignores_its_cancel_does_not_hold_the_exit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_runtime, "EXIT_WAIT_S", 0.2)
    loop = asyncio.new_event_loop()
    ended: list[str] = []

    async def stubborn() -> None:  # as a pool's connection attempt under way was seen to be
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    async def polite() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            ended.append("polite")

    held = loop.create_task(stubborn())
    other = loop.create_task(polite())
    loop.run_until_complete(asyncio.sleep(0))  # both started
    began = time.monotonic()
    _runtime._close_at_exit(loop)  # (it waited on the stubborn one for good)
    assert time.monotonic() - began < 5
    assert loop.is_closed() and ended == ["polite"] and other.done() and not held.done()
