"""Jobs flowing through a real `offload web` and real workers while their engine restarts:
a producer posting jobs, readers of the event streams, and what each of them saw."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from bench.chaos.engines import PrivatePostgres, PrivateRedis

from offload.brokers import open_backend

from ..e2e.conftest import TEMPLATE, TOKENS, Stack
from .engine_support import migrate

#: Lease of the workers (seconds): far longer than a restart keeps an engine away (a crash
#: recovery on a loaded machine took 5.6 s once), so no job runs twice unless its worker
#: lost it for longer than that.
LEASE_S = 15.0
#: What a process must never log (an error that escaped, a task whose failure nobody saw).
UNHANDLED = ("Traceback", "Task exception was never retrieved", "Exception in ASGI application")


@dataclass
class Posted:
    """What the producer got back: the accepted jobs and every other answer."""

    accepted: list[str] = field(default_factory=list)
    #: When each accepted job's post was sent (monotonic seconds), by id.
    sent_at: dict[str, float] = field(default_factory=dict)
    answers: Counter[int] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)  # content types of the 5xx answers
    unreachable: int = 0  # no HTTP answer at all (the web process itself gone)

    def add(self, other: Posted) -> None:
        self.accepted += other.accepted
        self.sent_at |= other.sent_at
        self.answers += other.answers
        self.problems += other.problems
        self.unreachable += other.unreachable

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.answers.items() if status >= 500)


class Producer(threading.Thread):
    """Posts `e2e.noop` jobs one after another until stopped."""

    def __init__(self, stack: Stack) -> None:
        super().__init__(daemon=True)
        self.client = stack.client()
        self.posted = Posted()
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            n += 1
            sent_at = time.monotonic()
            try:
                answer = self.client.post("/v1/jobs/e2e.noop", json={"n": n}, timeout=30)
            except httpx.TransportError:
                self.posted.unreachable += 1
                time.sleep(0.05)
                continue
            self.posted.answers[answer.status_code] += 1
            if answer.status_code == 202:
                job_id = answer.json()["id"]
                self.posted.sent_at[job_id] = sent_at
                self.posted.accepted.append(job_id)
            elif answer.status_code >= 500:
                self.posted.problems.append(answer.headers.get("content-type", ""))
                time.sleep(0.02)

    def stop(self) -> Posted:
        self.stopping.set()
        self.join(60)
        return self.posted


class EventReader(threading.Thread):
    """Reads an event stream (`/v1/events`, or one job's), resuming with Last-Event-ID
    whenever it ends; records each job's states and how the stream ended each time."""

    def __init__(self, stack: Stack, path: str, *, until_final: bool = False) -> None:
        super().__init__(daemon=True)
        self.base = stack.base
        self.path = path
        self.until_final = until_final
        self.states: dict[str, list[str]] = {}
        self.last_id: str | None = None
        self.opened = threading.Event()
        self.ends: list[str] = []  # "clean" (the server ended it) or the error's name
        self.stopping = threading.Event()
        self.finished = threading.Event()

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {TOKENS['alice']}"}
        with httpx.Client(base_url=self.base, headers=headers, timeout=30) as client:
            while not self.stopping.is_set():
                resume = {"Last-Event-ID": self.last_id} if self.last_id else {}
                try:
                    with client.stream("GET", self.path, headers=resume) as answer:
                        if answer.status_code != 200:
                            self.ends.append(f"http {answer.status_code}")
                            time.sleep(0.2)
                            continue
                        self._read(answer.iter_lines())
                    self.ends.append("clean")
                except httpx.HTTPError as exc:
                    self.ends.append(type(exc).__name__)
                if self.finished.is_set():
                    return
                time.sleep(0.1)

    def _read(self, lines: Iterator[str]) -> None:
        event = ""
        for line in lines:
            if line.startswith("id: "):
                self.last_id = line[4:]
                self.opened.set()
            elif line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event:
                job_id = httpx.Response(200, content=line[6:]).json()["id"]
                self.states.setdefault(job_id, []).append(event)
                if self.until_final and event in ("succeeded", "dead", "failed", "cancelled"):
                    self.finished.set()
                    return
            if self.stopping.is_set():
                return

    def saw_final(self, job_ids: list[str]) -> list[str]:
        """The jobs of `job_ids` this reader has not seen succeed (yet)."""
        return [j for j in job_ids if "succeeded" not in self.states.get(j, [])]


def project(root: Path, url: str, kind: str) -> Stack:
    """The e2e project under `root`, its processes on the engine at `url`."""
    shutil.copytree(TEMPLATE, root)
    stack = Stack(root, url)
    stack.backend = kind
    return stack


def migrated(engine: PrivatePostgres | PrivateRedis) -> str:
    asyncio.run(migrate(engine.url))
    return engine.url


def wait_all_final(stack: Stack, job_ids: list[str], timeout: float) -> dict[str, str]:
    """Each job's state once all are final (or at the deadline, as they are then)."""
    client = stack.client()
    states: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    pending = list(job_ids)
    while pending and time.monotonic() < deadline:
        still: list[str] = []
        for job_id in pending:
            with contextlib.suppress(httpx.TransportError, ValueError, KeyError):
                answer = client.get(f"/v1/jobs/{job_id}")
                if answer.status_code == 200:
                    states[job_id] = answer.json()["state"]
            if states.get(job_id) not in ("succeeded", "dead", "failed", "cancelled"):
                still.append(job_id)
        pending = still
        if pending:
            time.sleep(0.2)
    return states


async def _unfinished(url: str) -> int:
    backend = open_backend(url)
    await backend.open()
    try:
        stats = await backend.stats()
    finally:
        await backend.close()
    return sum(q["queued"] + q["scheduled"] + q["running"] for q in stats.values())


def wait_none_unfinished(url: str, timeout: float) -> int:
    """Jobs still queued, scheduled or running in the engine once none is (or at the
    deadline): accepted or not (a post whose answer was lost may have made one)."""
    deadline = time.monotonic() + timeout
    while (left := asyncio.run(_unfinished(url))) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def runs_per_job(stack: Stack) -> Counter[str]:
    """How many times each job's handler ran (the e2e handlers log each run)."""
    return Counter(stack.log_lines("noop.log"))


def unhandled(stack: Stack) -> list[str]:
    return [line for line in stack.output().splitlines() if any(u in line for u in UNHANDLED)]
