"""SQLite: a write lock held (by anyone) past the lease costs healthy workers nothing."""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest

from .conftest import Stack
from .test_crashes import wait_for

pytestmark = pytest.mark.slow

#: The workers' lease (seconds): short, so that the stall below outlasts it twice.
LEASE_S = 1.5
#: How long another connection holds the write lock (seconds).
STALL_S = 4.0


def _hold_write_lock(path: Path, seconds: float) -> None:
    """Hold the database's write lock from a connection of another program (the sqlite3
    shell, a backup, a migration) for `seconds`: the fault being injected."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        time.sleep(seconds)
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def test_a_write_lock_held_past_the_lease_runs_no_job_twice(sqlite_stack: Stack) -> None:
    stack = sqlite_stack
    stack.start_web()
    alice = stack.client()
    lease = str(LEASE_S)
    for _ in range(2):
        stack.start_worker("--lease", lease, "--concurrency", "4", "--queues", "slow")
    ids = [
        alice.post("/v1/jobs/e2e.slow", json={"seconds": STALL_S + 2}).json()["id"]
        for _ in range(6)
    ]

    # Given six jobs running on two healthy workers that heartbeat every half a second,
    def started() -> int:
        return sum(line.startswith("start") for line in stack.log_lines("slow.log"))

    wait_for(lambda: started() >= len(ids), 40, "every job to start", stack)
    # when another program holds the write lock for longer than the lease (twice over),
    _hold_write_lock(stack.root / "jobs.db", STALL_S)
    # then every job still ends succeeded on its first attempt, none started twice, and no
    # worker lost a lease it was heartbeating.
    for job_id in ids:
        record = stack.wait_state(alice, job_id, {"succeeded", "dead", "failed"}, timeout=60)
        assert record["state"] == "succeeded" and record["attempt"] == 1, record
    starts = Counter(line.split()[1] for line in stack.log_lines("slow.log") if "start" in line)
    assert starts == dict.fromkeys(ids, 1), stack.output()
    assert "lost the lease" not in stack.output()
