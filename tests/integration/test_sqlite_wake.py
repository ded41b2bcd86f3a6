"""SQLite wake-ups across processes (brokers/sqlite/wake.py): a waiter that polls only every
minute still wakes at once when another instance or process commits work, through its
socket in `<database>-wake`; sockets of processes gone are removed, and a waiter that
cannot bind one polls as before."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from offload.brokers.sqlite import SQLiteBackend
from offload.brokers.sqlite.wake import SUN_PATH_MAX

from ..contract._support import claim, envelope

pytestmark = pytest.mark.anyio

#: The waiters' poll: far longer than any wait below, so only a wake-up can end one.
POLL_S = 600.0
ROOT = Path(__file__).resolve().parents[2]


async def waiting(backend: SQLiteBackend) -> asyncio.Future[None]:
    """A claimer that found nothing and waits (its socket bound, its wait armed)."""
    assert await claim(backend) == []
    wait = asyncio.ensure_future(backend.wait(["q"], POLL_S))
    deadline = time.monotonic() + 30
    while not sockets(backend.path):
        assert time.monotonic() < deadline, "the waiter never bound its socket"
        await asyncio.sleep(0.01)
    return wait


def sockets(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path + "-wake"))
    except FileNotFoundError:
        return []


async def test_waiters_wake_at_once_when_another_instance_stores_work(tmp_path: Path) -> None:
    path = str(tmp_path / "jobs.db")
    mine = SQLiteBackend(path, poll_s=POLL_S)
    theirs = SQLiteBackend(path, poll_s=POLL_S)
    await mine.open()
    await theirs.open()
    try:
        # Given a claimer waiting with a poll of ten minutes
        wait = await waiting(mine)
        # When another instance stores a job, its wait ends (not at its poll)
        await theirs.enqueue([envelope()])
        await asyncio.wait_for(wait, 30)
        assert len(await claim(mine)) == 1
        # and so does the other instance's feed reader when this one stores one
        theirs._seen["feed"] = await theirs._version_now()
        reading = asyncio.ensure_future(theirs._wait_change(POLL_S, "feed"))
        deadline = time.monotonic() + 30
        while len(sockets(path)) < 2:  # each instance has its one socket
            assert time.monotonic() < deadline, "the feed reader never bound its socket"
            await asyncio.sleep(0.01)
        await mine.enqueue([envelope()])
        await asyncio.wait_for(reading, 30)
        assert len(sockets(path)) == 2
    finally:
        await theirs.close()
        await mine.close()
    # Then closing removes each socket
    assert sockets(path) == []


async def test_a_waiter_wakes_for_another_process_that_enqueues_from_a_thread(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "jobs.db")
    mine = SQLiteBackend(path, poll_s=POLL_S)
    await mine.open()
    try:
        wait = await waiting(mine)
        # When another process stores a job with enqueue_sync (a request thread's call)
        script = (
            "import asyncio, sys\n"
            "from offload.brokers.sqlite import SQLiteBackend\n"
            "from tests.contract._support import envelope\n"
            "async def main():\n"
            "    b = SQLiteBackend(sys.argv[1])\n"
            "    await b.open()\n"
            "    try:\n"
            "        await asyncio.to_thread(b.enqueue_sync, [envelope()])\n"
            "    finally:\n"
            "        await b.close()\n"
            "asyncio.run(main())\n"
        )
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", script, path], cwd=ROOT, timeout=120
        )
        assert done.returncode == 0
        # Then the waiter wakes and claims it
        await asyncio.wait_for(wait, 30)
        assert len(await claim(mine)) == 1
    finally:
        await mine.close()


async def test_a_socket_left_by_a_process_gone_is_removed_by_the_next_sender(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "jobs.db")
    backend = SQLiteBackend(path)
    await backend.open()
    try:
        # Given the socket of a process that died (bound, never removed)
        os.makedirs(path + "-wake")
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        dead.bind(path + "-wake/deadbeef0000")
        dead.close()
        assert sockets(path) == ["deadbeef0000"]
        # When a job is stored, the sender finds nobody there and removes it
        await backend.enqueue([envelope()])
        assert sockets(path) == []
    finally:
        await backend.close()


async def test_a_database_whose_socket_path_is_too_long_still_wakes_its_waiters(
    tmp_path: Path,
) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = str(deep / "jobs.db")
    assert len(path) + len("-wake/") + 12 > SUN_PATH_MAX
    mine = SQLiteBackend(path, poll_s=POLL_S)
    theirs = SQLiteBackend(path, poll_s=POLL_S)
    await mine.open()
    await theirs.open()
    try:
        wait = await waiting(mine)
        await theirs.enqueue([envelope()])
        await asyncio.wait_for(wait, 30)
    finally:
        await theirs.close()
        await mine.close()


async def test_a_waiter_that_cannot_bind_a_socket_polls_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = str(tmp_path / "jobs.db")
    with open(path + "-wake", "w") as taken:  # noqa: ASYNC230 (a file where the folder goes)
        taken.write("not a folder")
    mine = SQLiteBackend(path, poll_s=0.05)
    theirs = SQLiteBackend(path)
    await mine.open()
    await theirs.open()
    try:
        with caplog.at_level(logging.INFO, logger="offload.sqlite"):
            assert await claim(mine) == []
            wait = asyncio.ensure_future(mine.wait(["q"], POLL_S))
            await theirs.enqueue([envelope()])
            await asyncio.wait_for(wait, 30)  # by its poll
        assert "wake-ups across processes are off" in caplog.text
        assert len(await claim(mine)) == 1
    finally:
        await theirs.close()
        await mine.close()
