"""SyncRunner: the private event loop thread that the `*_sync` methods of App and Job run on."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from .errors import ConfigurationError

T = TypeVar("T")
A = TypeVar("A")

#: Guards the lazy start of a runner: many threads of a WSGI server may make their first
#: `enqueue_sync` at once, and must share one loop thread, not start one each.
_START = threading.Lock()


def _reset_after_fork() -> None:
    # A thread of the parent may have held the lock at the fork: the child has no such
    # thread, so the lock would stay held forever.
    global _START
    _START = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


class SyncRunner(Generic[A]):
    """An event loop on a daemon thread of its own, and the object (an App's twin) whose
    coroutines run there. Callers on any other thread block until their call is done.

    A runner belongs to the process that started it: after a fork (a pre-loading WSGI
    server) its thread does not exist in the child, so `usable` is False there.
    """

    def __init__(self, twin: A) -> None:
        self.twin = twin
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, daemon=True, name="offload-sync"
        )
        self.thread.start()

    @property
    def usable(self) -> bool:
        """Whether calls can run here: this process started the runner and its loop runs."""
        return self.pid == os.getpid() and self.thread.is_alive() and not self.loop.is_closed()

    def call(self, fn: Callable[[A], Awaitable[T]]) -> T:
        """Run `fn(twin)` on the loop thread and return its result (or raise its error).

        Raises:
            ConfigurationError: called on the loop thread itself, where it would wait on
                itself forever (from a coroutine the runner runs).
        """
        if threading.current_thread() is self.thread:
            raise ConfigurationError(
                "a *_sync method was called from offload's own loop thread: await the "
                "async method instead"
            )

        async def run() -> T:
            return await fn(self.twin)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result()

    def stop(self, close: Callable[[A], Awaitable[None]]) -> None:
        """Run `close(twin)` on the loop, then stop the loop and its thread."""
        if self.usable:
            self.call(close)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()
        if not self.loop.is_running():
            self.loop.close()


def start_lock() -> threading.Lock:
    """The lock to hold while looking for, and starting, a runner (this process's)."""
    return _START
