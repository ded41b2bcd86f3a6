"""A watch on a worker's event loop from a thread of its own: an async handler that blocks
the loop (it sleeps, computes, or calls blocking I/O) is named while it blocks, with the
line it is at and what to do, not only told of as a stall once it is over."""

from __future__ import annotations

import asyncio
import logging
import sys
import sysconfig
import threading
from collections.abc import Callable
from pathlib import Path
from time import monotonic
from types import FrameType

log = logging.getLogger("offload.worker")

#: How often the loop marks itself alive, and the watch looks.
TICK_S = 0.25
#: A loop that has not run for this long is blocked: the watch says by what.
BLOCKED_AFTER_S = 2.0

#: Where a frame is not the user's own code (the innermost of those is named instead).
_NOT_USERS = tuple(
    str(Path(p).resolve())
    for p in {sysconfig.get_paths()["stdlib"], str(Path(__file__).resolve().parents[1])}
)


class LoopWatch:
    """Watches one event loop from a daemon thread.

    Args:
        job_of: the kind of the job whose task is named `name` (`job-<id>`), or None.
        blocked_after_s: how long the loop may not run before the watch warns.
    """

    def __init__(
        self, job_of: Callable[[str], str | None], blocked_after_s: float | None = None
    ) -> None:
        self.job_of = job_of
        self.blocked_after_s = BLOCKED_AFTER_S if blocked_after_s is None else blocked_after_s
        self._seen = monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._handle: asyncio.TimerHandle | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Watch the running loop (called on it)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._tick()
        self._thread = threading.Thread(target=self._watch, name="offload-loopwatch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (called on the loop)."""
        if self._handle is not None:
            self._handle.cancel()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)

    def _tick(self) -> None:
        self._seen = monotonic()
        assert self._loop is not None
        self._handle = self._loop.call_later(TICK_S, self._tick)

    def _watch(self) -> None:
        told_at: float | None = None  # when the block under way was told of (its start)
        while True:
            stopping = self._stop.wait(TICK_S)
            seen = self._seen
            blocked = monotonic() - seen
            if stopping or blocked < self.blocked_after_s:
                if told_at is not None:
                    log.info(
                        "the event loop runs again, blocked %.1fs",
                        seen - told_at,
                        extra={"action": "loop_unblocked", "blocked_s": round(seen - told_at, 3)},
                    )
                    told_at = None
                if stopping:
                    return
                continue
            if told_at is None:
                told_at = seen
                self._tell(blocked)

    def _tell(self, blocked: float) -> None:
        """Say what blocks the loop: the job whose task runs, and the line it is at."""
        assert self._loop is not None
        task = asyncio.current_task(self._loop)
        name = task.get_name() if task is not None else ""
        job_id = name[4:] if name.startswith("job-") else None
        kind = self.job_of(job_id) if job_id else None
        where = _where(sys._current_frames().get(self._loop_thread))
        if kind is not None:
            log.warning(
                "the event loop has been blocked for %.1fs by job %s (%s), at %s: an async "
                "handler must not block (time.sleep, computing, blocking I/O): make it a "
                "plain def handler, which runs in a thread, or await what blocks; meanwhile "
                "no lease of this worker is renewed, and its jobs run again elsewhere once "
                "they lapse",
                blocked,
                job_id,
                kind,
                where,
                extra={"action": "loop_blocked", "job_id": job_id, "kind": kind, "at": where},
            )
        else:
            log.warning(
                "the event loop has been blocked for %.1fs, at %s: meanwhile no lease of this "
                "worker is renewed",
                blocked,
                where,
                extra={"action": "loop_blocked", "at": where},
            )


def _where(frame: FrameType | None) -> str:
    """Where the loop's thread is: the innermost frame of the user's own code (not the
    standard library's, not offload's), else the innermost, as `file:line in function`."""
    innermost = frame
    while frame is not None:
        code = frame.f_code
        if not str(Path(code.co_filename).resolve()).startswith(_NOT_USERS):
            break
        frame = frame.f_back
    shown = frame or innermost
    if shown is None:
        return "an unknown place"
    return f"{shown.f_code.co_filename}:{shown.f_lineno} in {shown.f_code.co_name}"
