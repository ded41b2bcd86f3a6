"""The autoscaler's policy on a stepped clock: up on the oldest ready job's age, up on the
backlog against the clearing rate, a cool-down between decisions, down after a quiet
period, never beyond MIN or MAX; and the duration and bounds flags' parsing."""

from __future__ import annotations

import pytest

from offload.worker.scaling import (
    REASON_BACKLOG,
    REASON_OLDEST_AGE,
    REASON_QUIET,
    Backlog,
    Decision,
    ScalingPolicy,
    parse_bounds,
    parse_duration,
)


def policy(**kw: float) -> ScalingPolicy:
    options: dict[str, float] = {
        "min_processes": 1,
        "max_processes": 3,
        "target_wait_s": 2.0,
        "scale_down_after_s": 30.0,
        "cooldown_s": 5.0,
        **kw,
    }
    return ScalingPolicy(**options)


def idle(completed: int = 0) -> Backlog:
    return Backlog(ready=0, oldest_age_s=0.0, completed=completed)


def test_a_ready_job_older_than_the_target_adds_a_process() -> None:
    p = policy()
    assert p.decide(0.0, 1, Backlog(ready=5, oldest_age_s=1.9, completed=0)) is None
    decision = p.decide(1.0, 1, Backlog(ready=5, oldest_age_s=3.1, completed=0))
    assert decision == Decision(
        "up", 1, 2, REASON_OLDEST_AGE, "oldest ready job 3.1 s > target 2 s"
    )
    assert str(decision) == "scale up 1→2: oldest ready job 3.1 s > target 2 s"


def test_more_ready_jobs_than_the_processes_clear_in_the_target_adds_one() -> None:
    # Given one busy process seen clearing 10 jobs a second (ready jobs at both readings)
    p = policy()
    assert p.decide(0.0, 1, Backlog(ready=10, oldest_age_s=0.1, completed=0)) is None
    assert p.decide(1.0, 1, Backlog(ready=15, oldest_age_s=0.5, completed=10)) is None
    assert p.per_process_rate() == pytest.approx(10.0)
    # When more are ready than it clears in the 2 s target (20), though none is old yet
    decision = p.decide(2.0, 1, Backlog(ready=25, oldest_age_s=0.5, completed=20))
    # Then a process is added, for the backlog
    assert decision is not None and decision.reason == REASON_BACKLOG
    assert str(decision) == "scale up 1→2: 25 ready jobs > 20 that 1 process clears in 2 s"


def test_the_rate_counts_only_intervals_that_kept_the_processes_busy() -> None:
    p = policy()
    p.decide(0.0, 2, idle())
    p.decide(1.0, 2, Backlog(ready=3, oldest_age_s=0.0, completed=4))  # idle before: not busy
    assert p.per_process_rate() is None
    p.decide(2.0, 2, Backlog(ready=3, oldest_age_s=0.0, completed=12))  # 8 jobs, 2 proc-s
    assert p.per_process_rate() == pytest.approx(4.0)


def test_the_rate_forgets_intervals_older_than_its_window() -> None:
    p = policy(rate_window_s=5.0)
    p.decide(0.0, 1, Backlog(ready=3, oldest_age_s=0.0, completed=0))
    p.decide(1.0, 1, Backlog(ready=3, oldest_age_s=0.0, completed=10))
    p.decide(7.0, 1, idle(10))
    assert p.per_process_rate() is None


def test_no_second_decision_within_the_cooldown() -> None:
    p = policy(cooldown_s=5.0)
    old = Backlog(ready=50, oldest_age_s=9.0, completed=0)
    assert p.decide(0.0, 1, old) is not None
    assert p.decide(4.9, 2, old) is None  # still cooling down
    decision = p.decide(5.0, 2, old)
    assert decision is not None and (decision.size, decision.to) == (2, 3)


def test_a_process_still_starting_holds_back_the_next_scale_up() -> None:
    # Given a process added at 0 s (1→2) that has not started claiming yet
    p = policy(cooldown_s=1.0, start_wait_s=20.0)
    old = Backlog(ready=50, oldest_age_s=9.0, completed=0)
    assert p.decide(0.0, 1, old) is not None
    # When the backlog still asks for more after the cool-down, it is not added
    assert p.decide(2.0, 2, old, starting_since=0.0) is None
    assert p.decide(10.0, 2, old, starting_since=0.0) is None
    # Then once the process has started, the next one is
    decision = p.decide(11.0, 2, old, starting_since=None)
    assert decision is not None and (decision.size, decision.to) == (2, 3)


def test_a_process_that_never_starts_holds_back_no_longer_than_the_start_wait() -> None:
    p = policy(cooldown_s=1.0, start_wait_s=20.0, max_processes=4)
    old = Backlog(ready=50, oldest_age_s=9.0, completed=0)
    assert p.decide(0.0, 1, old) is not None
    assert p.decide(19.9, 2, old, starting_since=0.0) is None
    decision = p.decide(20.0, 2, old, starting_since=0.0)
    assert decision is not None and decision.to == 3


def test_a_process_starting_does_not_hold_back_a_scale_down() -> None:
    p = policy(scale_down_after_s=10.0)
    assert p.decide(0.0, 2, idle(), starting_since=0.0) is None
    decision = p.decide(10.0, 2, idle(), starting_since=0.0)
    assert decision is not None and decision.direction == "down"


def test_never_above_max_even_counting_processes_still_stopping() -> None:
    p = policy(max_processes=2, cooldown_s=0.0)
    old = Backlog(ready=50, oldest_age_s=9.0, completed=0)
    assert p.decide(0.0, 2, old) is None
    assert p.decide(1.0, 1, old, alive=2) is None  # one removed, not yet exited
    assert p.decide(2.0, 1, old, alive=1) is not None


def test_a_quiet_period_removes_one_process_and_the_next_waits_for_another() -> None:
    # Given three processes and nothing ready from t=10 on
    p = policy(scale_down_after_s=30.0, cooldown_s=5.0)
    p.decide(0.0, 3, Backlog(ready=9, oldest_age_s=1.0, completed=0))
    assert p.decide(10.0, 3, idle()) is None
    assert p.decide(39.9, 3, idle()) is None
    # When it has been quiet for 30 s, one process goes
    decision = p.decide(40.0, 3, idle())
    assert decision == Decision(
        "down", 3, 2, REASON_QUIET, "quiet for 30.0 s (scale down after 30 s)"
    )
    # Then the next removal waits out a quiet period of its own
    assert p.decide(69.9, 2, idle()) is None
    decision = p.decide(70.0, 2, idle())
    assert decision is not None and (decision.size, decision.to) == (2, 1)


def test_never_below_min() -> None:
    p = policy(min_processes=2, scale_down_after_s=1.0, cooldown_s=0.0)
    p.decide(0.0, 2, idle())
    assert p.decide(100.0, 2, idle()) is None


def test_a_busy_reading_restarts_the_quiet_period() -> None:
    p = policy(max_processes=2, scale_down_after_s=30.0)
    p.decide(0.0, 2, idle())
    assert p.decide(20.0, 2, Backlog(ready=1, oldest_age_s=2.5, completed=0)) is None  # at MAX
    p.decide(21.0, 2, idle())
    assert p.decide(50.0, 2, idle()) is None  # 29 s quiet since t=21
    assert p.decide(51.0, 2, idle()) is not None


def test_ready_jobs_one_process_fewer_would_clear_in_time_are_quiet() -> None:
    # Given two processes seen clearing 10 jobs a second each
    p = policy(scale_down_after_s=5.0, cooldown_s=0.0)
    p.decide(0.0, 2, Backlog(ready=4, oldest_age_s=0.1, completed=0))
    p.decide(1.0, 2, Backlog(ready=4, oldest_age_s=0.1, completed=20))
    # When a few jobs stay ready (fewer than one process clears in the 2 s target: 20)
    for t in range(2, 7):
        decision = p.decide(float(t), 2, Backlog(ready=15, oldest_age_s=0.1, completed=20 * t))
    # Then that is quiet: one process goes
    assert decision is not None and decision.direction == "down"


def test_jobs_one_process_fewer_would_not_clear_in_time_are_not_quiet() -> None:
    p = policy(scale_down_after_s=5.0, cooldown_s=0.0)
    p.decide(0.0, 2, Backlog(ready=4, oldest_age_s=0.1, completed=0))
    for t in range(1, 20):
        decision = p.decide(float(t), 2, Backlog(ready=30, oldest_age_s=0.1, completed=20 * t))
        assert decision is None or decision.direction != "down"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2s", 2.0), ("500ms", 0.5), ("1m", 60.0), ("1h", 3600.0), ("2", 2.0), ("0.25", 0.25),
     (" 1.5s ", 1.5), (".5s", 0.5)],
)  # fmt: skip
def test_durations_take_a_unit_or_plain_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "2 d", "-1s", "1m30s", "two"])
def test_a_malformed_duration_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_bounds_are_min_colon_max() -> None:
    assert parse_bounds("1:8") == (1, 8)
    assert parse_bounds("3:3") == (3, 3)


@pytest.mark.parametrize(
    ("text", "message"),
    [("4", "is not MIN:MAX"), ("a:b", "is not MIN:MAX"), ("1:", "is not MIN:MAX"),
     ("-1:3", "is not MIN:MAX"), ("0:3", "MIN must be at least 1"),
     ("4:2", r"MAX \(2\) must not be below MIN \(4\)")],
)  # fmt: skip
def test_malformed_bounds_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_bounds(text)


def test_the_policy_refuses_bounds_out_of_order() -> None:
    with pytest.raises(ValueError):
        ScalingPolicy(min_processes=3, max_processes=2)
    with pytest.raises(ValueError):
        ScalingPolicy(min_processes=0, max_processes=2)
