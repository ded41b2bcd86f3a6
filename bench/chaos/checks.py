"""The checks after the drain: every accepted job's end, every execution explained, every
key one job, every stream final, every 5xx inside a web restart, every SIGTERM exit 0."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offload.contract import JobRow

from .contracts import expected_value
from .ledger import Fault, Ledger

#: Faults that make the jobs in flight on one worker liable to run again: it was killed, or
#: stopped for longer than its lease. (A SIGTERM is no such fault: the worker finishes or
#: gives back what it holds.)
WORKER_FAULTS = {"worker_kill", "worker_stop"}
#: Faults that may make any job in flight anywhere run again: an engine unreachable
#: (heartbeats fail; a crash may forget the last writes). A worker's clock off by more than
#: a lease explains nothing: every engine times leases by its own clock, so a duplicate
#: during a skew is a failure.
GLOBAL_FAULTS = {"engine_restart", "engine_crash"}
#: Seconds a Redis with `appendfsync everysec` may lose before a crash (one second of
#: writes, and the fsync that may lag one more).
EVERYSEC_LOSS_S = 2.0
#: Seconds after a web restart, an engine restart or a connection kill whose errors it
#: takes the blame for (the next request on a dead pooled connection, a reconnect).
AFTERMATH_S = 5.0


@dataclass(frozen=True)
class Execution:
    job_id: str
    attempt: int
    pid: int
    start: float
    end: float | None  # None: it never returned (its process was killed or cancelled it)
    outcome: str  # "end", "fail" (the deliberate first failure of a flaky job) or "cut"


def read_executions(logs: Path) -> dict[str, list[Execution]]:
    """Every execution the handlers recorded, by job id, in start order."""
    opened: dict[tuple[str, int, int], float] = {}
    done: list[Execution] = []
    for path in sorted(logs.glob("exec-*.log")):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) != 5:
                continue  # a line cut by a SIGKILL mid-write
            what, job_id, attempt, pid, at = parts
            key = (job_id, int(attempt), int(pid))
            if what == "start":
                if key in opened:
                    done.append(Execution(*key, opened.pop(key), None, "cut"))
                opened[key] = float(at)
            elif key in opened:
                done.append(Execution(*key, opened.pop(key), float(at), what))
    done += [Execution(*key, start, None, "cut") for key, start in opened.items()]
    by_job: dict[str, list[Execution]] = {}
    for e in sorted(done, key=lambda e: e.start):
        by_job.setdefault(e.job_id, []).append(e)
    return by_job


@dataclass
class Report:
    engine: str
    setting: str
    seed: int
    jobs: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    faults_skipped: int = 0
    #: Every fault injected: when (seconds into the run), what, how long, and its detail.
    fault_log: list[str] = field(default_factory=list)
    fault_errors: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    lost_by_setting: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)  # wrong state or result
    stale: list[str] = field(default_factory=list)
    duplicates_explained: int = 0
    #: The explained duplicates by the fault that explains them (a worker's own first).
    explained_by: Counter[str] = field(default_factory=Counter)
    duplicates_unexplained: list[str] = field(default_factory=list)
    refused_results: int = 0  # results of superseded executions, refused by fencing
    keys: int = 0
    keys_split: list[str] = field(default_factory=list)
    errors_in_web_restarts: int = 0
    errors_in_engine_restarts: int = 0
    errors_outside: list[str] = field(default_factory=list)
    errors_after_conn_kill: int = 0
    sigterms: int = 0
    sigterm_bad: list[str] = field(default_factory=list)
    streams: int = 0
    streams_ok: int = 0
    streams_bad: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """What failed, one line each (empty: the run passed)."""
        named = [
            ("lost", self.lost),
            ("stuck", self.stuck),
            ("wrong state or result", self.wrong),
            ("stale settles", self.stale),
            ("unexplained duplicates", self.duplicates_unexplained),
            ("keys with several jobs", self.keys_split),
            ("errors outside web and engine restarts", self.errors_outside),
            ("SIGTERMed workers that did not exit 0", self.sigterm_bad),
            ("event streams that did not reach the final state", self.streams_bad),
            ("faults that could not be injected", self.fault_errors),
        ]
        return [f"{len(items)} {name}: {', '.join(items[:5])}" for name, items in named if items]

    def as_dict(self) -> dict[str, Any]:
        out = dict(vars(self))
        out["faults"] = dict(self.faults)
        out["explained_by"] = dict(self.explained_by)
        out["problems"] = self.problems()
        return out


def _within(at: float, faults: Iterable[Fault], before: float = 0.0, after: float = 0.0) -> bool:
    return any(f.start - before <= at <= (f.end or f.start) + after for f in faults)


class Checker:
    """Judges one run from its ledger, the jobs' final rows and the execution logs."""

    def __init__(self, ledger: Ledger, report: Report, *, lease_s: float, everysec: bool):
        self.ledger = ledger
        self.report = report
        self.lease_s = lease_s
        self.everysec = everysec
        self.crashes = [f for f in ledger.faults if f.kind == "engine_crash"]

    def lost_by_setting(self, job_id: str) -> bool:
        """Accepted in the last moments before a crash of a Redis that fsyncs every second."""
        at = self.ledger.accepted[job_id].at
        return self.everysec and _within(at, self.crashes, before=EVERYSEC_LOSS_S)

    def jobs(self, rows: dict[str, JobRow | None], runs: dict[str, list[Execution]]) -> None:
        r = self.report
        r.jobs = len(self.ledger.accepted)
        for job_id, accepted in self.ledger.accepted.items():
            row = rows.get(job_id)
            if row is None:
                (r.lost_by_setting if self.lost_by_setting(job_id) else r.lost).append(job_id)
            elif not row.state.final:
                (r.lost_by_setting if self.lost_by_setting(job_id) else r.stuck).append(job_id)
            elif row.state != "succeeded" or not isinstance(row.result, dict):
                r.wrong.append(f"{job_id} ({row.state})")
            elif row.result.get("value") != expected_value(accepted.submission.n):
                r.wrong.append(f"{job_id} (result {row.result})")
            else:
                self.executions(job_id, row, runs.get(job_id, []))

    def executions(self, job_id: str, row: JobRow, runs: list[Execution]) -> None:
        """The accepted result must come from the final attempt (fencing), and every other
        execution but a flaky job's deliberate first failure must be explained by a fault."""
        r = self.report
        result = row.result
        settled = [e for e in runs if (e.pid, e.attempt) == (result["pid"], result["attempt"])]
        if result["attempt"] != row.attempt or not settled:
            r.stale.append(f"{job_id} (result of attempt {result['attempt']}, job {row.attempt})")
            return
        for e in runs:
            if e is settled[-1] or e.outcome == "fail":
                continue
            cause = self.explained(e)
            if cause is not None:
                r.duplicates_explained += 1
                r.explained_by[cause] += 1
            else:
                r.duplicates_unexplained.append(f"{job_id}@{e.pid}/{e.attempt}")
            if e.outcome == "end":
                r.refused_results += 1

    def explained(self, e: Execution) -> str | None:
        """The fault that explains an execution: a kill or a stop of its own worker, or an
        engine restart anywhere, while it ran (see `reach`)."""
        end = e.end if e.end is not None else float("inf")
        own = [f for f in self.ledger.faults if f.kind in WORKER_FAULTS and f.pid == e.pid]
        every = [f for f in self.ledger.faults if f.kind in GLOBAL_FAULTS]
        for f in own + every:
            before, after = self.reach(f.kind)
            if e.start <= (f.end or f.start) + after and end >= f.start - before:
                return f.kind
        return None

    def reach(self, kind: str) -> tuple[float, float]:
        """Seconds before a fault and after its end in which it can cost an execution.

        Before a kill or a stop: a finished run whose outcome the worker had not written yet
        (the lease lapses). After a stop: the jobs it held ahead, started as it resumes.
        Before an engine goes away: a finished run whose outcome was not written yet (on a
        loaded machine the settle of a run that ended a moment before waits out the outage
        while its lease lapses, and a rescuer may hand the job on first), and, for a Redis
        that fsyncs every second, its last writes (within a lease too). After an engine's
        return: leases left unbeaten meanwhile lapse within a lease.
        """
        lease = self.lease_s
        if kind == "worker_kill":
            return lease, 0.0
        return max(lease, EVERYSEC_LOSS_S), lease

    def keys(self, rows: dict[str, JobRow | None]) -> None:
        r = self.report
        r.keys = len(self.ledger.keys)
        for key, ids in self.ledger.keys.items():
            if len(ids) > 1 and not all(
                rows.get(i) is None and self.lost_by_setting(i) for i in sorted(ids)[:-1]
            ):
                r.keys_split.append(f"{key} ({len(ids)} jobs)")

    def errors(self) -> None:
        """Each failed request is put down to a web restart, an engine restart, or nothing
        (a failure; those soon after a connection kill are counted apart, as a hint)."""
        r = self.report
        by_kind: dict[str, list[Fault]] = {}
        for f in self.ledger.faults:
            by_kind.setdefault(f.kind, []).append(f)
        engine = by_kind.get("engine_restart", []) + by_kind.get("engine_crash", [])
        for failure in self.ledger.failures:
            if failure.what in ("4xx", "bare 5xx"):
                r.errors_outside.append(f"{failure.detail}")
            elif _within(failure.at, by_kind.get("web_kill", []), after=1.0):
                r.errors_in_web_restarts += 1
            elif _within(failure.at, engine, after=AFTERMATH_S):
                r.errors_in_engine_restarts += 1
            else:
                if _within(failure.at, by_kind.get("conn_kill", []), after=AFTERMATH_S):
                    r.errors_after_conn_kill += 1
                r.errors_outside.append(f"{failure.what} {failure.detail}")

    def sigterms(self) -> None:
        r = self.report
        r.sigterms = len(self.ledger.sigterm_exits)
        r.sigterm_bad = [
            f"{pid} ({'no exit' if code is None else code})"
            for pid, code in self.ledger.sigterm_exits
            if code != 0
        ]

    def streams(self, rows: dict[str, JobRow | None]) -> None:
        r = self.report
        r.streams = len(self.ledger.streams)
        for job_id, state in self.ledger.streams.items():
            row = rows.get(job_id)
            if row is not None and state == row.state:
                r.streams_ok += 1
            elif not (row is None and self.lost_by_setting(job_id)):
                r.streams_bad.append(f"{job_id} ({state})")
