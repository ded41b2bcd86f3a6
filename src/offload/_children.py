"""Child processes that end with the process that started them (Linux)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

#: prctl(2) option: the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1
#: The signal a supervisor stops its children with, whichever it got (SIGTERM, SIGINT,
#: SIGHUP): a child that has not set up its handlers yet (importing) dies of it at once, as
#: asked, where SIGINT would end it in a KeyboardInterrupt's traceback and exit 1.
FORWARDED = signal.SIGTERM


def _prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up now: a child between fork and exec calls it alone (no
    `dlopen` there, which a thread of the parent may have held locked at the fork)."""
    if sys.platform != "linux":
        return None
    with contextlib.suppress(OSError, AttributeError):
        found: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
        return found
    return None


_PRCTL = _prctl()


def die_with_parent(parent: int | None = None) -> None:
    """In a child process, before it runs (`preexec_fn`): ask Linux for SIGTERM when its
    parent dies (the thread that started it), so that a supervisor or launcher killed
    outright (SIGKILL, out of memory) leaves no worker running on, unsupervised; and end at
    once if `parent` (its pid, taken before the fork) died before the request was made.
    Elsewhere, nothing."""
    if _PRCTL is None:
        return
    _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def child_options() -> dict[str, Any]:
    """What a supervisor starts a child with. On Linux, a session of its own, so that a
    terminal's Ctrl+C (or a signal to the supervisor's process group) reaches the supervisor
    alone, which stops its children as it forwards it (`FORWARDED`), and `die_with_parent`.
    Elsewhere nothing: there, no parent-death signal would stop a child that a group's
    signal no longer reached."""
    if _PRCTL is None:
        return {}
    return {
        "start_new_session": True,
        "preexec_fn": functools.partial(die_with_parent, os.getpid()),
    }
