"""A worker's wait for work that fails is logged and retrieved, never left to asyncio's
"Task exception was never retrieved" (the claim that follows meets the backend as it is)."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import pytest

from offload import App, Message, Settings
from offload.errors import BackendError
from offload.worker.runner import Worker

pytestmark = pytest.mark.anyio


class Ping(Message):
    n: int = 0


def _worker() -> Worker:
    app = App("waits", settings=Settings(url="sqlite:///:memory:"))
    app.message("t.ping")(Ping)
    app.handles(Ping)(lambda msg, ctx: None)
    return Worker(app)


async def _failing_wait(error: Exception) -> None:
    await asyncio.sleep(0)
    raise error


@pytest.mark.parametrize(
    "error", [BackendError("Redis: Connection closed by server."), KeyError("x")]
)
async def test_a_failed_wait_for_work_is_logged_not_left_unretrieved(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a loop that records what asyncio reports as unhandled
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    stop = asyncio.create_task(asyncio.Event().wait())
    try:
        # When the worker's wait for work fails (a backend error, or a surprise)
        with caplog.at_level(logging.WARNING, logger="offload.worker"):
            await _worker()._race(_failing_wait(error), stop)
        gc.collect()  # a task freed with its exception unread is reported here
        await asyncio.sleep(0)
    finally:
        stop.cancel()
        loop.set_exception_handler(previous)
    # Then the worker logged it, and asyncio has nothing to report.
    assert [r.message for r in caplog.records if r.name == "offload.worker"] == [
        "wait for work failed: Redis: Connection closed by server."
        if isinstance(error, BackendError)
        else "wait for work failed"
    ]
    assert not [c for c in reported if "never retrieved" in c.get("message", "")], reported
