"""Run a command's coroutine on a fresh event loop: uvloop's where it is installed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run `main()` to completion on uvloop if it is installed, else on asyncio's loop."""
    result: T = _runner()(main())
    return result


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
