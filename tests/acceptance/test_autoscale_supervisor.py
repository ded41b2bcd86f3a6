"""The autoscaling supervisor (its processes here stand-ins that wait for SIGTERM): when the
backlog cannot be read it says so and keeps its processes, then stops them on request; a
scale-down stops the process that runs the fewest jobs."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from offload import App, Settings
from offload.clock import FakeClock
from offload.contract import WorkerInfo
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


def _ready(folder: Path) -> int:
    """How many stand-ins have said they are ready."""
    return len(list(folder.iterdir()))


async def _started(folder: Path, count: int) -> None:
    """Until `count` stand-ins have said they are ready."""
    async with asyncio.timeout(60):
        while _ready(folder) < count:  # noqa: ASYNC110 (files set no event)
            await asyncio.sleep(0.05)


def _entry(pid: int, running: int, *, host: str | None = None) -> WorkerInfo:
    """A registry entry of the process `pid` on this host, running `running` jobs."""
    now = datetime.now(UTC)
    return WorkerInfo(
        id=f"{host or 'here'}-{pid}",
        host=host or socket.gethostname(),
        pid=pid,
        queues=("q",),
        concurrency=4,
        version="1",
        kinds={},
        started_at=now,
        heartbeat_at=now,
        running=tuple(f"j-{pid}-{i}" for i in range(running)),
    )


async def test_a_scale_down_stops_the_process_that_runs_the_fewest_jobs(
    settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "ready"
    folder.mkdir()
    clock = FakeClock(time.time())
    app = App("scaling", settings=settings, clock=clock)
    policy = ScalingPolicy(min_processes=1, max_processes=4, target_wait_s=0.2)
    argv = [sys.executable, "-c", CHILD, str(folder)]
    supervisor = AutoscalingSupervisor(policy, BacklogReader(app, ["q"]), argv)
    async with app:
        for _ in range(4):
            supervisor._add()
        try:
            await _started(folder, 4)
            oldest, second, third, newest = (c.proc.pid for c in supervisor.slots if c and c.proc)
            # Given four processes whose heartbeats said they run 2, 0, 1 and 3 jobs (and a
            # process of that pid on another host, idle, which is none of these),
            backend = app._require_backend()
            for pid, jobs in ((oldest, 2), (second, 0), (third, 1), (newest, 3)):
                await backend.record_worker(_entry(pid, jobs))
            await backend.record_worker(_entry(oldest, 0, host="elsewhere"))
            # when the backlog asks for fewer, the idle one is stopped, not the newest;
            assert await supervisor._remove()
            assert [c.stopping for c in supervisor.slots if c] == [False, True, False, False]
            # then the one of fewest jobs left;
            assert await supervisor._remove()
            assert [c.stopping for c in supervisor.slots if c] == [False, True, True, False]
            # and once their heartbeats lapsed (a loop stalled by heavy work), what they ran
            # at the last one still counts: the oldest (2) goes before the newest (3).
            clock.advance(60)
            assert all(w.lost for w in await app.workers())
            assert await supervisor._remove()
            assert [c.stopping for c in supervisor.slots if c] == [True, True, True, False]
        finally:
            supervisor._stop(signal.SIGTERM)
            assert await asyncio.wait_for(supervisor._wait_all(), 60) == 0


async def test_a_scale_down_with_the_registry_unreadable_stops_the_newest(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "ready"
    folder.mkdir()
    # Given a backend nothing listens for (port 1 on loopback refuses at once), retried
    # for a moment only,
    url = "postgresql://offload@127.0.0.1:1/none"
    app = App("unreachable", settings=Settings(url=url, retry_deadline_s=0.2))
    policy = ScalingPolicy(min_processes=1, max_processes=3, target_wait_s=0.2)
    argv = [sys.executable, "-c", CHILD, str(folder)]
    supervisor = AutoscalingSupervisor(policy, BacklogReader(app, ["q"]), argv)
    for _ in range(3):
        supervisor._add()
    try:
        await _started(folder, 3)
        # when a scale-down cannot read which process is busy, it stops the newest
        assert await supervisor._remove()
        assert [c.stopping for c in supervisor.slots if c] == [False, False, True]
    finally:
        supervisor._stop(signal.SIGTERM)
        assert await asyncio.wait_for(supervisor._wait_all(), 60) == 0
