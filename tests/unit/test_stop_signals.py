"""A worker process's signals to stop: the first stops it gracefully, a second one a while
later ends the grace period, and one that comes with the first is that one come twice."""

from __future__ import annotations

from offload.cli import SAME_STOP_S, _asked_twice


class Stops:
    """What `request_stop` was asked, in order."""

    def __init__(self) -> None:
        self.asked: list[bool] = []

    def request_stop(self, *, now: bool = False) -> None:
        self.asked.append(now)


def test_a_second_signal_ends_the_grace_unless_it_came_with_the_first() -> None:
    # Given a worker's stop, on a clock of the test's own,
    clock = [100.0]
    runner = Stops()
    stop = _asked_twice(runner, clock=lambda: clock[0])  # type: ignore[arg-type]
    # a Ctrl+C that reaches it from the terminal and from its supervisor within a moment
    # (and systemd signalling every process of a service) is one request,
    stop()
    clock[0] += 0.05
    stop()
    clock[0] += SAME_STOP_S - 0.1
    stop()
    assert runner.asked == [False, False, False]
    # and one that comes a second after the first ends the grace period.
    clock[0] += 0.05
    stop()
    assert runner.asked == [False, False, False, True]
