"""A supervisor that stops its worker processes: one signalled before its worker set up its
handlers (still importing, on a busy machine) dies of the signal's default action, and that
is the stop it was asked for, not a failure."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from offload.worker import supervisor as supervisor_module
from offload.worker.supervisor import CANNOT_START, Supervisor, stopped_cleanly

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


def test_a_process_that_cannot_start_as_configured_stops_the_supervisor() -> None:
    # Given one process that exits as `offload worker` does on a configuration error or a
    # schema it cannot use (exit 2), beside one that runs,
    cannot = [sys.executable, "-c", "import sys; sys.exit(2)"]
    supervisor = Supervisor(cannot, 2, others_argv=NO_HANDLER)
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    started = time.monotonic()
    try:
        # then the supervisor stops them all and exits 2, where it restarted it for ever.
        assert supervisor.run() == CANNOT_START
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
    assert time.monotonic() - started < 30
    assert [c.returncode for c in supervisor.children if c is not None] == [2, -signal.SIGTERM]


class _Died:
    """A process that has exited with `code`."""

    def __init__(self, code: int) -> None:
        self.returncode = code
        self.pid = 4242

    def poll(self) -> int:
        return self.returncode


def test_a_process_that_dies_soon_after_its_start_is_restarted_ever_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(supervisor_module.time, "monotonic", lambda: now[0])
    supervisor = Supervisor(NO_HANDLER, 1)
    starts: list[float] = []

    def spawn(slot: int) -> None:  # a process that dies at once (its backend out of reach)
        starts.append(now[0])
        supervisor.children[slot] = _Died(1)  # type: ignore[assignment]
        supervisor.started_at[slot] = now[0]

    monkeypatch.setattr(supervisor, "_spawn", spawn)
    spawn(0)
    # Given a process dying at once, again and again, looked after every 0.2 s for 2 min,
    for _ in range(600):
        supervisor._look_after(0)
        now[0] += 0.2
    # then each restart waits twice the last gap, up to 30 s,
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(starts)]
    assert gaps[:5] == [2.0, 4.0, 8.0, 16.0, 30.0] and set(gaps[5:]) == {30.0}
    # and one that ran a while before it died starts again at once, the gap back to 1 s.
    supervisor.started_at[0] = now[0] - 60
    supervisor.children[0] = _Died(-9)  # type: ignore[assignment]
    supervisor._look_after(0)
    supervisor._look_after(0)
    assert starts[-1] == now[0] and supervisor.backoff[0] == 1.0


def test_a_process_that_died_just_before_the_stop_is_said_and_the_stop_is_clean(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a process killed outright (SIGKILL) a moment before the supervisor's stop came,
    # between two of its looks, beside one that stops as asked,
    supervisor = Supervisor(NO_HANDLER, 2)
    running = subprocess.Popen(NO_HANDLER)
    supervisor.children = [_Died(-signal.SIGKILL), running]  # type: ignore[list-item]
    try:
        supervisor._signal(signal.SIGTERM, None)
        # then the supervisor says it died, and exits 0 as after any stop that went as
        # asked (it said the deaths its looks saw, and exited 0 after them too).
        assert supervisor._finish() == 0
    finally:
        running.kill()
        running.wait()
    (said,) = [r for r in caplog.records if getattr(r, "action", "") == "worker_died"]
    assert said.getMessage() == (
        f"worker process 4242 exited with {-signal.SIGKILL} before the stop reached it"
    )
    assert running.returncode == -signal.SIGTERM
