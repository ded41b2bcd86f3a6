"""The WAL's checkpoints: copied back off the writers' path, and its file kept bounded.

Why the WAL grows without this bound: SQLite appends frames to the WAL and copies them back
into the database at a checkpoint, but it rewinds the WAL to its start only when a writer
begins while every frame is copied back and no reader still reads from the WAL. Under a
steady load there is always a frame not yet copied when a writer begins, so the WAL is
never rewound and grows as long as the load lasts (96-179 MiB for a 12 MiB database); and
without `journal_size_limit` a file once grown never shrinks. PASSIVE checkpoints (the
only ones that never block anyone) copy frames back but rewind nothing.

So the checkpointer copies back what it can (PASSIVE) every half second, looks at the
WAL's size every tenth (every fiftieth for a second after writes last waited for a
rewind: `DEFAULT_PRESSED_CHECK_EVERY_S`), and once the WAL passes a quarter
of its bound (the rest is room for what a heavy load writes meanwhile) it asks for a
RESTART checkpoint, after which the next writer writes from the WAL's start again. A
RESTART takes the write lock, copies the few frames the PASSIVE one left, and succeeds
only if no reader still reads from the WAL. Waiting for them in SQLite's busy handler
would hold the write lock meanwhile (and sleep up to 100 ms between tries), so it is tried
without one, every millisecond, for at most `DEFAULT_TRUNCATE_WAIT_S` (past half the
bound, as long as writes wait for it): each try holds the lock only while it copies, and
the next look tries again.

Past half its bound, the rewinds have fallen behind: on a starved machine readers and
writers can leave them no free moment for seconds (a reader that waits for the CPU, or for
the GIL between the rows of its result, holds its snapshot meanwhile), and a busy load
writes tens of MiB of WAL a second. Then the writes of every process that sees it wait,
before they take the write lock, until a rewind succeeds or `DEFAULT_WRITE_PAUSE_S`
passed. With nothing written, the reads in flight end, the next ones read the database
file alone, and the next RESTART finds the WAL free. A reader that holds its snapshot
longer (a process stopped mid-read, a long query in a shell) costs each writing process
one pause: writes go on once it is spent, with no other until a rewind succeeds, and the
WAL grows until that reader lets go. While another process checkpoints, this one's cannot
run and counts no frames (SQLite answers -1): that is no sign of a small WAL, and ends no
pause.

Who sees it: a file that grows past half its bound holds that many frames, so a stat of
it decides, with no SQL and no lock, by this thread every tenth of a second (every
fiftieth while pressed) and by each writer itself as it begins a write, at most every
`DEFAULT_WRITER_LOOK_S`. A writer's own look is what holds the bound on a starved
machine: this thread may wait for the CPU for longer than a busy load takes to fill the
WAL, but a writer that writes is running. (Not the frame count in the `-shm` file's
header: opening and closing a descriptor of it in a process with SQLite connections drops
their POSIX locks on it, after which another process takes it for new, truncates it, and
every process that maps it dies of SIGBUS.) The size a rewind kept (below) is no growth:
frames grow the file again only once they pass its end. The backends of one file in a
process (an App and the twin its blocking calls use) share one pause and its counts
(`_File`); with none of its checkpointers running, nothing waits.

A rewound WAL keeps its file: the next frames overwrite it from its start, and
`journal_size_limit` (the cap) cuts back a file that grew past the cap. Truncating it to
zero bytes (TRUNCATE) frees its blocks while holding the write lock: 17-19 ms for a 17 MiB
WAL on a virtual disk, every second and a half at 200 submissions a second, which was the
web tier's p99 (bench/RESULTS.md, the web tier). Since the file's size no longer drops at a
rewind, a big file is only a hint: the frames the WAL holds now (a PASSIVE checkpoint
counts them) decide whether to rewind.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref

from ..base import WalReading

#: How often the checkpointer thread copies the WAL back into the database (seconds).
DEFAULT_CHECKPOINT_EVERY_S = 0.5
#: How often it looks at the WAL's size (seconds): a heavy load writes tens of MiB a second.
DEFAULT_SIZE_CHECK_EVERY_S = 0.1
#: How often it looks for `DEFAULT_PRESSED_FOR_S` after writes last waited for a rewind:
#: a writer that writes hundreds of MiB a second fills the WAL to half its bound in well
#: under 0.1 s, and a rewind keeps the file, so its size does not show the frames that
#: refill it (only a PASSIVE checkpoint counts them). Not always: each look past a quarter
#: of the bound is a PASSIVE checkpoint, and its sync.
DEFAULT_PRESSED_CHECK_EVERY_S = 0.02
DEFAULT_PRESSED_FOR_S = 1.0
#: The WAL's bound is the larger of this and twice the database (bytes); `?wal_cap_mib=`.
DEFAULT_WAL_CAP_BYTES = 64 << 20
#: How long a round tries a RESTART checkpoint, until no reader is in the WAL (seconds).
DEFAULT_TRUNCATE_WAIT_S = 0.1
#: How often a RESTART checkpoint is tried while it waits (seconds).
DEFAULT_TRUNCATE_RETRY_S = 0.001
#: How long writes wait for a rewind once the WAL passed half its bound (seconds).
DEFAULT_WRITE_PAUSE_S = 2.0
#: How often a writer looks at the WAL's file itself, as it begins a write (seconds).
DEFAULT_WRITER_LOOK_S = 0.005
#: Bytes of a WAL's header, and of each frame's header (before its page).
_WAL_HEADER_BYTES = 32
_FRAME_HEADER_BYTES = 24

log = logging.getLogger("offload.sqlite")


def wal_bound(db_bytes: int, cap_bytes: int) -> int:
    """The most bytes the WAL may take: twice the database, or the cap if larger."""
    return max(2 * db_bytes, cap_bytes)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


class _File:
    """What every checkpointer of one database file in this process shares: whether its
    writes wait for a rewind, and the counts of those waits. One state per file, so that
    two backends of one file (an App and the twin its blocking calls use) pause together
    and count a pause once."""

    def __init__(self, cap_bytes: int) -> None:
        self.lock = threading.Lock()
        #: Set while writes may go on; clear while they wait for a rewind.
        self.room = threading.Event()
        self.room.set()
        #: When writes began to wait (monotonic seconds), while they wait.
        self.paused_since: float | None = None
        #: The pause ran out with the WAL not rewound: no other until a rewind succeeds.
        self.spent = False
        self.pause_s = DEFAULT_WRITE_PAUSE_S
        self.pauses = 0
        self.spent_pauses = 0
        self.paused_s = 0.0  # over the pauses that ended
        #: The WAL's bytes and its bound at the last look.
        self.wal_bytes = 0
        self.bound_bytes = wal_bound(0, cap_bytes)
        #: When a writer looks at the WAL next (monotonic seconds).
        self.next_look = 0.0
        #: Till when the thread looks more often (`DEFAULT_PRESSED_CHECK_EVERY_S`).
        self.pressed_until = 0.0
        #: Checkpointers of the file running in this process.
        self.running = 0


#: The shared state of each file this process checkpoints (by path), while one does.
_FILES: weakref.WeakValueDictionary[str, _File] = weakref.WeakValueDictionary()
_FILES_LOCK = threading.Lock()


def _forget_files() -> None:
    # A child process starts with no checkpointer running, nor any lock held.
    global _FILES_LOCK
    _FILES.clear()
    _FILES_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_files)


class Checkpointer(threading.Thread):
    """Copies the WAL back into the database file from its own thread and connection, and
    rewinds it once it passes a quarter of its bound.

    With SQLite's automatic checkpoints, the commit that crosses the threshold does the
    copy and its fsync, so one request in a thousand waits for the disk. PASSIVE checkpoints
    here never block readers or writers; several processes may each run one.
    """

    def __init__(self, path: str, cap_bytes: int = DEFAULT_WAL_CAP_BYTES) -> None:
        super().__init__(name="offload-sqlite-checkpoint", daemon=True)
        self.path = path
        self.cap_bytes = cap_bytes
        key = os.path.realpath(path)  # one file however it is named
        with _FILES_LOCK:
            file = _FILES.get(key)
            if file is None:
                file = _FILES[key] = _File(cap_bytes)
                # A WAL kept from before (another process's rewind) is no growth.
                file.wal_bytes = _size(path + "-wal")
        file.bound_bytes = wal_bound(_size(path), cap_bytes)
        self._file = file
        self._page_bytes = 4096  # read from the file as the thread starts
        self._halt = threading.Event()
        #: Set by a look that paused writes: rewind now.
        self._nudge = threading.Event()

    @property
    def pause_s(self) -> float:
        """How long writes wait for a rewind at most (a test may shorten or lengthen it)."""
        return self._file.pause_s

    @pause_s.setter
    def pause_s(self, seconds: float) -> None:
        self._file.pause_s = seconds

    @property
    def pauses(self) -> int:
        """Times this process's writes of the file waited for a rewind."""
        return self._file.pauses

    def start(self) -> None:
        with self._file.lock:
            self._file.running += 1
        super().start()

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("%s: the WAL's checkpointer stopped: nothing copies it back", self.path)
        finally:
            # However the thread ends (stopped, or an error it could not survive), writes no
            # longer wait on it; the last of the file's checkpointers ends any pause.
            file = self._file
            with file.lock:
                file.running -= 1
                last = not file.running
            if last:
                self._resume(spent=False)

    def _run(self) -> None:
        # No busy handler: SQLite's sleeps up to 100 ms between tries, and a RESTART that
        # waits in it holds the write lock while readers finish; `rewind` retries often
        # instead, each try taking the lock only while no reader is in the way.
        file = self._file
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=0)
        try:
            conn.execute(f"PRAGMA journal_size_limit={self.cap_bytes}")
            self._page_bytes = conn.execute("PRAGMA page_size").fetchone()[0]
            copied = time.monotonic()
            while not self._halt.is_set():
                pressed = time.monotonic() < file.pressed_until  # the WAL fills fast
                self._nudge.wait(
                    DEFAULT_PRESSED_CHECK_EVERY_S if pressed else DEFAULT_SIZE_CHECK_EVERY_S
                )
                if self._halt.is_set():
                    break
                file.bound_bytes = wal_bound(_size(self.path), self.cap_bytes)
                wal = self.look()
                self._nudge.clear()  # this round rewinds (a writer's nudge from now on counts)
                try:
                    if 4 * wal > file.bound_bytes:
                        self.rewind(conn)
                        copied = time.monotonic()
                    else:
                        self._resume(spent=False)  # a small WAL holds fewer frames still
                        if time.monotonic() - copied >= DEFAULT_CHECKPOINT_EVERY_S:
                            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                            copied = time.monotonic()
                except sqlite3.Error:
                    pass  # busy: the next round catches up
                paused = file.paused_since
                if paused is not None and time.monotonic() >= paused + file.pause_s:
                    self._resume(spent=True, since=paused)
        finally:
            conn.close()

    def look(self) -> int:
        """The WAL file's size now (a stat: no SQL, no lock). A file that grew past half
        the bound holds that many frames: writes wait for a rewind from here on, and the
        thread rewinds now (not at its next tenth of a second)."""
        file = self._file
        before, file.wal_bytes = file.wal_bytes, _size(self.path + "-wal")
        if file.wal_bytes > before and 2 * file.wal_bytes > file.bound_bytes:
            self._pause()
            self._nudge.set()
        return file.wal_bytes

    def before_write(self) -> bool:
        """Whether a write must wait for a rewind (`wait_for_room`) before it begins. A
        writer looks at the WAL itself every few milliseconds (`DEFAULT_WRITER_LOOK_S`), so
        that writes pause in time while this thread waits for the CPU."""
        file = self._file
        now = time.monotonic()
        if now >= file.next_look and file.running:  # no thread, no rewind to wait for
            file.next_look = now + DEFAULT_WRITER_LOOK_S
            if not file.room.is_set():
                return True
            self.look()
        return not file.room.is_set()

    def reading(self) -> WalReading | None:
        """The WAL's bytes and bound at the last look, and the pauses so far (None once the
        thread has ended: a stopped checkpointer, or one a fork left behind)."""
        if not self.is_alive():
            return None
        file = self._file
        with file.lock:
            paused_s, since = file.paused_s, file.paused_since
            if since is not None:  # the pause under way counts as far as it went
                paused_s += max(0.0, time.monotonic() - since)
            return WalReading(
                path=self.path,
                wal_bytes=file.wal_bytes,
                bound_bytes=file.bound_bytes,
                pauses=file.pauses,
                spent_pauses=file.spent_pauses,
                paused_s=paused_s,
            )

    @property
    def writes_paused(self) -> bool:
        """Whether writes wait for a rewind now (the WAL passed half its bound)."""
        return not self._file.room.is_set()

    def wait_for_room(self) -> None:
        """Before a write while `writes_paused`: wait until a rewind succeeds or the pause
        is spent (at most `pause_s`)."""
        self._file.room.wait(self._file.pause_s)

    def _pause(self) -> None:
        file = self._file
        with file.lock:
            if file.paused_since is not None or file.spent:
                return
            file.paused_since = time.monotonic()
            file.pressed_until = file.paused_since + DEFAULT_PRESSED_FOR_S
            file.pauses += 1
            file.room.clear()

    def _resume(self, *, spent: bool, since: float | None = None) -> None:
        """End the pause under way: a rewind succeeded (or none is needed), or, `spent`,
        the pause that began at `since` ran out."""
        file = self._file
        with file.lock:
            if spent and (since is None or file.paused_since != since):
                return  # another checkpointer of the file ended that pause
            since = file.paused_since
            waited = 0.0
            if since is not None:
                waited = time.monotonic() - since
                file.paused_s += waited
                file.spent_pauses += int(spent)
                file.paused_since = None
            file.spent = spent
            file.room.set()
        if spent:
            log.warning(
                "%s: the WAL stayed past half its bound for %.1f s (a reader "
                "holds an old snapshot): writes go on and it grows until that reader ends",
                self.path,
                waited,
            )

    def _held_bytes(self, conn: sqlite3.Connection) -> int | None:
        """Copy back what a PASSIVE checkpoint can; the bytes of the frames the WAL holds
        since it was last rewound (its file may be larger: a rewind keeps it). None when
        the checkpoint could not run (another process's runs: SQLite counts no frames)."""
        _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if frames < 0:
            return None
        held: int = _WAL_HEADER_BYTES + frames * (_FRAME_HEADER_BYTES + self._page_bytes)
        return held

    def rewind(self, conn: sqlite3.Connection) -> bool:
        """Copy the WAL back and, if the frames it holds passed a quarter of its bound, have
        the next writer write from its start. False when it holds less (its file is big
        from before: a rewind keeps it), or readers stayed in it. Past half the bound,
        writes wait (`wait_for_room`) until a rewind succeeds, tried as long as they wait."""
        file = self._file
        wal = self._held_bytes(conn)  # the bulk, blocking none
        bound = file.bound_bytes  # as the round that called it read it
        if wal is None:  # another process checkpoints: not known (a pause goes on)
            if file.paused_since is None:
                return False  # the next round looks again
        elif 4 * wal <= bound:
            self._resume(spent=False)
            return False
        wait_s = DEFAULT_TRUNCATE_WAIT_S
        if wal is not None and 2 * wal > bound:
            self._pause()
            wait_s *= 4  # near the bound: try longer for a moment without readers
        deadline = time.monotonic() + wait_s
        paused = file.paused_since
        if paused is not None:
            deadline = max(deadline, paused + file.pause_s)
        while True:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            if not busy:
                # What the file grew by before the rewind (the writes in flight as a pause
                # began) is no growth since: the next look starts from its size now.
                file.wal_bytes = _size(self.path + "-wal")
                self._resume(spent=False)
                return True
            if time.monotonic() >= deadline or self._halt.wait(DEFAULT_TRUNCATE_RETRY_S):
                return False

    def stop(self) -> None:
        self._halt.set()
        self._nudge.set()
        if self.ident is not None:  # started: its end releases any write (`run`)
            self.join()
