"""The WAL's checkpoints: copied back off the writers' path, and its file kept bounded.

Why the WAL grows without this bound: SQLite appends frames to the WAL and copies them back
into the database at a checkpoint, but it rewinds the WAL to its start only when a writer
begins while every frame is copied back and no reader still reads from the WAL. Under a
steady load there is always a frame not yet copied when a writer begins, so the WAL is
never rewound and grows as long as the load lasts (96-179 MiB for a 12 MiB database); and
without `journal_size_limit` a file once grown never shrinks. PASSIVE checkpoints (the
only ones that never block anyone) copy frames back but rewind nothing.

So the checkpointer copies back what it can (PASSIVE) every half second, looks at the
WAL's size every tenth, and once the WAL passes a quarter of its bound (the rest is room
for what a heavy load writes meanwhile) it asks for a RESTART checkpoint, after which the
next writer writes from the WAL's start again. A RESTART takes the write lock, copies the
few frames the PASSIVE one left, and succeeds only if no reader still reads from the WAL.
Waiting for them in SQLite's busy handler would hold the write lock meanwhile (and sleep up
to 100 ms between tries), so it is tried without one, every millisecond, for at most
`DEFAULT_TRUNCATE_WAIT_S` (four times as long once the WAL passes half its bound): each try
holds the lock only while it copies, and the next look tries again.

A rewound WAL keeps its file: the next frames overwrite it from its start, and
`journal_size_limit` (the cap) cuts back a file that grew past the cap. Truncating it to
zero bytes (TRUNCATE) frees its blocks while holding the write lock: 17-19 ms for a 17 MiB
WAL on a virtual disk, every second and a half at 200 submissions a second, which was the
web tier's p99 (bench/RESULTS.md, the web tier). Since the file's size no longer drops at a
rewind, a big file is only a hint: the frames the WAL holds now (a PASSIVE checkpoint
counts them) decide.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time

#: How often the checkpointer thread copies the WAL back into the database (seconds).
DEFAULT_CHECKPOINT_EVERY_S = 0.5
#: How often it looks at the WAL's size (seconds): a heavy load writes tens of MiB a second.
DEFAULT_SIZE_CHECK_EVERY_S = 0.1
#: The WAL's bound is the larger of this and twice the database (bytes); `?wal_cap_mib=`.
DEFAULT_WAL_CAP_BYTES = 64 << 20
#: How long a round tries a RESTART checkpoint, until no reader is in the WAL (seconds).
DEFAULT_TRUNCATE_WAIT_S = 0.1
#: How often a RESTART checkpoint is tried while it waits (seconds).
DEFAULT_TRUNCATE_RETRY_S = 0.001
#: Bytes of a WAL's header, and of each frame's header (before its page).
_WAL_HEADER_BYTES = 32
_FRAME_HEADER_BYTES = 24


def wal_bound(db_bytes: int, cap_bytes: int) -> int:
    """The most bytes the WAL may take: twice the database, or the cap if larger."""
    return max(2 * db_bytes, cap_bytes)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


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
        self._page_bytes = 4096  # read from the file as the thread starts
        self._halt = threading.Event()

    def run(self) -> None:
        # No busy handler: SQLite's sleeps up to 100 ms between tries, and a RESTART that
        # waits in it holds the write lock while readers finish; `rewind` retries often
        # instead, each try taking the lock only while no reader is in the way.
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=0)
        conn.execute(f"PRAGMA journal_size_limit={self.cap_bytes}")
        self._page_bytes = conn.execute("PRAGMA page_size").fetchone()[0]
        copied = time.monotonic()
        try:
            while not self._halt.wait(DEFAULT_SIZE_CHECK_EVERY_S):
                with contextlib.suppress(sqlite3.Error):  # busy: the next round catches up
                    if self._over_a_quarter():
                        self.rewind(conn)
                        copied = time.monotonic()
                    elif time.monotonic() - copied >= DEFAULT_CHECKPOINT_EVERY_S:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                        copied = time.monotonic()
        finally:
            conn.close()

    def _over_a_quarter(self) -> bool:
        """Whether the WAL's file passed a quarter of its bound (two file sizes: no SQL)."""
        return 4 * _size(self.path + "-wal") > wal_bound(_size(self.path), self.cap_bytes)

    def _held_bytes(self, conn: sqlite3.Connection) -> int:
        """Copy back what a PASSIVE checkpoint can; the bytes of the frames the WAL holds
        since it was last rewound (its file may be larger: a rewind keeps it)."""
        _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        held: int = _WAL_HEADER_BYTES + max(0, frames) * (_FRAME_HEADER_BYTES + self._page_bytes)
        return held

    def rewind(self, conn: sqlite3.Connection) -> bool:
        """Copy the WAL back and, if the frames it holds passed a quarter of its bound, have
        the next writer write from its start. False when it holds less (its file is big
        from before: a rewind keeps it), or readers stayed in it."""
        wal = self._held_bytes(conn)  # the bulk, blocking none
        bound = wal_bound(_size(self.path), self.cap_bytes)
        if 4 * wal <= bound:
            return False
        wait_s = DEFAULT_TRUNCATE_WAIT_S
        if 2 * wal > bound:
            wait_s *= 4  # near the bound: try longer for a moment without readers
        deadline = time.monotonic() + wait_s
        while True:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            if not busy:
                return True
            if time.monotonic() >= deadline or self._halt.wait(DEFAULT_TRUNCATE_RETRY_S):
                return False

    def stop(self) -> None:
        self._halt.set()
        self.join()
