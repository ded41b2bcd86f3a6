"""Child processes that end with the process that started them (Linux)."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import sys

#: prctl(2) option: the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child process, before it runs (`preexec_fn`): ask Linux for SIGTERM when its
    parent dies (the thread that started it), so that a supervisor or launcher killed
    outright (SIGKILL, out of memory) leaves no worker running on, unsupervised.
    Elsewhere, nothing."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


#: What a supervisor's children are started with: a session of their own, so that a
#: terminal's Ctrl+C (or a signal to the supervisor's process group) reaches the supervisor
#: alone, which stops them as it forwards it (`FORWARDED`); and on Linux `die_with_parent`.
CHILD_OPTIONS: dict[str, object] = {
    "start_new_session": True,
    **({"preexec_fn": die_with_parent} if sys.platform == "linux" else {}),
}
#: The signal a supervisor stops its children with, whichever it got (SIGTERM or SIGINT):
#: a child that has not set up its handlers yet (importing) dies of it at once, as asked,
#: where SIGINT would end it in a KeyboardInterrupt's traceback and exit 1.
FORWARDED = signal.SIGTERM
