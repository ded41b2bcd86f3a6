"""SQLite: the WAL's rewinds, and writes that wait for one once the WAL nears its bound."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from offload.brokers.sqlite import SQLiteBackend, checkpoint
from offload.brokers.sqlite.checkpoint import Checkpointer, wal_bound

from ..contract._support import envelope
from ..sqlite_support import sqlite_file

pytestmark = pytest.mark.anyio

#: The WAL's cap in these tests (MiB): one job's enqueue writes about 64 KiB of it, so a
#: few hundred pass it, in a few seconds of `Load`.
CAP_MIB = 16
#: How long a test waits for what must happen (seconds): a loaded machine is slow.
DEADLINE_S = 60.0


def _wal_bytes(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return wal.stat().st_size if wal.exists() else 0


def _held_frames(path: Path) -> int:
    """The frames the WAL holds since its last rewind (a PASSIVE checkpoint counts them)."""
    with sqlite_file(path, isolation_level=None, timeout=0) as conn:
        _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return int(frames)


class Load:
    """Enqueues a job every 5 ms, as a busy web tier does (about 10 MiB of WAL a second),
    and samples the WAL's size."""

    def __init__(self, backend: SQLiteBackend, path: Path) -> None:
        self.backend, self.path = backend, path
        self.enqueued = 0
        self.worst = 0.0  # the WAL's largest file / its bound
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            await self.backend.enqueue([envelope()])
            self.enqueued += 1
            await asyncio.sleep(0.005)

    def sample(self) -> None:
        bound = wal_bound(os.path.getsize(self.path), int(CAP_MIB * (1 << 20)))
        self.worst = max(self.worst, _wal_bytes(self.path) / bound)

    async def until(self, what: str, done: Callable[[], bool]) -> None:
        """Sample the WAL every 10 ms until `done()` holds, at most `DEADLINE_S`."""
        deadline = time.monotonic() + DEADLINE_S
        while not done():
            self.sample()
            assert time.monotonic() < deadline, f"not {what} in {DEADLINE_S:.0f} s"
            await asyncio.sleep(0.01)
        self.sample()

    def __enter__(self) -> Load:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


