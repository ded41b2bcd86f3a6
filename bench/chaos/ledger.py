"""What the driver saw: every accepted job, every idempotency key's answers, every error,
every fault, each with its time (wall-clock seconds, as the handlers' execution logs)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Submission:
    """One logical job the driver asked for: its input, and how it was sent."""

    n: int
    sleep_ms: int
    flaky: bool
    key: str | None = None

    def body(self) -> dict[str, object]:
        return {"n": self.n, "sleep_ms": self.sleep_ms, "flaky": self.flaky}


@dataclass(frozen=True)
class Accepted:
    job_id: str
    submission: Submission
    via: str  # "http" or "enqueue_many"
    at: float


@dataclass(frozen=True)
class Failure:
    """A submission or read that did not answer: an HTTP 5xx, a transport error, or an
    exception of `enqueue_many`."""

    what: str  # "5xx", "transport", "enqueue"
    detail: str
    at: float


@dataclass
class Fault:
    kind: str
    start: float
    end: float = 0.0
    slot: int | None = None
    pid: int | None = None
    detail: str = ""


@dataclass
class Ledger:
    accepted: dict[str, Accepted] = field(default_factory=dict)
    #: Every job id an idempotency key was answered with (one expected).
    keys: dict[str, set[str]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    #: (pid, exit code or None when it did not exit in time) of every SIGTERMed worker.
    sigterm_exits: list[tuple[int, int | None]] = field(default_factory=list)
    #: Job ids whose event stream reached the job's final state (and the state it showed).
    streams: dict[str, str | None] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accept(self, job_id: str, submission: Submission, via: str) -> None:
        with self.lock:
            if job_id not in self.accepted:
                self.accepted[job_id] = Accepted(job_id, submission, via, time.time())
            if submission.key is not None:
                self.keys.setdefault(submission.key, set()).add(job_id)

    def fail(self, what: str, detail: str) -> None:
        with self.lock:
            self.failures.append(Failure(what, detail, time.time()))

    def fault(self, kind: str, **kw: object) -> Fault:
        fault = Fault(kind, time.time(), **kw)  # type: ignore[arg-type]
        with self.lock:
            self.faults.append(fault)
        return fault
