"""The operators' commands: `offload queues pause|resume NAME` (and the paused column of
`offload queues`), and `offload workers`, which lists real worker processes: live while they
run, gone after a clean stop, lost once one is killed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import Result
from typer.testing import CliRunner

import offload
from offload import App, Context, Message
from offload.cli import cli

from ..services import (
    server_store,
)

#: The App the workers below load with `--app` (this module, imported by name).
APP_REF = f"{__name__}:app"
app = App("cli-operators")
SOURCE = str(Path(offload.__file__).resolve().parents[1])
TESTS = str(Path(__file__).resolve().parents[2])
#: Deadline of anything asked of a worker process (started on a loaded machine).
PATIENCE_S = 30.0


@app.message("ops.tick", queue="ticks")
class Tick(Message):
    n: int


@app.handles(Tick)
async def tick(msg: Tick, ctx: Context) -> int:
    return msg.n


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return orjson.loads(result.output)


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
def url(request: pytest.FixtureRequest, workdir: Path) -> Iterator[str]:
    """A fresh store on each backend (SQLite migrated, as a worker would make it)."""
    if request.param == "sqlite":
        url = f"sqlite:///{workdir / 'jobs.db'}"
        assert invoke("migrate", "--url", url).exit_code == 0
        yield url
    else:
        with server_store(request.param) as url:
            yield url


# -- queues ---------------------------------------------------------------------------------


def test_pause_and_resume_a_queue_and_see_it_in_queues(url: str) -> None:
    # When an operator pauses a queue (twice), it is shown paused, empty as it is
    paused = invoke("queues", "pause", "reports", "--url", url)
    assert paused.exit_code == 0 and paused.stdout.strip() == "queue reports paused"
    # (no app names it and no job is in it: a misspelt name? the operator is warned)
    assert "a misspelt name?" in paused.stderr
    again = invoke("queues", "--url", url, "pause", "reports")  # options before the command
    assert again.exit_code == 0 and again.stdout.strip() == "queue reports was paused already"
    assert again.stderr == ""  # warned once, at the pause itself
    assert as_json(invoke("queues", "--url", url, "--json"))["reports"]["paused"] is True
    table = invoke("queues", "--url", url)
    assert table.exit_code == 0
    (row,) = [line for line in table.output.splitlines() if "reports" in line]
    assert "paused" in row
    # When it is resumed (twice), it is no longer paused (nor listed, having no jobs)
    resumed = invoke("queues", "resume", "reports", "--url", url)
    assert resumed.exit_code == 0 and resumed.output.strip() == "queue reports resumed"
    again = invoke("queues", "resume", "reports", "--url", url)
    assert again.exit_code == 0 and again.output.strip() == "queue reports was not paused"
    assert set(as_json(invoke("queues", "--url", url, "--json"))) == {"offload.notify"}


def test_pausing_a_queue_that_holds_finished_jobs_only_warns_of_nothing(url: str) -> None:
    async def finished_job() -> None:
        async with App("other", url=url) as other:  # another app's kind: unknown here
            other.message("other.done", queue="archive")(Tick)
            job = await other.enqueue(Tick(n=1))
            await other.cancel(job.id)

    asyncio.run(finished_job())
    paused = invoke("queues", "pause", "archive", "--url", url)
    assert paused.exit_code == 0 and paused.stdout.strip() == "queue archive paused"
    assert paused.stderr == ""


def test_pausing_a_queue_of_the_app_warns_of_nothing(url: str) -> None:
    paused = invoke("queues", "pause", "ticks", "--app", APP_REF, "--url", url)
    assert paused.exit_code == 0 and paused.stdout.strip() == "queue ticks paused"
    assert paused.stderr == ""


def test_pausing_in_an_empty_folder_creates_no_database(workdir: Path) -> None:
    result = invoke("queues", "pause", "reports")
    assert result.exit_code == 1
    (line,) = [line for line in result.output.splitlines() if line.strip()]
    assert "offload migrate" in line
    assert list(workdir.iterdir()) == []


def test_an_empty_queue_name_is_refused(url: str) -> None:
    result = invoke("queues", "pause", " ", "--url", url)
    assert result.exit_code == 2 and "must not be empty" in result.output


# -- workers --------------------------------------------------------------------------------


def start_worker(url: str, workdir: Path) -> subprocess.Popen[bytes]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.pathsep.join([SOURCE, TESTS]),
        "OFFLOAD_URL": url,
        "OFFLOAD_BLOBS_URL": str(workdir / "blobs"),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "offload", "worker", "--app", APP_REF, "--concurrency", "2"],
        env=env,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def until(check: Callable[[], Any], what: str) -> Any:
    """Poll `check()` until it answers something true, and return that; fail after
    PATIENCE_S."""
    deadline = time.monotonic() + PATIENCE_S
    while not (answer := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {PATIENCE_S:g}s: {what}")
        time.sleep(0.1)
    return answer


def listed(url: str) -> dict[int, dict[str, Any]]:
    """The workers `offload workers --json` lists, by pid."""
    return {w["pid"]: w for w in as_json(invoke("workers", "--url", url, "--json"))}


def test_workers_lists_worker_processes_live_gone_when_stopped_and_lost_when_killed(
    url: str, workdir: Path
) -> None:
    assert invoke("workers", "--url", url).output.strip() == "no workers"
    stopping, killed = start_worker(url, workdir), start_worker(url, workdir)
    try:
        # Given two worker processes: both are listed, live, with what they serve
        pids = {stopping.pid, killed.pid}

        def both_listed() -> dict[int, dict[str, Any]] | None:
            found = listed(url)
            return found if set(found) == pids else None

        both = until(both_listed, "both are listed")
        for entry in both.values():
            assert entry["queues"] == ["ticks", "offload.notify"]
            assert entry["concurrency"] == 2 and entry["version"] == offload.__version__
            assert entry["kinds"] == {"ops.tick": [1]} and entry["lost"] is False
        table = invoke("workers", "--url", url)
        assert table.exit_code == 0
        for entry in both.values():
            (row,) = [line for line in table.output.splitlines() if entry["id"] in line]
            assert "live" in row and "ticks, offload.notify" in row and "0/2" in row
            assert "ops.tick v1" in row  # the kinds it runs, with their versions
        # When one stops cleanly and the other is killed
        stopping.send_signal(signal.SIGTERM)
        killed.send_signal(signal.SIGKILL)
        assert stopping.wait(PATIENCE_S) == 0
        killed.wait(PATIENCE_S)
        # Then the first is gone at once, and the second shows lost once its heartbeats lapse
        assert stopping.pid not in listed(url)
        until(lambda: listed(url).get(killed.pid, {}).get("lost"), "the killed one is lost")
        shown = invoke("workers", "--url", url).output
        (row,) = [line for line in shown.splitlines() if f" {killed.pid} " in line]
        assert " lost " in row and "(0/2)" in row  # what it ran when last heard of
        assert "what a lost worker ran at its last heartbeat" in shown
    finally:
        for process in (stopping, killed):
            if process.poll() is None:
                process.kill()
                process.wait()


def test_the_app_sees_what_the_command_line_changed(url: str) -> None:
    # The same pause, read back through the Python API the dashboard uses
    assert invoke("queues", "pause", "ticks", "--url", url).exit_code == 0

    async def stats() -> dict[str, Any]:
        async with App("reader", url=url) as reader:
            reader.message("ops.tick", queue="ticks")(Tick)
            return await reader.stats()

    assert asyncio.run(stats())["ticks"]["paused"] is True