@pytest.fixture(params=["looking", "starved"])
def thread(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The checkpointer's thread as it is, or one that looks at the WAL only when a writer
    asks it to (as one left waiting for the CPU would, for longer than a busy load takes
    to fill the WAL): then the writers' own looks must pause them. Ask for it before the
    backend opens."""
    if request.param == "starved":
        monkeypatch.setattr(checkpoint, "DEFAULT_SIZE_CHECK_EVERY_S", 3600.0)
        monkeypatch.setattr(checkpoint, "DEFAULT_PRESSED_CHECK_EVERY_S", 3600.0)
    return str(request.param)


@pytest.fixture
async def opened(tmp_path: Path) -> AsyncIterator[tuple[SQLiteBackend, Path]]:
    path = tmp_path / "jobs.db"
    backend = SQLiteBackend.from_url(f"sqlite:///{path}?wal_cap_mib={CAP_MIB}")
    await backend.open()
    try:
        await backend.enqueue([envelope()])  # frames in the WAL for a reader to pin
        yield backend, path
    finally:
        await backend.close()


def _pin(path: Path) -> sqlite3.Connection:
    """A reader that holds one snapshot until it commits (a report open in a shell)."""
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM offload_jobs").fetchone()
    return reader


#: The byte of the `-shm` file SQLite's unix VFS locks while a connection checkpoints
#: (the wal-index's lock bytes begin at 120; the checkpoint's is the second).
CHECKPOINT_LOCK_BYTE = 121
#: Another process that holds the checkpoint lock until its standard input closes. It
#: waits for the lock: the backend's own checkpointer may hold it for a moment (a run of
#: CI found it so: taken without waiting, the lock was refused, EAGAIN).
HOLD_CHECKPOINT = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX, 1, int(sys.argv[2]))
print("held", flush=True)
sys.stdin.read()
"""


class Blocker:
    """What keeps every rewind from succeeding until `release`: a reader that holds one
    snapshot (a report open in a shell), or another process's checkpoint under way (its
    lock held: this process's checkpoints cannot run, and a PASSIVE one counts nothing)."""

    def __init__(self, kind: str, path: Path) -> None:
        self.reader: sqlite3.Connection | None = None
        self.holder: subprocess.Popen[str] | None = None
        if kind == "reader":
            self.reader = _pin(path)
            return
        argv = [sys.executable, "-c", HOLD_CHECKPOINT, f"{path}-shm", str(CHECKPOINT_LOCK_BYTE)]
        self.holder = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.holder.stdout is not None and self.holder.stdout.readline() == "held\n"

    def release(self) -> None:
        reader, self.reader = self.reader, None
        if reader is not None:
            reader.commit()
            reader.close()
        holder, self.holder = self.holder, None
        if holder is not None:
            assert holder.stdin is not None and holder.stdout is not None
            holder.stdin.close()
            holder.stdout.close()
            assert holder.wait(DEADLINE_S) == 0


def _wal_file(path: Path, rows: int) -> sqlite3.Connection:
    """A database whose WAL holds `rows` rows of 2,000 bytes, checkpointed by no one."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (v BLOB)")
    for _ in range(rows):
        conn.execute("INSERT INTO t VALUES (randomblob(2000))")
    return conn


def test_a_rewind_has_the_next_write_start_the_wal_over(tmp_path: Path) -> None:
    # Given a WAL that holds more than a quarter of its bound, no reader in it
    path = tmp_path / "plain.db"
    conn = _wal_file(path, 200)
    try:
        checkpointer = Checkpointer(str(path), 256 << 10)
        held = _held_frames(path)
        assert 4 * held * 4096 > wal_bound(os.path.getsize(path), 256 << 10)
        # when the checkpointer rewinds it and a writer writes again,
        assert checkpointer.rewind(conn) is True
        conn.execute("INSERT INTO t VALUES (randomblob(2000))")
    finally:
        conn.close()
    # then that writer wrote from the WAL's start (its file kept: the cap cuts it back).
    assert _held_frames(path) < 5 < held


@pytest.mark.parametrize("blocker", ["reader", "checkpoint"])
async def test_writes_wait_for_a_rewind_while_it_cannot_succeed_near_the_bound(
    thread: str, blocker: str, opened: tuple[SQLiteBackend, Path]
) -> None:
    backend, path = opened
    checkpointer = backend._checkpointer
    assert checkpointer is not None
    checkpointer.pause_s = DEADLINE_S  # this test ends the pause itself
    # Given a reader that holds its snapshot, or another process's checkpoint under way,
    # so that no rewind can succeed,
    blocking = Blocker(blocker, path)
    try:
        with Load(backend, path) as load:
            # when writes go on until the WAL passes half its bound,
            await load.until("paused", lambda: checkpointer.writes_paused)
            paused_at = load.enqueued
            # then they wait: none is written while it holds on,
            for _ in range(30):
                await asyncio.sleep(0.01)
                load.sample()
            assert load.enqueued <= paused_at + 1  # one may have held the lock already
            # and once it lets go, a rewind succeeds, the writes go on from the WAL's start,
            blocking.release()
            await load.until("resumed", lambda: not checkpointer.writes_paused)
            # The backend's reading (the metrics' offload_sqlite_*) counts the pause, not
            # spent (read as the writes resume: on a busy machine the writes that follow
            # may fill the WAL to half its bound again before the reading, a pause of their
            # own, counted too: a loaded CI run read 2)
            resumed = backend.wal_reading()
            resumed_at = load.enqueued
            await load.until("writing again", lambda: load.enqueued > resumed_at + 20)
    finally:
        blocking.release()
    # and the WAL never passed its bound.
    assert load.worst <= 1, f"the WAL reached {load.worst:.2f}x its bound"
    assert resumed is not None
    assert resumed.pauses >= 1 and resumed.spent_pauses == 0
    reading = backend.wal_reading()
    assert reading is not None and reading.spent_pauses == 0
    assert reading.paused_s >= 0.25  # the 30 looks of 10 ms above (a timer may fire early)
    assert reading.bound_bytes >= CAP_MIB << 20 and reading.wal_bytes > 0


async def test_a_reader_that_never_lets_go_costs_one_pause_and_the_wal_grows(
    opened: tuple[SQLiteBackend, Path], caplog: pytest.LogCaptureFixture
) -> None:
    backend, path = opened
    checkpointer = backend._checkpointer
    assert checkpointer is not None
    checkpointer.pause_s = 0.2
    # Given a reader that holds its snapshot and does not let go,
    reader = _pin(path)
    try:
        with caplog.at_level(logging.WARNING, "offload.sqlite"), Load(backend, path) as load:
            # when writes pass half the WAL's bound and their pause runs out,
            await load.until("paused", lambda: checkpointer.pauses == 1)
            await load.until("past the bound", lambda: load.worst > 1)
            # then they go on (the WAL grows past its bound, as the README says), with no
            # second pause, and the log says why.
            assert checkpointer.pauses == 1 and not checkpointer.writes_paused
        assert "a reader holds an old snapshot" in caplog.text
        reading = backend.wal_reading()
        assert reading is not None and reading.spent_pauses == 1 and reading.paused_s >= 0.2
    finally:
        reader.commit()
        reader.close()
    # When the reader lets go, the next rewind brings the WAL back to its start.
    with Load(backend, path) as load:
        await load.until("rewound", lambda: _held_frames(path) < 100)


def test_a_wal_kept_from_before_is_no_growth_to_a_new_checkpointer(tmp_path: Path) -> None:
    # Given a WAL past half its bound that another process left (a rewind keeps its file),
    path = tmp_path / "kept.db"
    conn = _wal_file(path, 200)
    try:
        checkpointer = Checkpointer(str(path), 256 << 10)
        assert 2 * _wal_bytes(path) > wal_bound(os.path.getsize(path), 256 << 10)
        # when a checkpointer of this process first looks at it, it pauses nothing;
        checkpointer.look()
        assert not checkpointer.writes_paused
        # a write that grows the file again does.
        conn.execute("INSERT INTO t VALUES (randomblob(2000))")
        checkpointer.look()
        assert checkpointer.writes_paused
    finally:
        conn.close()


def test_writes_never_wait_on_a_checkpointer_that_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a WAL past half its bound, and a checkpointer whose thread ended at once (its
    # connection could not open),
    path = tmp_path / "ended.db"
    conn = _wal_file(path, 200)
    try:
        checkpointer = Checkpointer(str(path), 256 << 10)

        def refused(*args: object, **kwargs: object) -> sqlite3.Connection:
            raise sqlite3.OperationalError("unable to open database file")

        with monkeypatch.context() as patched, caplog.at_level(logging.ERROR, "offload.sqlite"):
            patched.setattr(checkpoint.sqlite3, "connect", refused)
            checkpointer.start()
            checkpointer.join(DEADLINE_S)
        assert not checkpointer.is_alive()
        assert "unable to open database file" in caplog.text  # said, not a silent end
        # when a write grows the WAL further, it does not wait for a rewind that will not
        # come.
        conn.execute("INSERT INTO t VALUES (randomblob(2000))")
        assert checkpointer.before_write() is False
        assert not checkpointer.writes_paused
    finally:
        conn.close()


async def test_a_stop_mid_pause_ends_the_pause(opened: tuple[SQLiteBackend, Path]) -> None:
    backend, path = opened
    checkpointer = backend._checkpointer
    assert checkpointer is not None
    checkpointer.pause_s = DEADLINE_S
    # Given writes paused (a reader pins the WAL, the load passed half its bound),
    reader = _pin(path)
    try:
        with Load(backend, path) as load:
            await load.until("paused", lambda: checkpointer.writes_paused)
        # when the backend closes, the pause ends with it, counted, and not as spent.
        await backend.close()
    finally:
        reader.commit()
        reader.close()
    assert not checkpointer.writes_paused and checkpointer.pauses == 1
    assert checkpointer._file.spent is False and checkpointer._file.room.is_set()
