"""The autoscaling supervisor when the backlog cannot be read: it says so and keeps its
processes (here stand-ins that wait for SIGTERM), then stops them on request."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

import pytest

from offload import App, Settings
from offload.worker.autoscaler import AutoscalingSupervisor, BacklogReader
from offload.worker.scaling import ScalingPolicy

pytestmark = pytest.mark.anyio
#: A worker process stand-in: exits 0 on SIGTERM, once it has said it is ready (a file in
#: the folder it is given, named by its pid).
CHILD = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    "open(os.path.join(sys.argv[1], str(os.getpid())), 'w').close()\n"
    "time.sleep(120)\n"
)


async def test_an_unreadable_backlog_keeps_the_size(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    # Given a backend nothing listens for (port 1 on loopback refuses at once)
    app = App("unreachable", settings=Settings(url="postgresql://offload@127.0.0.1:1/none"))
    policy = ScalingPolicy(min_processes=2, max_processes=4, target_wait_s=0.2)
    argv = [sys.executable, "-c", CHILD, str(tmp_path)]
    supervisor = AutoscalingSupervisor(policy, BacklogReader(app, ["q"]), argv, sample_s=0.1)
    caplog.set_level(logging.WARNING, "offload.autoscaler")
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(supervisor.run())
    try:
        # When it has failed to read the backlog a few times (its processes started)
        def started() -> int:
            return len(list(tmp_path.iterdir()))

        def failures() -> list[str]:
            return [r.message for r in caplog.records if "cannot read the backlog" in r.message]

        async def failed_reads() -> None:
            while True:
                if len(failures()) >= 3 and started() == 2:
                    return
                await asyncio.sleep(0.05)

        await asyncio.wait_for(failed_reads(), 60)
        # Then it kept its MIN processes, and made no decision
        assert supervisor.size == 2
        assert all("keeping 2 processes" in message for message in failures())
        assert all(c is not None and c.proc is not None for c in supervisor.slots[:2])
        # ... and a stop request stops them cleanly
        supervisor._stop(signal.SIGTERM)
        assert await asyncio.wait_for(task, 60) == 0
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        if not task.done():
            supervisor._stop(signal.SIGKILL)
            await task
