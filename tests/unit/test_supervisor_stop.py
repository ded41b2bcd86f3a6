"""A supervisor that stops its worker processes: one signalled before its worker set up its
handlers (still importing, on a busy machine) dies of the signal's default action, and that
is the stop it was asked for, not a failure."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

from offload.worker.supervisor import Supervisor, stopped_cleanly

#: A process that never sets up a handler: SIGTERM kills it by the default action.
NO_HANDLER = [sys.executable, "-c", "import time; time.sleep(60)"]


@pytest.mark.parametrize(
    ("code", "stop_signal", "clean"),
    [
        (0, None, True),
        (0, signal.SIGTERM, True),
        (-signal.SIGTERM, signal.SIGTERM, True),
        (-signal.SIGINT, signal.SIGINT, True),
        (-signal.SIGTERM, None, False),  # killed by someone else, no stop asked
        (-signal.SIGKILL, signal.SIGTERM, False),
        (1, signal.SIGTERM, False),
    ],
)
def test_stopped_cleanly(code: int, stop_signal: int | None, clean: bool) -> None:
    assert stopped_cleanly(code, stop_signal) is clean


def test_processes_killed_by_the_stop_signal_stopped_cleanly() -> None:
    supervisor = Supervisor(NO_HANDLER, 2)

    def stop_once_spawned() -> None:
        deadline = time.monotonic() + 30
        while not all(c is not None for c in supervisor.children):
            assert time.monotonic() < deadline, "the processes were not spawned"
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill` or Kubernetes would send it

    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    stopper = threading.Thread(target=stop_once_spawned)
    stopper.start()
    try:
        assert supervisor.run() == 0
    finally:
        stopper.join()
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
    codes = [c.returncode for c in supervisor.children if c is not None]
    assert codes == [-signal.SIGTERM, -signal.SIGTERM]
