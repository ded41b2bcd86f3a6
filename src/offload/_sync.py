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

#: Seconds `stop` lets calls in flight finish before it cancels them (a `wait_sync` may
#: wait far longer); a cancelled call raises `concurrent.futures.CancelledError` in its thread.
DEFAULT_STOP_GRACE_S = 5.0
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
        self.closing = False
        #: The calls running on the loop (tasks of `call`): what `stop` lets finish. Not the
        #: twin's own tasks (a connection pool's workers, a listener), which its close ends.
        self._calls: set[asyncio.Task[object]] = set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._serve, daemon=True, name="offload-sync")
        self.thread.start()

    def _serve(self) -> None:
        self.loop.run_forever()
        # Calls that slipped in after `stop` began: cancelled, so no thread waits on a
        # loop that will never run again.
        self.loop.run_until_complete(_cancel_late())
        self.loop.close()

    @property
    def usable(self) -> bool:
        """Whether calls can run here: this process started the runner and its loop runs."""
        alive = self.thread.is_alive() and not self.loop.is_closed()
        return self.pid == os.getpid() and alive and not self.closing

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
            task = asyncio.current_task()
            assert task is not None
            self._calls.add(task)
            try:
                return await fn(self.twin)
            finally:
                self._calls.discard(task)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result()

    def stop(self, close: Callable[[A], Awaitable[None]]) -> None:
        """Let the calls in flight finish (cancel those still running after
        `DEFAULT_STOP_GRACE_S`), run `close(twin)`, then stop the loop and its thread. No
        caller is left waiting: each gets its result, its error or a cancellation.

        Raises:
            ConfigurationError: called on the loop thread itself.
        """
        if self.pid != os.getpid():
            return  # the parent's: its thread and loop are not this process's to stop
        if self.thread.is_alive():
            self.closing = True
            self.call(lambda twin: self._finish(close, twin))
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()

    async def _finish(self, close: Callable[[A], Awaitable[None]], twin: A) -> None:
        me = asyncio.current_task()
        running = {t for t in self._calls if t is not me}
        if running:
            _, overdue = await asyncio.wait(running, timeout=DEFAULT_STOP_GRACE_S)
            for task in overdue:
                task.cancel()
            await asyncio.gather(*overdue, return_exceptions=True)
        await close(twin)


async def _cancel_late() -> None:
    await asyncio.sleep(0)  # a call scheduled from another thread becomes a task here
    me = asyncio.current_task()
    late = [t for t in asyncio.all_tasks() if t is not me]
    for task in late:
        task.cancel()
    await asyncio.gather(*late, return_exceptions=True)


def start_lock() -> threading.Lock:
    """The lock to hold while looking for, and starting, a runner (this process's)."""
    return _START
