"""The held-lease rule: a worker starts a job held ahead only while its lease surely
lasts, by whichever of its clocks ran further since the lease was renewed."""

from __future__ import annotations

import pytest

from offload.worker.lease import Renewal, fresh, stalled_s

RENEWED = Renewal(mono=100.0, wall=1_800_000_000.0)


@pytest.mark.parametrize(
    ("mono_passed", "wall_passed", "left"),
    [
        (0.0, 0.0, 6.0),
        (2.0, 1.0, 4.0),  # the monotonic clock ran further: it counts
        (1.0, 5.0, 1.0),  # the wall clock ran further (a suspended machine): it counts
        (1.0, -30.0, 5.0),  # the wall clock stepped back: the monotonic one still counts
        (9.0, 9.0, -3.0),  # lapsed
    ],
)
def test_lease_left_counts_the_clock_that_ran_further(
    mono_passed: float, wall_passed: float, left: float
) -> None:
    now = {"mono": RENEWED.mono + mono_passed, "wall": RENEWED.wall + wall_passed}
    assert RENEWED.left_s(6.0, **now) == pytest.approx(left)


@pytest.mark.parametrize(
    ("passed", "is_fresh"),
    [(0.0, True), (3.9, True), (4.0, False), (4.1, False), (60.0, False)],
)
def test_held_job_starts_only_with_more_than_a_heartbeat_of_lease_left(
    passed: float, is_fresh: bool
) -> None:
    # A 6 s lease beating every 2 s: more than 2 s must surely be left.
    now = {"mono": RENEWED.mono + passed, "wall": RENEWED.wall + passed}
    assert fresh(RENEWED, 6.0, 2.0, **now) is is_fresh


@pytest.mark.parametrize(
    ("slept", "stalled"),
    [(2.0, 0.0), (3.9, 0.0), (4.0, 0.0), (4.5, 2.5), (62.0, 60.0)],
)
def test_a_heartbeat_late_by_more_than_its_interval_is_a_stall(
    slept: float, stalled: float
) -> None:
    assert stalled_s(slept, 2.0) == pytest.approx(stalled)
