"""Prefetch sizing: the mean run time, the allowance, the claim size and the give-back rule."""

from __future__ import annotations

import pytest

from offload.worker.prefetch import GIVE_BACK_AFTER_S, Prefetch


@pytest.mark.parametrize(
    ("runs", "mean"),
    [
        ([], None),
        ([0.2], 0.2),  # the first run is the mean
        ([1.0, 3.0], 2.0),  # longer: half way at once
        ([1.0, 3.0, 3.0], 2.5),
        ([1.0, 0.0], 0.95),  # shorter: only 5 % of the way
        ([2.0, 0.0, 0.0], 1.805),
        ([0.5, 0.5], 0.5),
    ],
)
def test_mean_run_moves_up_fast_and_down_slowly(runs: list[float], mean: float | None) -> None:
    prefetch = Prefetch(10, 1)
    for seconds in runs:
        prefetch.ran(seconds)
    assert prefetch.mean_run == (None if mean is None else pytest.approx(mean))


@pytest.mark.parametrize(
    ("limit", "concurrency", "mean_run", "allowance"),
    [
        (256, 16, None, 0),  # no run time yet: claim for free slots only
        (0, 16, 0.001, 0),  # prefetch off
        (256, 16, 1.0, 1),  # 16 slots x 0.1 s / 1 s = 1.6 jobs
        (256, 16, 2.0, 0),  # 0.8: long work is not held back from other workers
        (256, 16, 0.01, 160),
        (256, 16, 0.001, 256),  # capped by the limit
        (40, 2, 0.0, 40),  # a zero run time cannot divide by zero
        (40, 2, 0.3, 0),
        (50, 1, 0.002, 50),
        (50, 1, 0.004, 25),
    ],
)
def test_allowance_holds_about_the_horizon_of_work(
    limit: int, concurrency: int, mean_run: float | None, allowance: int
) -> None:
    prefetch = Prefetch(limit, concurrency)
    if mean_run is not None:
        prefetch.ran(mean_run)
    assert prefetch.allowance() == allowance


@pytest.mark.parametrize(
    ("allowance_run", "free", "held_ahead", "size"),
    [
        (None, 16, 0, 16),  # cold: free slots only
        (None, 0, 0, 0),  # every slot busy, nothing to hold: wait
        (0.01, 16, 0, 176),  # free slots plus the whole allowance of 160
        (0.01, 0, 0, 160),
        (0.01, 0, 160, 0),  # the allowance is in hand
        (0.01, 0, 80, 80),  # 80 missing: at least half the allowance, claim
        (0.01, 0, 81, 0),  # 79 missing, under half: wait for a bigger batch
        (0.01, 0, 100, 0),
        (0.01, 4, 90, 0),  # 74 missing: wait
        (0.01, 10, 90, 80),  # 80 missing: claim
        (0.01, 0, 200, 0),  # more than allowed (the jobs turned out long): never negative
        (1.0, 1, 1, 1),  # allowance 1: half of it rounds up to one job
        (1.0, 0, 1, 0),
        (2.0, 3, 0, 3),  # allowance 0
        (2.0, 3, 2, 1),  # held ahead with no allowance (it shrank): room for one more
    ],
)
def test_claim_size(allowance_run: float | None, free: int, held_ahead: int, size: int) -> None:
    prefetch = Prefetch(256, 16)
    if allowance_run is not None:
        prefetch.ran(allowance_run)
    assert prefetch.claim_size(free, held_ahead) == size


@pytest.mark.parametrize(
    ("mean_run", "held_ahead", "excess"),
    [
        (None, 0, 0),
        (None, 1, 1),  # no allowance: anything held beyond 2 x 0 goes back
        (0.01, 160, 0),
        (0.01, 320, 0),  # within twice the allowance: not worth the writes
        (0.01, 321, 161),  # beyond: back to the allowance
        (1.0, 2, 0),  # allowance 1
        (1.0, 3, 2),
        (2.0, 7, 7),  # allowance 0: every job held ahead goes back
    ],
)
def test_excess_gives_back_down_to_the_allowance(
    mean_run: float | None, held_ahead: int, excess: int
) -> None:
    prefetch = Prefetch(256, 16)
    if mean_run is not None:
        prefetch.ran(mean_run)
    assert prefetch.excess(held_ahead, 100.0) == 0  # not at once: see below
    assert prefetch.excess(held_ahead, 100.0 + GIVE_BACK_AFTER_S) == excess


def test_a_moments_slowness_gives_nothing_back() -> None:
    prefetch = Prefetch(256, 16)
    for _ in range(20):
        prefetch.ran(0.001)  # 256 held ahead, the limit
    prefetch.ran(0.05)  # one slow run: the mean moves to 25.5 ms, an allowance of 62
    assert prefetch.excess(256, 10.0) == 0
    assert prefetch.give_back_at() == 10.0 + GIVE_BACK_AFTER_S
    for _ in range(30):
        prefetch.ran(0.001)  # short again: the mean comes down
    assert prefetch.excess(256, 10.2) == 0  # within twice the allowance again
    assert prefetch.give_back_at() is None
    # The excess counts from its new start, not the old one's.
    prefetch.ran(0.05)
    assert prefetch.excess(256, 10.3) == 0
    assert prefetch.excess(256, 10.3 + GIVE_BACK_AFTER_S - 0.01) == 0
    assert prefetch.excess(256, 10.3 + GIVE_BACK_AFTER_S) > 0


def test_jobs_that_stay_long_go_back_once_and_the_wait_starts_over() -> None:
    prefetch = Prefetch(256, 16)
    prefetch.ran(0.001)
    prefetch.ran(1.0)  # the mean: 0.5 s, an allowance of 3
    assert prefetch.excess(200, 0.0) == 0
    assert prefetch.excess(200, GIVE_BACK_AFTER_S) == 197
    assert prefetch.give_back_at() is None  # given back: nothing pending
    assert prefetch.excess(7, GIVE_BACK_AFTER_S + 1) == 0  # a later excess waits anew
    assert prefetch.give_back_at() == GIVE_BACK_AFTER_S + 1 + GIVE_BACK_AFTER_S


@pytest.mark.parametrize(
    ("running", "allowance"),
    [
        ((), 160),  # 16 slots, 10 ms runs: 160 in the 0.1 s horizon
        ((99.995,) * 16, 160),  # every run within the mean: as free slots
        ((99.985,) * 16, 160),  # 1.5 times the mean: run times spread, none is late yet
        ((90.0,), 150),  # one slot hung for 10 s finishes next to nothing: 15 slots' worth
        ((90.0,) * 16, 0),  # every slot hung: nothing held ahead
        ((99.0,) * 8 + (99.995,) * 8, 80),  # half of them 1 s into 10 ms runs
        ((99.995, 90.0), 160),  # oldest first: the walk stops at the first that is on time
    ],
)
def test_runs_still_going_twice_the_mean_shrink_the_allowance(
    running: tuple[float, ...], allowance: int
) -> None:
    prefetch = Prefetch(256, 16)
    prefetch.ran(0.01)
    assert prefetch.allowance(100.0, running) == allowance
