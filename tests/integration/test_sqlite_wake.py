"""SQLite wake-ups across processes (brokers/sqlite/wake.py): a waiter that polls only every
ten minutes still wakes at once when another instance or process commits work, through its
socket beside the database (`<database>-wake-<hex>`); sockets of processes gone are
removed, nothing else is, and a waiter that cannot bind one polls as before."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from offload.brokers.sqlite import SQLiteBackend, wake
from offload.brokers.sqlite.wake import SUN_PATH_MAX, CrossWake

from ..contract._support import claim, envelope

pytestmark = pytest.mark.anyio

#: The waiters' poll: far longer than any wait below, so only a wake-up can end one.
POLL_S = 600.0
ROOT = Path(__file__).resolve().parents[2]


@contextlib.asynccontextmanager
async def two_instances(
    path: str, poll_s: float = POLL_S
) -> AsyncIterator[tuple[SQLiteBackend, SQLiteBackend]]:
    """Two backends open on the file at `path` (as two processes would be), closed after."""
    mine, theirs = SQLiteBackend(path, poll_s=poll_s), SQLiteBackend(path, poll_s=poll_s)
    await mine.open()
    await theirs.open()
    try:
        yield mine, theirs
    finally:
        await theirs.close()
        await mine.close()


async def waiting(backend: SQLiteBackend) -> asyncio.Future[None]:
    """A claimer that found nothing and waits (its socket bound, its wait armed)."""
    assert await claim(backend) == []
    wait = asyncio.ensure_future(backend.wait(["q"], POLL_S))
    await bound(backend.path, 1)
    return wait


async def bound(path: str, n: int) -> None:
    """Wait until `n` sockets are bound beside the database at `path`."""
    deadline = time.monotonic() + 30
    while len(in_folder(path)) < n:
        assert time.monotonic() < deadline, f"{n} sockets were never bound"
        await asyncio.sleep(0.01)


def in_folder(path: str) -> list[str]:
    """The wake-up sockets (and whatever else is named like one) beside the database."""
    folder, name = os.path.split(path)
    return sorted(n for n in os.listdir(folder) if n.startswith(name + "-wake"))


async def test_waiters_wake_at_once_when_another_instance_stores_work(tmp_path: Path) -> None:
    path = str(tmp_path / "jobs.db")
    async with two_instances(path) as (mine, theirs):
        # Given a claimer waiting with a poll of ten minutes
        wait = await waiting(mine)
        # When another instance stores a job, its wait ends (not at its poll)
        await theirs.enqueue([envelope()])
        await asyncio.wait_for(wait, 30)
        assert len(await claim(mine)) == 1
        # and so does the other instance's feed reader when this one stores one
        theirs._seen["feed"] = await theirs._version_now()
        reading = asyncio.ensure_future(theirs._wait_change(POLL_S, "feed"))
        await bound(path, 2)  # each instance has its one socket
        await mine.enqueue([envelope()])
        await asyncio.wait_for(reading, 30)
        assert len(in_folder(path)) == 2
    # Then closing removes each socket
    assert in_folder(path) == []


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
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        dead.bind(path + "-wake-deadbeef0000")
        dead.close()
        assert in_folder(path) == ["jobs.db-wake-deadbeef0000"]
        # When a job is stored, the sender finds nobody there and removes it
        await backend.enqueue([envelope()])
        assert in_folder(path) == []
    finally:
        await backend.close()


async def test_a_database_whose_socket_path_is_too_long_still_wakes_its_waiters(
    tmp_path: Path,
) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = str(deep / "jobs.db")
    assert len(path) + len("-wake-") + 12 > SUN_PATH_MAX
    async with two_instances(path) as (mine, theirs):
        wait = await waiting(mine)
        await theirs.enqueue([envelope()])
        await asyncio.wait_for(wait, 30)


async def test_a_waiter_on_a_system_without_unix_sockets_polls_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "jobs.db")
    monkeypatch.setattr(wake, "UNIX", None)  # as on Windows
    async with two_instances(path, poll_s=0.05) as (mine, theirs):
        with caplog.at_level(logging.INFO, logger="offload.sqlite"):
            assert await claim(mine) == []
            wait = asyncio.ensure_future(mine.wait(["q"], POLL_S))
            await theirs.enqueue([envelope()])
            await asyncio.wait_for(wait, 30)  # by its poll
        assert "wake-ups across processes are off" in caplog.text
        assert len(await claim(mine)) == 1


async def test_a_waiter_short_of_open_files_binds_its_socket_once_it_has_one_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "jobs.db")
    short = {"now": True}

    def sockets(*args: object) -> socket.socket:
        if short["now"]:
            raise OSError(errno.EMFILE, "Too many open files")
        return socket.socket(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(
        wake, "socket", SimpleNamespace(socket=sockets, SOCK_DGRAM=socket.SOCK_DGRAM)
    )
    monkeypatch.setattr(wake, "LISTEN_RETRY_S", 0.0)  # (5 s by default)
    async with two_instances(path) as (mine, theirs):
        with caplog.at_level(logging.INFO, logger="offload.sqlite"):
            # Given a waiter that could not bind its socket, its process out of files
            assert await claim(mine) == []
            await mine.wait(["q"], 0.01)
            assert in_folder(path) == []
            assert "wake-ups across processes are off for now" in caplog.text
            # When files are to be had again, its next wait binds it, and a job stored by
            # another instance wakes it at once (not at its poll of ten minutes)
            short["now"] = False
            wait = await waiting(mine)
            await theirs.enqueue([envelope()])
            await asyncio.wait_for(wait, 30)
        assert "wake-ups across processes are on again" in caplog.text


async def test_a_sender_reaches_and_removes_only_waiters_sockets(tmp_path: Path) -> None:
    path = str(tmp_path / "jobs.db")
    # Given a file and links named like a waiter's socket, beside the database
    elsewhere = furnish(path, tmp_path / "elsewhere")
    backend = SQLiteBackend(path)
    await backend.open()
    try:
        # When jobs are stored (each sends to what the folder holds)
        await backend.enqueue([envelope()])
        await backend.enqueue([envelope()])
    finally:
        await backend.close()
    # Then nothing but sockets was touched
    assert in_folder(path) == [
        "jobs.db-wake-0123456789ab",
        "jobs.db-wake-abcdef012345",
        "jobs.db-wake-fedcba987654",
    ]
    assert read(elsewhere / "data.csv") == "kept"


def furnish(path: str, elsewhere: Path) -> Path:
    elsewhere.mkdir()
    (elsewhere / "data.csv").write_text("kept")
    Path(path + "-wake-0123456789ab").write_text("kept")
    Path(path + "-wake-abcdef012345").symlink_to(elsewhere / "data.csv")
    Path(path + "-wake-fedcba987654").symlink_to(elsewhere)
    return elsewhere


def read(path: Path) -> str:
    return path.read_text()


async def test_waiters_that_read_nothing_do_not_stop_wake_ups_to_one_that_waits(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "jobs.db")
    # Given 30 instances bound but never waiting (busy: their sockets fill and stay full)
    busy = [CrossWake(path) for _ in range(30)]
    waiter, sender = CrossWake(path), CrossWake(path)
    woken: list[int] = []
    try:
        for cross in busy:
            assert cross.listen(lambda: None)
        assert waiter.listen(lambda: woken.append(1))
        # When a sender wakes them 40 times, the waiter armed each time
        for n in range(1, 41):
            waiter.arm()
            sender.send()
            deadline = time.monotonic() + 30
            while len(woken) < n:
                assert time.monotonic() < deadline, f"wake-up {n} never came"
                await asyncio.sleep(0.001)
        # Then the waiter woke every time
        assert len(woken) == 40
    finally:
        for cross in [*busy, waiter, sender]:
            cross.close()
