"""A worker's warnings of failed backend calls: each kind at once, then once in a while
with how many were left unsaid (an outage fails every loop every second)."""

from __future__ import annotations

import logging

import pytest

from offload.errors import BackendError
from offload.worker.failures import FailureLog


def test_each_kind_is_warned_of_once_in_a_while_with_the_count_left_unsaid(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    failures = FailureLog(every_s=10, clock=lambda: now[0])
    down = BackendError("cannot connect to PostgreSQL at db:5432/app")
    with caplog.at_level("DEBUG", logger="offload.worker"):
        # Given claims failing every second for 25 s, and the heartbeat once,
        for _ in range(25):
            failures.warn("claim", down, action="claim_error")
            if now[0] == 100.0:
                failures.warn("heartbeat", down, action="heartbeat_error")
            now[0] += 1
    warned = [r for r in caplog.records if r.levelname == "WARNING"]
    # then the claims were warned of at 0, 10 and 20 s, each later one counting those
    # between; the heartbeat's own kind at once,
    assert [r.getMessage() for r in warned] == [
        f"claim failed: {down}",
        f"heartbeat failed: {down}",
        f"claim failed: {down} (9 more since the last warning)",
        f"claim failed: {down} (9 more since the last warning)",
    ]
    assert [getattr(r, "action", None) for r in warned] == [
        "claim_error",
        "heartbeat_error",
        "claim_error",
        "claim_error",
    ]
    # and every failure not warned of is at debug.
    assert sum(r.levelname == "DEBUG" for r in caplog.records) == 22


def test_another_sort_of_failure_is_warned_of_at_once(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    failures = FailureLog(every_s=10, clock=lambda: now[0])
    down = BackendError("cannot connect")
    down.out_of_reach = True
    with caplog.at_level("WARNING", logger="offload.worker"):
        # Given settles failing in an outage, warned of a second ago,
        failures.warn("settle", down, action="settle_error")
        now[0] += 1
        failures.warn("settle", down, action="settle_error")
        # when one fails otherwise (the server answered: a bug, a constraint),
        failures.warn("settle", BackendError("violates check constraint"), action="settle_error")
    # then that one is warned of at once.
    assert [r.getMessage() for r in caplog.records] == [
        "settle failed: cannot connect",
        "settle failed: violates check constraint",
    ]


def test_offloads_processes_leave_the_pools_connection_warnings_out() -> None:
    import subprocess
    import sys

    script = (
        "import logging; from offload.cli import _setup_logging; _setup_logging(); "
        "print(logging.getLogger('psycopg.pool').getEffectiveLevel())"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == str(logging.ERROR)


def test_a_message_of_several_lines_is_warned_of_on_one(caplog: pytest.LogCaptureFixture) -> None:
    # libpq's errors carry CONTEXT and DETAIL lines, which broke line-oriented log parsing
    failures = FailureLog(clock=lambda: 0.0)
    with caplog.at_level(logging.WARNING, logger="offload.worker"):
        failures.warn(
            "settle",
            BackendError("canceling statement due to lock timeout\nCONTEXT:  while locking"),
            action="settle_error",
        )
    (said,) = [r.getMessage() for r in caplog.records]
    assert said == "settle failed: canceling statement due to lock timeout CONTEXT: while locking"
