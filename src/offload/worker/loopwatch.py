"""A watch on a worker's event loop from a thread of its own: an async handler that blocks
the loop (it sleeps, computes, or calls blocking I/O) is named while it blocks, with the
line it is at and what to do, not only told of as a stall once it is over."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import sysconfig
import threading
from collections.abc import Callable
from pathlib import Path
from time import monotonic, process_time
from types import CodeType, FrameType

log = logging.getLogger("offload.worker")

#: How often the loop marks itself alive, and the watch looks.
TICK_S = 0.25
#: A loop that has not run for this long is blocked: the watch says by what.
BLOCKED_AFTER_S = 2.0

#: Where a frame is not the user's own code: offload's, and the standard library's (but
#: for the packages installed in it, which are the user's choice).
_OFFLOAD = str(Path(__file__).resolve().parents[1]) + os.sep
_STDLIB = str(Path(sysconfig.get_paths()["stdlib"]).resolve()) + os.sep
_INSTALLED = (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}")
#: Installed packages that are an event loop's own code, not the user's.
_LOOPS = (f"{os.sep}uvloop{os.sep}",)

#: What a job's task runs, as the watch is told of it: its kind and whether its handler
#: is a plain (`def`) one, run in a thread.
JobOf = Callable[[str], "tuple[str, bool] | None"]


class LoopWatch:
    """Watches one event loop from a daemon thread.

    Args:
        job_of: the kind of the job whose id is given, and whether its handler is plain,
            or None (a job this worker does not hold).
        handlers: the code of each async handler, by kind: a handler run in a task of
            its own (a timeout's, on Python 3.11) is found in the loop's stack.
        blocked_after_s: how long the loop may not run before the watch warns.
        in_threads: the jobs whose plain handlers run in threads now, as `job (kind)`.
    """

    def __init__(
        self,
        job_of: JobOf,
        handlers: dict[CodeType, str] | None = None,
        blocked_after_s: float | None = None,
        in_threads: Callable[[], list[str]] | None = None,
    ) -> None:
        self.job_of = job_of
        self.handlers = handlers or {}
        self.in_threads = in_threads or list
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

    def blocked_s(self) -> float:
        """How long the loop has not run now, in seconds (from any thread): a few tenths
        while it runs, as its mark comes every `TICK_S`."""
        return max(0.0, monotonic() - self._seen)

    def _tick(self) -> None:
        self._seen = monotonic()
        assert self._loop is not None
        self._handle = self._loop.call_later(TICK_S, self._tick)

    def _watch(self) -> None:
        told_at: float | None = None  # when the block under way was told of (its start)
        looked, looked_cpu = monotonic(), process_time()
        while True:
            stopping = self._stop.wait(TICK_S)
            now, cpu = monotonic(), process_time()
            # This thread woke late too, and the process hardly ran meanwhile: it was
            # paused (SIGSTOP, a suspended machine), not its loop blocked (a computation
            # that holds the GIL in one call keeps this thread waiting too, but runs).
            late = now - looked
            paused = late > TICK_S + self.blocked_after_s / 2 and cpu - looked_cpu < late / 2
            looked, looked_cpu = now, cpu
            seen = self._seen
            blocked = now - seen
            if stopping or paused or blocked < self.blocked_after_s:
                if told_at is not None and not paused:
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
        frame = sys._current_frames().get(self._loop_thread)
        task = asyncio.current_task(self._loop)
        name = task.get_name() if task is not None else ""
        job_id = name[4:] if name.startswith("job-") else None
        job = self.job_of(job_id) if job_id else None
        where = _where(frame)
        fields = {"action": "loop_blocked", "at": where, "job_id": job_id}
        if job is not None and job[1]:  # a plain handler's: the GIL, held by its thread
            log.warning(
                "the event loop has been blocked for %.1fs as job %s (%s) runs its plain "
                "handler in a thread, at %s: a computation that holds the interpreter's lock "
                "(GIL) stops every thread; run it in a process (ProcessPoolExecutor), or "
                "with a library that lets go of the lock",
                blocked,
                job_id,
                job[0],
                where,
                extra={**fields, "kind": job[0]},
            )
            return
        kind = job[0] if job is not None else _handler_in(frame, self.handlers)
        plain = self.in_threads() if kind is None else []
        if plain:  # no async handler runs: one of these holds the GIL, most likely
            log.warning(
                "the event loop has been blocked for %.1fs, at %s, while plain handlers run "
                "in threads (%s): a computation that holds the interpreter's lock (GIL) stops "
                "every thread; run it in a process (ProcessPoolExecutor), or with a library "
                "that lets go of the lock",
                blocked,
                where,
                ", ".join(plain),
                extra={**fields, "plain": plain},
            )
            return
        if kind is None:
            log.warning(
                "the event loop has been blocked for %.1fs, at %s: meanwhile no lease of this "
                "worker is renewed",
                blocked,
                where,
                extra=fields,
            )
            return
        log.warning(
            "the event loop has been blocked for %.1fs by %s (%s), at %s: an async "
            "handler must not block (time.sleep, computing, blocking I/O): make it a "
            "plain def handler, which runs in a thread, or await what blocks; meanwhile "
            "no lease of this worker is renewed, and its jobs run again elsewhere once "
            "they lapse",
            blocked,
            f"job {job_id}" if job is not None else "a job",
            kind,
            where,
            extra={**fields, "kind": kind},
        )


def _users(filename: str) -> bool:
    """Whether code of `filename` is the user's: not offload's, nor the standard library's
    (the packages installed under it are, for this)."""
    path = str(Path(filename).resolve())
    if path.startswith(_OFFLOAD) or any(part in path for part in _LOOPS):
        return False
    return not path.startswith(_STDLIB) or any(part in path for part in _INSTALLED)


def _where(frame: FrameType | None) -> str:
    """Where the loop's thread is: the innermost frame of the user's own code, else the
    innermost, as `file:line in function`."""
    innermost = frame
    while frame is not None and not _users(frame.f_code.co_filename):
        frame = frame.f_back
    shown = frame or innermost
    if shown is None:
        return "an unknown place"
    return f"{shown.f_code.co_filename}:{shown.f_lineno} in {shown.f_code.co_name}"


def _handler_in(frame: FrameType | None, handlers: dict[CodeType, str]) -> str | None:
    """The kind of the async handler running in the loop's stack, if one is."""
    while frame is not None:
        kind = handlers.get(frame.f_code)
        if kind is not None:
            return kind
        frame = frame.f_back
    return None
