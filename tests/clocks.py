"""A clock moved by hand, for code that reads `time.monotonic()`: the test sets the time."""

from __future__ import annotations

from types import ModuleType

import pytest


class HandClock:
    """`time.monotonic` as a test sets it: `clock.now += 5` is five seconds later."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def hand_clock(monkeypatch: pytest.MonkeyPatch, time_of: ModuleType, now: float) -> HandClock:
    """A HandClock at `now` as the `time.monotonic` of the module whose `time` is `time_of`."""
    clock = HandClock(now)
    monkeypatch.setattr(time_of, "monotonic", clock)
    return clock
