"""Worker processes under a supervisor say which they are: `worker 2 (pid 1234) started`,
report their start on the autoscaler's pipe (a process still starting holds back the next
scale-up), and the supervisor says once how many processes it stops and why."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from offload import App, Context, Message, Settings
from offload.cli import cli
from offload.worker.autoscaler import AutoscalingSupervisor, BacklogReader
from offload.worker.scaling import ScalingPolicy

APP_REF = f"{__name__}:app"
app = App("slots")


@app.message("slots.job")
class Job(Message):
    n: int


@app.handles(Job)
def job(msg: Job, ctx: Context) -> None:
    return None


def test_a_worker_in_a_slot_names_it_and_its_pid_and_reports_its_start(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app.configure(Settings.from_env())
    caplog.set_level(logging.INFO, "offload.worker")
    read, write = os.pipe()
    try:
        args = ["worker", "--app", APP_REF, "--slot", "2", "--ready-fd", str(write)]
        result = CliRunner().invoke(cli, [*args, "--exit-when-idle", "0"])
        assert result.exit_code == 0, result.output
        assert os.read(read, 16) == b"1"  # then the pipe is closed: the write end is gone
        assert os.read(read, 16) == b""
    finally:
        os.close(read)
    lines = [r.getMessage() for r in caplog.records if r.name == "offload.worker"]
    label = f"worker 2 (pid {os.getpid()})"
    assert f"{label} started" in lines and f"{label} stopped" in lines


#: A worker process stand-in: reports its start on the `--ready-fd` pipe once the file
#: `go` exists in the folder it is given, then waits for SIGTERM and exits 0.
CHILD = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    "fd = int(sys.argv[-1].split('=')[1])\n"
    "while not os.path.exists(os.path.join(sys.argv[1], 'go')):\n"
    "    time.sleep(0.02)\n"
    "os.write(fd, b'1'); os.close(fd)\n"
    "time.sleep(120)\n"
)


@pytest.mark.anyio
async def test_the_autoscaler_counts_a_process_as_starting_until_it_reports(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    unreachable = App("unreachable", settings=Settings(url="postgresql://o@127.0.0.1:1/none"))
    policy = ScalingPolicy(min_processes=1, max_processes=2)
    argv = [sys.executable, "-c", CHILD, str(tmp_path)]
    supervisor = AutoscalingSupervisor(policy, BacklogReader(unreachable, ["q"]), argv)
    caplog.set_level(logging.INFO, "offload.autoscaler")
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(supervisor.run())

    async def until(check: Callable[[], bool]) -> None:
        while not check():
            assert not task.done()
            await asyncio.sleep(0.02)

    try:
        # Given a process launched that has not reported its start: it is starting
        await asyncio.wait_for(until(lambda: supervisor.size == 1), 60)
        assert supervisor.starting_since is not None
        # When it reports, it is not any more
        (tmp_path / "go").touch()
        await asyncio.wait_for(until(lambda: supervisor.starting_since is None), 60)
        # And a stop says once how many processes stop and why
        supervisor._stop(signal.SIGTERM)
        assert await asyncio.wait_for(task, 60) == 0
        stops = [r.getMessage() for r in caplog.records if r.name == "offload.autoscaler"]
        assert [m for m in stops if m.startswith("stopping")] == [
            "stopping 1 worker process (SIGTERM)"
        ]
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        if not task.done():
            supervisor._stop(signal.SIGKILL)
            await task
