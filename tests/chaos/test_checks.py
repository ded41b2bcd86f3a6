"""The chaos run's judge: it must flag what it exists to flag (a judge that cannot fail
proves nothing), from hand-made ledgers, rows and execution logs."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.chaos.checks import Checker, Report, read_executions
from bench.chaos.contracts import expected_value
from bench.chaos.ledger import Fault, Ledger, Submission

from offload.contract import JobRow, JobState

pytestmark = pytest.mark.chaos

LEASE_S = 5.0


def row(job_id: str, attempt: int, result: dict[str, int] | None) -> JobRow:
    state = JobState.SUCCEEDED if result is not None else JobState.RUNNING
    return JobRow(
        id=job_id, kind="chaos.work", version=1, queue="chaos", state=state, priority=0,
        attempt=attempt, max_attempts=25, run_at=0.0, enqueued_at=0.0, owner="chaos",
        result=result,
    )  # fmt: skip


def judge(
    tmp_path: Path, lines: list[str], rows: dict[str, JobRow | None], faults: list[Fault]
) -> Report:
    (tmp_path / "exec-1.log").write_text("".join(f"{line}\n" for line in lines))
    ledger = Ledger(faults=faults)
    for job_id in rows:
        ledger.accept(job_id, Submission(n=7, sleep_ms=1, flaky=False), "http")
    report = Report("sqlite", "", 1)
    checker = Checker(ledger, report, lease_s=LEASE_S, everysec=False)
    checker.jobs(rows, read_executions(tmp_path))
    return report


def ok(attempt: int, pid: int) -> dict[str, int]:
    return {"value": expected_value(7), "attempt": attempt, "pid": pid}


def test_a_second_run_without_a_fault_is_an_unexplained_duplicate(tmp_path: Path) -> None:
    lines = ["start j 1 10 100.0", "end j 1 10 100.1", "start j 2 11 101.0", "end j 2 11 101.1"]
    report = judge(tmp_path, lines, {"j": row("j", 2, ok(2, 11))}, [])
    assert report.duplicates_unexplained == ["j@10/1"]
    assert report.refused_results == 1 and report.problems()


def test_a_run_cut_by_a_kill_of_its_worker_is_explained(tmp_path: Path) -> None:
    lines = ["start j 1 10 100.0", "start j 2 11 108.0", "end j 2 11 108.1"]
    kill = Fault("worker_kill", 100.5, 100.6, slot=0, pid=10)
    report = judge(tmp_path, lines, {"j": row("j", 2, ok(2, 11))}, [kill])
    assert report.duplicates_unexplained == [] and report.duplicates_explained == 1
    assert report.explained_by == {"worker_kill": 1} and not report.problems()


def test_a_kill_of_another_worker_explains_nothing(tmp_path: Path) -> None:
    lines = ["start j 1 10 100.0", "start j 2 11 108.0", "end j 2 11 108.1"]
    kill = Fault("worker_kill", 100.5, 100.6, slot=1, pid=12)
    report = judge(tmp_path, lines, {"j": row("j", 2, ok(2, 11))}, [kill])
    assert report.duplicates_unexplained == ["j@10/1"]


def test_a_result_of_an_earlier_attempt_is_a_stale_settle(tmp_path: Path) -> None:
    lines = ["start j 1 10 100.0", "end j 1 10 100.1", "start j 2 11 101.0", "end j 2 11 101.1"]
    report = judge(tmp_path, lines, {"j": row("j", 2, ok(1, 10))}, [])
    assert len(report.stale) == 1 and report.problems()


def test_missing_unfinished_and_wrong_jobs_are_failures(tmp_path: Path) -> None:
    wrong = {"value": -1, "attempt": 1, "pid": 10}
    rows = {"gone": None, "held": row("held", 1, None), "bad": row("bad", 1, wrong)}
    report = judge(tmp_path, ["start bad 1 10 100.0", "end bad 1 10 100.1"], rows, [])
    assert report.lost == ["gone"] and report.stuck == ["held"] and len(report.wrong) == 1


def test_a_flaky_jobs_deliberate_first_failure_is_no_duplicate(tmp_path: Path) -> None:
    lines = ["start j 1 10 100.0", "fail j 1 10 100.1", "start j 2 10 100.3", "end j 2 10 100.4"]
    report = judge(tmp_path, lines, {"j": row("j", 2, ok(2, 10))}, [])
    assert report.duplicates_explained == 0 and not report.problems()


def test_a_run_that_ended_just_before_the_engine_went_away_is_explained(tmp_path: Path) -> None:
    # Its outcome was still on its way when the engine went down: its lease lapsed meanwhile.
    lines = ["start j 1 10 100.0", "end j 1 10 100.1", "start j 2 11 106.0", "end j 2 11 106.1"]
    crash = Fault("engine_crash", 100.3, 104.0)
    report = judge(tmp_path, lines, {"j": row("j", 2, ok(2, 11))}, [crash])
    assert report.duplicates_unexplained == [] and report.explained_by == {"engine_crash": 1}


def test_a_run_that_ended_a_lease_before_the_engine_went_away_is_not(tmp_path: Path) -> None:
    lines = ["start j 1 10 100.0", "end j 1 10 100.1", "start j 2 11 112.0", "end j 2 11 112.1"]
    crash = Fault("engine_crash", 100.1 + LEASE_S + 0.5, 110.0)
    report = judge(tmp_path, lines, {"j": row("j", 2, ok(2, 11))}, [crash])
    assert report.duplicates_unexplained == ["j@10/1"]
