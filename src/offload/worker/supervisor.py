"""Run N worker processes and restart any that die; forward SIGTERM/SIGINT to them."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from .._children import FORWARDED, child_options

log = logging.getLogger("offload.supervisor")

#: The signals a supervisor stops on (and forwards, as `FORWARDED`).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: Shortest gap between two restarts of one slot (seconds), so a crash loop can't spin.
DEFAULT_RESTART_BACKOFF_S = 1.0
#: The gap doubles for each process that dies within this many seconds of its start (a
#: backend out of reach at start, say), up to `MAX_RESTART_BACKOFF_S`.
QUICK_DEATH_S = 10.0
MAX_RESTART_BACKOFF_S = 30.0
#: The exit code of a worker process that cannot start as configured (a configuration
#: error, a schema that needs `offload migrate` or a newer offload): a restart would fail
#: the same way, so the supervisor stops, with this code.
CANNOT_START = 2


def stopped_cleanly(code: int, stop_signal: int | None) -> bool:
    """Whether a worker process's exit code is a clean stop: 0, or death by the signal the
    supervisor sent it to stop (`stop_signal`). A process signalled before its worker set
    up its handlers (still importing, on a busy machine) dies of the signal's default
    action; it had claimed nothing, so it stopped as asked."""
    return code == 0 or (stop_signal is not None and code == -stop_signal)


class Supervisor:
    """Keeps `processes` copies of a worker command running until asked to stop.

    Args:
        argv: the command of one worker process (`offload worker … --processes 1`).
        processes: how many to keep running.
        others_argv: the command of every process but the first, when it differs (the
            first one announces what they all serve; the others need not repeat it).
        slot_argv: arguments added to the command of process `i` (its own metrics port).
        until_done: a process that exits 0 is done and not restarted (`--max-jobs`,
            `--exit-when-idle`); the supervisor returns once every process is done.
    """

    def __init__(
        self,
        argv: Sequence[str],
        processes: int,
        *,
        others_argv: Sequence[str] | None = None,
        slot_argv: Callable[[int], Sequence[str]] | None = None,
        until_done: bool = False,
    ) -> None:
        self.argv = list(argv)
        self.others_argv = list(argv if others_argv is None else others_argv)
        self.slot_argv = slot_argv
        self.until_done = until_done
        self.processes = processes
        self.children: list[subprocess.Popen[bytes] | None] = [None] * processes
        self.started_at = [0.0] * processes
        self.done = [False] * processes
        #: Each slot's gap between its process's start and the next (doubled on quick
        #: deaths), and when its next process starts (after a death).
        self.backoff = [DEFAULT_RESTART_BACKOFF_S] * processes
        self.respawn_at: list[float | None] = [None] * processes
        #: The exit code of a process that could not start as configured (CANNOT_START).
        self.cannot_start: int | None = None
        #: The signal the processes were sent to stop (None until then).
        self.stop_signal: int | None = None
        #: The processes told to stop (pids).
        self._told: set[int] = set()

    @property
    def stopping(self) -> bool:
        """Whether the processes were told to stop."""
        return self.stop_signal is not None

    def _spawn(self, slot: int) -> None:
        argv = self.argv if slot == 0 else self.others_argv
        if self.slot_argv is not None:
            argv = [*argv, *self.slot_argv(slot)]
        self.children[slot] = subprocess.Popen(argv, **child_options())
        self.started_at[slot] = time.monotonic()

    def _signal(self, signum: int, _frame: object) -> None:
        if not self.stopping:
            running = sum(1 for c in self.children if c is not None and c.poll() is None)
            log.info(
                "stopping %d worker process%s (%s)",
                running,
                "" if running == 1 else "es",
                signal.Signals(signum).name,
                extra={"action": "supervisor_stop", "processes": running},
            )
        self.stop_signal = FORWARDED
        for child in self.children:
            if child is not None and child.poll() is None:
                child.send_signal(FORWARDED)
                self._told.add(child.pid)

    def run(self) -> int:
        """Supervise until SIGTERM, SIGINT or SIGHUP (its terminal closed: its children, in
        sessions of their own, get no SIGHUP of theirs), or until a process cannot start as
        configured; returns the exit code (0 when all stopped cleanly; `CANNOT_START`)."""
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._signal)
        for slot in range(self.processes):
            self._spawn(slot)
        while not (self.stopping or all(self.done)):
            for slot in range(self.processes):
                self._look_after(slot)
            time.sleep(0.2)
        return self._finish()

    def _finish(self) -> int:
        """Wait for every process to stop; the exit code. A process that had died on its
        own before the stop reached it (between two looks) is said, as a death seen by a
        look is, and does not count against the stop, which went as asked."""
        codes = []
        for slot, child in enumerate(self.children):
            if child is None:
                continue
            if not self.done[slot] and child.pid not in self._told:
                code = child.poll()
                if code is not None and code not in (0, CANNOT_START):
                    log.warning(
                        "worker process %d exited with %s before the stop reached it",
                        child.pid,
                        code,
                        extra={"action": "worker_died"},
                    )
                    continue
                if code is None:
                    child.send_signal(FORWARDED)  # one restarted as the stop came: tell it
            codes.append(child.wait())
        if self.cannot_start is not None:
            return self.cannot_start
        return 0 if all(stopped_cleanly(code, self.stop_signal) for code in codes) else 1

    def _look_after(self, slot: int) -> None:
        """Restart the slot's process once it died (after its backoff), unless it was done
        or could not start as configured (then stop them all)."""
        child, now = self.children[slot], time.monotonic()
        if self.done[slot] or self.stopping:
            return
        if child is not None and child.poll() is None:
            return
        if child is not None:  # it has just ended
            code = child.returncode
            if self.until_done and code == 0:
                self.done[slot] = True  # ran what it was to run
                return
            if code == CANNOT_START:
                log.error(
                    "worker process %d exited with %d: it cannot start as configured (its "
                    "message above), and would not on a restart; stopping",
                    child.pid,
                    code,
                    extra={"action": "worker_cannot_start"},
                )
                self.cannot_start = code
                self._signal(signal.SIGTERM, None)
                return
            lived = now - self.started_at[slot]
            quick = lived < QUICK_DEATH_S
            gap = min(MAX_RESTART_BACKOFF_S, self.backoff[slot] * 2) if quick else None
            self.backoff[slot] = gap or DEFAULT_RESTART_BACKOFF_S
            self.respawn_at[slot] = due = max(now, self.started_at[slot] + self.backoff[slot])
            self.children[slot] = None
            log.warning(
                "worker process %d exited with %s; restarting in %.0fs",
                child.pid,
                code,
                due - now,
                extra={"action": "worker_restart"},
            )
            return
        respawn = self.respawn_at[slot]
        if respawn is not None and now >= respawn:
            self.respawn_at[slot] = None
            self._spawn(slot)


def worker_argv(app_ref: str, options: Sequence[str]) -> list[str]:
    """The command line of one child worker process."""
    return [
        sys.executable,
        "-m",
        "offload",
        "worker",
        "--app",
        app_ref,
        "--processes",
        "1",
        *options,
    ]
