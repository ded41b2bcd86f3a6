"""Run a command's coroutine on a fresh event loop (uvloop's where it is installed), and set
a long-running command's heap aside once it has started."""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run `main()` to completion on uvloop if it is installed, else on asyncio's loop."""
    result: T = _runner()(main())
    return result


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or None."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def is_async_callable(fn: Any) -> bool:
    """Whether calling `fn` makes a coroutine to await: a coroutine function, a partial of
    one, or an object whose class has an async `__call__`."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


def _runner() -> Callable[[Coroutine[Any, Any, Any]], Any]:
    # Chosen here and returned, never run inside the `except`: a loop run in that block
    # would chain every exception raised on it to the ImportError ("During handling of the
    # above exception …"), so each job's traceback would open with a module that merely is
    # not installed.
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    run_on_uvloop: Callable[[Coroutine[Any, Any, Any]], Any] = uvloop.run
    return run_on_uvloop


def freeze_start_up() -> None:
    """Leave what start-up made (modules, classes, the app and its OpenAPI schema, a site's
    templates: a few hundred thousand objects) out of every later garbage collection. A
    full collection walked them all, 45 ms each time: 9 of them in 30,000 submissions, 5 %
    of the web tier's CPU and pauses of that length (bench/RESULTS.md, the web tier); in
    `offload demo` one such pause fell in a burst of clicks. Garbage made so far is
    collected first, so none of it is kept for good. Called by the commands that own their
    process (`offload web`, `worker`, `dev`, `demo`), never by the library."""
    gc.collect()
    gc.freeze()


def raise_open_files() -> int:
    """Raise the process's soft limit of open files to its hard limit, and return the limit
    it has then (`resource.RLIM_INFINITY` for none). Each event stream and WebSocket holds
    a file: under the soft limit systemd and many hosts give (1,024) a web tier of a
    thousand open pages refused every new connection, its probes' and POSTs' too, and said
    nothing. Called by the commands that own their
    process (`offload web`, `worker`, `dev`, `demo`), never by the library; a process
    that may not raise it keeps the soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if resource.RLIM_INFINITY in (soft, hard) or soft >= hard:
        return soft  # (no limit to raise it to: the kernel's own bound holds)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return soft
    return hard
