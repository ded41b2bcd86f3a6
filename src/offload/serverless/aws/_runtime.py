"""What the Lambda handlers share: the thread's event loop and the context they are given."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import threading
import warnings
from collections.abc import Awaitable, Callable
from typing import Protocol

log = logging.getLogger("offload.serverless")


class LambdaContext(Protocol):
    """The part of Lambda's context object the handlers read."""

    def get_remaining_time_in_millis(self) -> int: ...


def thread_loop() -> asyncio.AbstractEventLoop:
    """The event loop of this thread, made (and set) when there is none or it was closed.

    Mangum runs each request on the thread's loop, and so do offload's handlers: a warm
    function keeps one loop for its lifetime, so the backend opened by one invocation (its
    connection pool bound to that loop) serves the next, whichever handler runs it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            loop = asyncio.get_event_loop()
        except RuntimeError:
            loop = None
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
    if not any(loop is known for known in _closed_at_exit):
        _closed_at_exit.append(loop)
        atexit.register(_close_at_exit, loop)
    return loop


#: Seconds `_close_at_exit` waits for the loop's tasks to end once cancelled.
EXIT_WAIT_S = 5.0
#: The loops `_close_at_exit` will close (kept, as atexit keeps them: one per thread).
_closed_at_exit: list[asyncio.AbstractEventLoop] = []
#: What `_close_at_exit` awaits on each loop first (`close_at_exit`).
_closers: dict[asyncio.AbstractEventLoop, list[Callable[[], Awaitable[object]]]] = {}


def close_at_exit(loop: asyncio.AbstractEventLoop, close: Callable[[], Awaitable[object]]) -> None:
    """Have `close()` awaited on `loop` when the interpreter exits (an app a handler opened
    with `open`, which no task of the loop holds: its SDK sessions were left unclosed)."""
    _closers.setdefault(loop, []).append(close)


def before_threads_join(call: Callable[[], object]) -> None:
    """Have `call()` made as the interpreter exits, before it waits for the threads still
    running (which it does before the `atexit` functions run): a handler's thread that
    runs on past an invocation, waiting on the loop that runs no more, would hold the
    exit for ever. (Python's own hook, as `concurrent.futures` uses it; without it, as
    before.)"""
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        with contextlib.suppress(RuntimeError):  # (the interpreter exits already)
            register(call)


def _close_at_exit(loop: asyncio.AbstractEventLoop) -> None:
    """Close what the handlers left open on `loop` (the backend, the web tier's hold on
    it) when the interpreter exits: a script or a test that called a handler ends quietly,
    where its pending tasks were destroyed with warnings. (Lambda freezes or kills its
    processes without running this.)"""
    if loop.is_closed() or loop.is_running():
        return
    for close in _closers.pop(loop, []):
        try:
            loop.run_until_complete(asyncio.wait_for(close(), EXIT_WAIT_S))
        except Exception as exc:  # the process is ending: nothing more to do about it
            log.debug("closing at exit: %s", exc)
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:  # bounded: a task that never ends (a pool's connection attempt under way, seen
        # to hang a script's exit for minutes) is left to the exit, which ends it anyway
        ended, _ = loop.run_until_complete(asyncio.wait(tasks, timeout=EXIT_WAIT_S))
        for task in ended:
            # SQLite's close needs thread pools the interpreter has shut down by now: the
            # file is then closed by the exit itself, which its write-ahead log makes safe.
            if not task.cancelled() and isinstance(task.exception(), Exception):
                log.debug("closing at exit: %s", task.exception())
    loop.run_until_complete(asyncio.wait_for(loop.shutdown_asyncgens(), EXIT_WAIT_S))
    loop.close()


def remaining_s(context: LambdaContext | None) -> float | None:
    """Seconds this invocation has left, or None outside Lambda (no context)."""
    if context is None or not hasattr(context, "get_remaining_time_in_millis"):
        return None
    return context.get_remaining_time_in_millis() / 1000.0
