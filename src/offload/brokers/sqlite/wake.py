"""Wake-ups across processes for one SQLite file.

Nothing in SQLite tells another process that a commit happened: its waiters poll
`data_version` (every millisecond while work flows, every `poll_s` when idle). A waiting
instance also binds a Unix datagram socket beside the database, `<database>-wake-<12 hex>`
(as SQLite keeps `-wal` and `-shm` there), and a commit that may concern waiters (a job
stored, retried, requeued, ...) sends one byte to every such socket, so each waiter checks
the database at once instead of at its next poll.

The poll stays, and a wake-up only ever comes earlier: a waiter that cannot bind (a
read-only folder, no Unix sockets) or a sender that cannot reach it (another user's
socket, a full queue) changes nothing but when the check happens. A socket whose process
died without removing it refuses the byte, and the sender removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import secrets
import socket
import stat
import threading
import time
import weakref
from collections.abc import Callable

log = logging.getLogger("offload.sqlite")

#: The longest socket path the kernel takes (sun_path, less its NUL); a longer one is
#: reached through the folder's descriptor (`/proc/self/fd/<n>/<name>`, Linux).
SUN_PATH_MAX = 107
#: Unix datagram sockets, where the system has them (not on Windows): else no wake-ups.
UNIX = getattr(socket, "AF_UNIX", None)
#: What follows the database's name in a waiter's socket's: `-wake-` and 12 hex digits.
SUFFIX = "-wake-"
#: A sender lists the database's folder again when it changed, or at least this often
#: (seconds): a modification time may be too coarse to show a socket bound just after.
RELIST_S = 1.0
#: A waiter that could not bind for want of a resource (open files, memory, buffers) tries
#: again after this many seconds (it polls meanwhile): the shortage is the moment's.
LISTEN_RETRY_S = 5.0
#: The errors of a resource short for the moment, not of a folder or system that never
#: allows the socket.
TRANSIENT = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


class CrossWake:
    """The wake-up sockets of one database file: this instance's own (`listen`, `arm`),
    and the others' (`send`). `send` may be called from any thread.

    A sender reaches only what is a socket named as a waiter's (never through a symbolic
    link), and removes only such a socket."""

    def __init__(self, database: str) -> None:
        database = os.path.abspath(database)
        self.folder = os.path.dirname(database)
        self.prefix = os.path.basename(database) + SUFFIX
        self._named = re.compile(re.escape(self.prefix) + "[0-9a-f]{12}")
        self._lock = threading.Lock()
        self._lock_pid = os.getpid()
        self._closed = False
        self._dirfd: int | None = None
        self._release_dirfd: Callable[[], object] = lambda: None
        #: A connected socket per other waiter (each has its own queue: one waiter that
        #: reads nothing, being busy, fills only its own), the names that refused this
        #: user, and when the folder was listed (modification time, monotonic seconds).
        self._senders: dict[str, socket.socket] = {}
        weakref.finalize(self, _close_all, self._senders)
        self._refused: set[str] = set()
        self._names: tuple[str, ...] = ()
        self._listed: tuple[int, float] | None = None
        #: This instance's socket while it listens: the socket, its name, the loop that
        #: reads it, the process that bound it, and whether the loop watches it now.
        self._own: socket.socket | None = None
        self._release_own: Callable[[], object] = lambda: None
        self._name = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0
        self._armed = False
        self._on_wake: Callable[[], None] = lambda: None
        #: How many times a byte woke this instance's socket (a waiter compares it across
        #: a read of the database that may have let one in).
        self.wakes = 0
        self._failed = False
        #: When a bind that failed for want of a resource may be tried again (monotonic).
        self._retry_at = 0.0

    def _guard(self) -> threading.Lock:
        """The lock of the sender's state; a forked child takes a new one (its parent's
        may have been held by a thread the child does not have)."""
        if self._lock_pid != os.getpid():
            self._lock, self._lock_pid = threading.Lock(), os.getpid()
        return self._lock

    # -- a waiter's side ---------------------------------------------------------------------

    def listen(self, on_wake: Callable[[], None]) -> bool:
        """Bind this instance's socket (once; again in a forked child); `on_wake` is called
        on the running loop when a byte comes while the socket is armed. False when it
        cannot (said once in the log): the waiters poll as before."""
        if self._own is not None and self._pid == os.getpid():
            return True
        if self._failed or self._closed or time.monotonic() < self._retry_at:
            return False
        if self._own is not None:  # a forked child's copy of its parent's socket: closed,
            self._release_own()  # and left in place (it is the parent's)
            self._own = None
        name = self.prefix + secrets.token_hex(6)
        try:
            if UNIX is None:
                raise OSError("this system has no Unix sockets")
            with self._guard():
                address = self._address(name)
            if address is None:
                raise OSError(f"the socket path is too long: {self.folder}")
            if isinstance(address, OSError):
                raise address
            own = socket.socket(UNIX, socket.SOCK_DGRAM)
            try:
                own.setblocking(False)
                own.bind(address)
            except BaseException:
                own.close()
                raise
        except OSError as exc:
            if exc.errno in TRANSIENT:
                short, self._retry_at = self._retry_at, time.monotonic() + LISTEN_RETRY_S
                if short:  # said when the shortage began
                    return False
                log.warning(
                    "SQLite wake-ups across processes are off for now (waiters poll; "
                    "tried again in %.0f s): %s",
                    LISTEN_RETRY_S,
                    exc,
                    extra={"action": "sqlite_wake_off"},
                )
                return False
            self._failed = True
            log.info(
                "SQLite wake-ups across processes are off (waiters poll): %s",
                exc,
                extra={"action": "sqlite_wake_off"},
            )
            return False
        if self._retry_at:
            self._retry_at = 0.0
            log.info(
                "SQLite wake-ups across processes are on again", extra={"action": "sqlite_wake_on"}
            )
        self._own, self._name, self._pid = own, name, os.getpid()
        # Released with this object if the backend is never closed (no socket left open).
        self._release_own = weakref.finalize(
            self, _release, own, os.path.join(self.folder, name), self._pid
        )
        self._loop, self._on_wake, self._armed = asyncio.get_running_loop(), on_wake, False
        return True

    def arm(self) -> None:
        """Watch the socket until the next byte (called before each sleep of a waiter): a
        byte read disarms it, so a busy process is not called for every commit elsewhere;
        bytes sent meanwhile wait in the socket and wake the next arming at once."""
        if self._own is None or self._armed or self._pid != os.getpid():
            return
        assert self._loop is not None
        self._loop.add_reader(self._own.fileno(), self._read)
        self._armed = True

    def _read(self) -> None:
        own = self._own
        if own is None:
            return
        with contextlib.suppress(OSError):
            while own.recv(64):
                pass
        if self._loop is not None and self._armed:
            self._loop.remove_reader(own.fileno())
        self._armed = False
        self.wakes += 1
        self._on_wake()

    # -- a sender's side ---------------------------------------------------------------------

    def send(self) -> None:
        """One byte to every other instance's socket, skipping any that cannot take it now
        (never waits) and removing those of processes gone."""
        if UNIX is None:
            return
        with self._guard():
            if self._closed:
                return
            for name in self._current_names():
                try:
                    sender = self._senders.get(name) or self._connect(name)
                    if sender is not None:
                        sender.send(b"w")
                except (BlockingIOError, InterruptedError):
                    pass  # its queue is full: it has wake-ups waiting already
                except (ConnectionRefusedError, FileNotFoundError):  # its process is gone
                    self._drop(name)
                    self._remove(name)
                except OSError:  # another user's socket, ...: it polls
                    self._drop(name)
                    self._refused.add(name)

    def _connect(self, name: str) -> socket.socket | None:
        address = self._address(name)
        if address is None:
            return None
        if isinstance(address, OSError):
            raise address
        sender = socket.socket(UNIX, socket.SOCK_DGRAM)  # type: ignore[arg-type]
        try:
            sender.setblocking(False)
            sender.connect(address)
        except BaseException:
            sender.close()
            raise
        self._senders[name] = sender
        return sender

    def _drop(self, name: str) -> None:
        sender = self._senders.pop(name, None)
        if sender is not None:
            sender.close()

    def _remove(self, name: str) -> None:
        """Remove the socket `name`, still a socket (nobody listens on it)."""
        if self._is_socket(name):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.folder, name))
        self._listed = None

    def _is_socket(self, name: str) -> bool:
        """Whether the folder's file `name` is a socket itself (not a link to one)."""
        try:
            return stat.S_ISSOCK(os.lstat(os.path.join(self.folder, name)).st_mode)
        except OSError:
            return False

    def _current_names(self) -> tuple[str, ...]:
        """The other waiters' sockets, listed again when the folder changed (or after
        `RELIST_S`)."""
        try:
            folder = os.stat(self.folder)
        except OSError:
            return ()
        now = time.monotonic()
        listed = self._listed
        if listed is None or listed[0] != folder.st_mtime_ns or now - listed[1] > RELIST_S:
            mine = self._name if self._own is not None and self._pid == os.getpid() else None
            names = []
            with contextlib.suppress(OSError):
                for name in os.listdir(self.folder):
                    if name != mine and self._named.fullmatch(name) and self._is_socket(name):
                        names.append(name)
            for gone in set(self._senders) - set(names):
                self._drop(gone)
            self._refused.clear()
            self._names, self._listed = tuple(names), (folder.st_mtime_ns, now)
        if self._refused:
            return tuple(n for n in self._names if n not in self._refused)
        return self._names

    def _address(self, name: str) -> str | OSError | None:
        """The address of the socket `name` in the folder, or None when the path is too
        long and no folder descriptor can stand in for it, or the error of a descriptor
        short for the moment (under the lock)."""
        path = os.path.join(self.folder, name)
        if len(os.fsencode(path)) <= SUN_PATH_MAX:
            return path
        if not os.path.isdir("/proc/self/fd"):
            return None
        if self._dirfd is None:
            try:
                self._dirfd = dirfd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as exc:
                return exc if exc.errno in TRANSIENT else None
            self._release_dirfd = weakref.finalize(self, _close_fd, dirfd)
        return f"/proc/self/fd/{self._dirfd}/{name}"

    # -- both --------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop listening (the socket removed) and sending, for good."""
        own, self._own = self._own, None
        if own is not None:
            armed = self._armed and self._pid == os.getpid()
            if armed and self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(own.fileno())
            self._release_own()
        self._armed = False
        with self._guard():
            self._closed = True
            _close_all(self._senders)
            if self._dirfd is not None:
                self._release_dirfd()  # (once: a finalizer runs at most once)
                self._dirfd = None
            self._names, self._listed = (), None


def _release(own: socket.socket, path: str, pid: int) -> None:
    """Close a waiter's socket and remove it (only in the process that bound it: a forked
    child's copy is its parent's)."""
    if os.getpid() == pid:
        with contextlib.suppress(OSError):
            os.unlink(path)
    own.close()


def _close_all(senders: dict[str, socket.socket]) -> None:
    for sender in senders.values():
        sender.close()
    senders.clear()


def _close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
