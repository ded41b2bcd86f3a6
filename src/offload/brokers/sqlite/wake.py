"""Wake-ups across processes for one SQLite file.

Nothing in SQLite tells another process that a commit happened: its waiters poll
`data_version` (every millisecond while work flows, every `poll_s` when idle). A waiting
instance also binds a Unix datagram socket in the folder `<database>-wake`, and a commit
that may concern waiters (a job stored, settled, requeued, ...) sends one byte to every
socket there, so each waiter checks the database at once instead of at its next poll.

The poll stays, and a wake-up only ever comes earlier: a waiter that cannot bind (a
read-only folder, no Unix sockets) or a sender that cannot reach it (another user's
socket, a full queue) changes nothing but when the check happens. A socket whose process
died without removing it refuses the byte, and the sender removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
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
#: A sender lists the folder again when it changed, or at least this often (seconds):
#: a folder's modification time may be too coarse to show a socket bound just after.
RELIST_S = 1.0


class CrossWake:
    """The wake-up sockets of one database file: this instance's own (`listen`, `arm`),
    and the others' (`send`). `send` may be called from any thread."""

    def __init__(self, database: str) -> None:
        self.folder = os.path.abspath(database) + "-wake"
        self._lock = threading.Lock()
        self._dirfd: int | None = None
        self._sender: socket.socket | None = None
        #: The other sockets' addresses, and when they were listed (the folder's
        #: modification time, and monotonic seconds).
        self._targets: tuple[tuple[str, str], ...] = ()
        self._listed: tuple[int, float] | None = None
        #: This instance's socket while it listens: the socket, its name, the loop that
        #: reads it, the process that bound it, and whether the loop watches it now.
        self._own: socket.socket | None = None
        self._name = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0
        self._armed = False
        self._on_wake: Callable[[], None] = lambda: None
        self._failed = False
        self._release_own: Callable[[], object] = lambda: None
        self._release_dirfd: Callable[[], object] = lambda: None

    # -- a waiter's side ---------------------------------------------------------------------

    def listen(self, on_wake: Callable[[], None]) -> bool:
        """Bind this instance's socket (once; again in a forked child); `on_wake` is called
        on the running loop when a byte comes while the socket is armed. False when it
        cannot (said once in the log): the waiters poll as before."""
        if self._own is not None and self._pid == os.getpid():
            return True
        if self._failed:
            return False
        if self._own is not None:  # a forked child's copy of its parent's socket: closed,
            self._release_own()  # and left in place (it is the parent's)
            self._own = None
        name = secrets.token_hex(6)
        try:
            os.makedirs(self.folder, exist_ok=True)
            if UNIX is None:
                raise OSError("this system has no Unix sockets")
            address = self._address(name)
            if address is None:
                raise OSError(f"the socket path is too long: {self.folder}")
            own = socket.socket(UNIX, socket.SOCK_DGRAM)
            try:
                own.setblocking(False)
                own.bind(address)
            except BaseException:
                own.close()
                raise
        except OSError as exc:
            self._failed = True
            log.info(
                "SQLite wake-ups across processes are off (waiters poll): %s",
                exc,
                extra={"action": "sqlite_wake_off"},
            )
            return False
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
        self._on_wake()

    # -- a sender's side ---------------------------------------------------------------------

    def send(self) -> None:
        """One byte to every other instance's socket, skipping any that cannot take it now
        (never waits) and removing those of processes gone."""
        if UNIX is None:
            return
        with self._lock:
            for name, address in self._current_targets():
                try:
                    self._socket().sendto(b"w", address)
                except (BlockingIOError, InterruptedError):
                    pass  # its queue is full: it has wake-ups waiting already
                except ConnectionRefusedError:  # bound by nobody: its process is gone
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(self.folder, name))
                    self._listed = None
                except OSError:
                    pass  # another user's socket, gone meanwhile, ...: it polls

    def _current_targets(self) -> tuple[tuple[str, str], ...]:
        try:
            changed = os.stat(self.folder).st_mtime_ns
        except OSError:
            return ()
        now = time.monotonic()
        listed = self._listed
        if listed is None or listed[0] != changed or now - listed[1] > RELIST_S:
            targets = []
            with contextlib.suppress(OSError):
                for name in os.listdir(self.folder):
                    if name == self._name and self._own is not None:
                        continue
                    address = self._address(name)
                    if address is not None:
                        targets.append((name, address))
            self._targets, self._listed = tuple(targets), (changed, now)
        return self._targets

    def _socket(self) -> socket.socket:
        if self._sender is None:
            sender = socket.socket(UNIX, socket.SOCK_DGRAM)  # type: ignore[arg-type]
            sender.setblocking(False)
            self._sender = sender
            weakref.finalize(self, sender.close)
        return self._sender

    def _address(self, name: str) -> str | None:
        """The address of the socket `name` in the folder, or None when the path is too
        long and no folder descriptor can stand in for it."""
        path = os.path.join(self.folder, name)
        if len(os.fsencode(path)) <= SUN_PATH_MAX:
            return path
        if not os.path.isdir("/proc/self/fd"):
            return None
        if self._dirfd is None:
            try:
                self._dirfd = dirfd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                return None
            self._release_dirfd = weakref.finalize(self, _close_fd, dirfd)
        return f"/proc/self/fd/{self._dirfd}/{name}"

    # -- both --------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop listening (the socket removed) and sending."""
        own, self._own = self._own, None
        if own is not None:
            armed = self._armed and self._pid == os.getpid()
            if armed and self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(own.fileno())
            self._release_own()
        self._armed = False
        with self._lock:
            if self._sender is not None:
                self._sender.close()
                self._sender = None
            if self._dirfd is not None:
                self._release_dirfd()  # (once: a finalizer runs at most once)
                self._dirfd = None
            self._targets, self._listed = (), None
        self._failed = False


def _release(own: socket.socket, path: str, pid: int) -> None:
    """Close a waiter's socket and remove it (only in the process that bound it: a forked
    child's copy is its parent's)."""
    if os.getpid() == pid:
        with contextlib.suppress(OSError):
            os.unlink(path)
    own.close()


def _close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
