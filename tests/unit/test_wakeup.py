"""The shared wake-up: a ring wakes every sleeper, close releases them, cancellation is kept."""

from __future__ import annotations

import asyncio

import pytest

from offload.brokers._wakeup import Wakeup

pytestmark = pytest.mark.anyio


async def test_a_ring_wakes_every_sleeper_at_once() -> None:
    wakeup = Wakeup()
    wakeup.open()
    sleepers = [asyncio.create_task(wakeup.sleep(60.0)) for _ in range(3)]
    await asyncio.sleep(0.01)
    wakeup.ring()
    await asyncio.wait_for(asyncio.gather(*sleepers), 30.0)  # long before their end: woken


async def test_sleep_without_a_ring_lasts_its_timeout() -> None:
    wakeup = Wakeup()  # never opened: the future is taken lazily
    loop = asyncio.get_running_loop()
    started = loop.time()
    await wakeup.sleep(0.05)
    assert loop.time() - started >= 0.04


async def test_wait_until_returns_once_the_condition_holds_after_a_ring() -> None:
    wakeup = Wakeup()
    wakeup.open()
    state = {"moved": False}
    waiter = asyncio.create_task(wakeup.wait_until(lambda: state["moved"], 5.0))
    await asyncio.sleep(0.01)
    wakeup.ring()  # a ring that does not concern the waiter: it sleeps again
    await asyncio.sleep(0.01)
    assert not waiter.done()
    state["moved"] = True
    wakeup.ring()
    await asyncio.wait_for(waiter, 1.0)


async def test_close_releases_waiters_now_and_later_until_opened_again() -> None:
    wakeup = Wakeup()
    wakeup.open()
    waiter = asyncio.create_task(wakeup.wait_until(lambda: False, 5.0))
    await asyncio.sleep(0.01)
    wakeup.close()
    await asyncio.wait_for(waiter, 1.0)
    await asyncio.wait_for(wakeup.wait_until(lambda: False, 5.0), 0.5)
    wakeup.ring()  # a ring after close keeps it closed
    await asyncio.wait_for(wakeup.sleep(5.0), 0.5)
    wakeup.open()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(wakeup.sleep(5.0), 0.05)


async def test_a_cancellation_landing_with_the_ring_is_not_swallowed() -> None:
    wakeup = Wakeup()
    wakeup.open()
    sleeper = asyncio.create_task(wakeup.sleep(5.0))
    await asyncio.sleep(0.01)
    wakeup.ring()
    sleeper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeper
