"""Backoff and should_retry: exponential growth, cap, jitter bounds and parameter checks."""

from __future__ import annotations

import math
import random

import pytest

from offload.retry import Backoff, should_retry


@pytest.mark.parametrize(
    ("backoff", "attempt", "ceiling"),
    [
        (Backoff(base_s=1, factor=2, cap_s=3600), 1, 1.0),
        (Backoff(base_s=1, factor=2, cap_s=3600), 2, 2.0),
        (Backoff(base_s=1, factor=2, cap_s=3600), 3, 4.0),
        (Backoff(base_s=1, factor=2, cap_s=3600), 10, 512.0),
        (Backoff(base_s=1, factor=2, cap_s=3600), 12, 2048.0),
        (Backoff(base_s=1, factor=2, cap_s=3600), 13, 3600.0),  # 4096 capped
        (Backoff(base_s=1, factor=2, cap_s=3600), 40, 3600.0),
        (Backoff(base_s=0.5, factor=3, cap_s=100), 1, 0.5),
        (Backoff(base_s=0.5, factor=3, cap_s=100), 3, 4.5),
        (Backoff(base_s=0.5, factor=3, cap_s=100), 6, 100.0),  # 121.5 capped
        (Backoff(base_s=5, factor=1, cap_s=100), 50, 5.0),  # factor 1: constant delay
        (Backoff(base_s=10, factor=2, cap_s=3), 1, 3.0),  # cap below base wins
        (Backoff(base_s=0, factor=2, cap_s=60), 7, 0.0),
        (Backoff(base_s=1, factor=2, cap_s=3600), 0, 1.0),  # attempt < 1 acts like 1
        (Backoff(base_s=1, factor=2, cap_s=3600), -5, 1.0),
    ],
)
def test_ceiling_grows_exponentially_from_base_and_caps(
    backoff: Backoff, attempt: int, ceiling: float
) -> None:
    assert backoff.ceiling(attempt) == pytest.approx(ceiling)


@pytest.mark.parametrize("attempt", [65, 66, 100, 1_000, 10**6, 10**18, 2**63])
def test_huge_attempt_numbers_do_not_overflow(attempt: int) -> None:
    backoff = Backoff(base_s=1, factor=2, cap_s=900, jitter=0.5)
    assert backoff.ceiling(attempt) == 900.0
    delay = backoff.delay(attempt, random.Random(attempt))
    assert math.isfinite(delay)
    assert 450.0 <= delay <= 900.0


@pytest.mark.parametrize(
    ("backoff", "attempt", "ceiling"),
    [
        # A gentle factor must follow the formula past 64 attempts: 1.01**99 ~ 2.68 s.
        pytest.param(
            Backoff(base_s=1, factor=1.01, cap_s=3600),
            100,
            1.01**99,
            id="gentle-factor-past-64",
        ),
        # A steep (but valid) factor must cap rather than overflow a float.
        pytest.param(
            Backoff(base_s=1, factor=1e6, cap_s=60),
            60,
            60.0,
            id="steep-factor-overflow",
        ),
    ],
)
def test_ceiling_follows_formula_for_any_factor(
    backoff: Backoff, attempt: int, ceiling: float
) -> None:
    assert backoff.ceiling(attempt) == pytest.approx(ceiling)


@pytest.mark.parametrize("jitter", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("attempt", [1, 2, 5, 12, 30])
def test_jittered_delay_stays_within_bounds(jitter: float, attempt: int) -> None:
    backoff = Backoff(base_s=1, factor=2, cap_s=3600, jitter=jitter)
    ceiling = backoff.ceiling(attempt)
    rand = random.Random(1234 + attempt)
    delays = [backoff.delay(attempt, rand) for _ in range(500)]
    assert all(ceiling * (1 - jitter) <= d <= ceiling for d in delays)
    if jitter == 0:
        assert set(delays) == {ceiling}
    else:
        # Jitter actually spreads the delays over most of the window.
        assert max(delays) - min(delays) > 0.8 * ceiling * jitter


def test_delay_is_reproducible_with_a_seeded_random() -> None:
    backoff = Backoff()
    first = [backoff.delay(3, random.Random(7)) for _ in range(3)]
    assert first[0] == first[1] == first[2]


def test_default_first_retry_comes_within_a_few_seconds() -> None:
    backoff = Backoff()
    assert backoff.ceiling(1) <= 2.0
    assert backoff.delay(1, random.Random(0)) <= 2.0
    assert backoff.ceiling(100) <= 3600.0  # and the default cap is an hour at most


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_s": -1.0},
        {"factor": 0.5},
        {"factor": 0.0},
        {"cap_s": -0.1},
        {"cap_s": float("inf")},  # a run time past year 9999 broke every read of the job
        {"cap_s": 366 * 86400.0 + 1},
        {"jitter": -0.01},
        {"jitter": 1.01},
        {"jitter": float("nan")},
    ],
)
def test_invalid_parameters_raise_value_error(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


@pytest.mark.parametrize("field", ["base_s", "factor", "cap_s"])
def test_nan_parameters_raise_value_error(field: str) -> None:
    with pytest.raises(ValueError):
        Backoff(**{field: float("nan")})


@pytest.mark.parametrize(
    ("attempt", "max_attempts", "retry"),
    [
        (1, 1, False),
        (1, 2, True),
        (2, 2, False),
        (1, 5, True),
        (4, 5, True),
        (5, 5, False),
        (6, 5, False),  # over budget (e.g. budget lowered by a handler)
        (0, 1, True),
    ],
)
def test_should_retry_while_budget_remains(attempt: int, max_attempts: int, retry: bool) -> None:
    assert should_retry(attempt, max_attempts) is retry


def test_the_policy_is_one_object_under_its_old_and_public_names() -> None:
    import offload
    import offload.worker.retry as old

    assert old.Backoff is Backoff is offload.Backoff
    assert old.should_retry is should_retry
