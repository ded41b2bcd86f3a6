"""`offload worker --autoscale MIN:MAX` as real processes on each backend: a burst of
50 ms jobs grows it to MAX, the burst drains, a quiet period shrinks it back to MIN, and
every job ran exactly once and succeeded; its decisions show in its log and its metrics.

The jobs start only once the test creates a flag file: the burst waits until every process
the autoscaler added is up and busy, however slowly a loaded machine starts them, so the
drain runs on MAX processes for sure (and not on the first alone, done before they start)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from offload import App, Message, Settings
from offload.contract import JobFilter

from ..ports import free_ports
from .conftest import Stack
from .test_metrics import scrape

pytestmark = pytest.mark.slow
T = TypeVar("T")
#: Jobs of the burst (3 processes of 2 slots clear 120 of these 50 ms jobs a second).
BURST = 300
MIN, MAX = 1, 3
#: Handler slots of each process.
SLOTS = 2
DECISION = re.compile(r"scale (up|down) (\d+)→(\d+): (.+)$")


class Work(Message):
    n: int


class Producer:
    """Enqueues the scale app's jobs and reads the backend, from the test process."""

    def __init__(self, stack: Stack) -> None:
        self.app = App("scale-producer", settings=Settings(url=stack.env["OFFLOAD_URL"]))
        self.app.message("scale.work", queue="scale")(Work)

    def call(self, fn: Callable[[App], Coroutine[Any, Any, T]]) -> T:
        async def run() -> T:
            async with self.app:
                return await fn(self.app)

        return asyncio.run(run())

    def enqueue(self, count: int) -> list[str]:
        async def send(app: App) -> list[str]:
            return [job.id for job in await app.enqueue_many([Work(n=n) for n in range(count)])]

        return self.call(send)

    def workers(self) -> int:
        return len(self.pids())

    def pids(self) -> set[int]:
        """The pids of the live workers in the registry."""

        async def read(app: App) -> set[int]:
            return {w.pid for w in await app.workers() if not w.lost}

        return self.call(read)

    def running(self) -> int:
        async def read(app: App) -> int:
            return int((await app.stats())["scale"]["running"])

        return self.call(read)

    def succeeded(self) -> int:
        async def read(app: App) -> int:
            return await app.count_jobs(JobFilter(queue="scale", state="succeeded"))

        return self.call(read)


def wait_for(predicate: Callable[[], T], what: str, stack: Stack, timeout: float = 90) -> T:
    """Poll `predicate` until it answers something true, and return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answer := predicate():
            return answer
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n{stack.output()}")


def decisions(stack: Stack) -> list[tuple[str, int, int, str]]:
    """(direction, from, to, reason text) of every decision the supervisor logged."""
    found = []
    for line in stack.log_lines("proc-0.out"):
        if match := DECISION.search(line):
            found.append((match[1], int(match[2]), int(match[3]), match[4]))
    return found


def test_a_burst_grows_the_workers_to_max_and_a_quiet_period_shrinks_them_to_min(
    stack: Stack,
) -> None:
    # Given an autoscaled worker (MIN 1, MAX 3) with a short target wait and quiet period,
    # its one process up and registered
    port = free_ports(1 + MAX)
    supervisor = stack.start_worker(
        *("--autoscale", f"{MIN}:{MAX}", "--target-wait", "300ms", "--scale-down-after", "1s"),
        *("--concurrency", str(SLOTS), "--prefetch", "0", "--grace", "10"),
        *("--metrics-port", str(port)),
        app="scaleapp:app",
    )
    producer = Producer(stack)
    wait_for(lambda: producer.workers() == 1, "the first worker process", stack)

    # When a burst of 50 ms jobs arrives
    ids = producer.enqueue(BURST)

    # Then it grows to MAX: every process up and busy (the jobs hold until the flag) ...
    wait_for(lambda: producer.running() == MAX * SLOTS, "MAX processes busy", stack)
    grown = [(a, b) for direction, a, b, _ in decisions(stack) if direction == "up"]
    assert grown == [(1, 2), (2, 3)], stack.output()
    # ... and the burst drains
    (stack.logs / "go").touch()
    wait_for(lambda: producer.succeeded() == BURST, "the burst to drain", stack)
    # ... then a quiet period shrinks it back to MIN
    wait_for(lambda: decisions(stack)[-1][:3] == ("down", 2, 1), "MIN", stack)
    steps = [(a, b) for _, a, b, _ in decisions(stack)]
    assert steps == [(1, 2), (2, 3), (3, 2), (2, 1)], stack.output()
    assert all(
        re.fullmatch(r"oldest ready job [\d.]+ s > target 0\.3 s|\d+ ready jobs > .+", reason)
        for direction, _, _, reason in decisions(stack)
        if direction == "up"
    ), stack.output()

    # ... and every job ran exactly once, in MAX processes, none restarted
    runs = Counter(line.split()[0] for line in stack.log_lines("runs.log"))
    assert set(runs) == set(ids)
    assert set(runs.values()) == {1}
    pids = {line.split()[1] for line in stack.log_lines("runs.log")}
    assert len(pids) == MAX
    assert "restarting" not in stack.output()
    assert "removed worker process" not in stack.output()  # each removed one exited 0

    # ... its metrics say so
    metrics = wait_for(lambda: scrape(f"http://127.0.0.1:{port}/metrics"), "metrics", stack)
    assert metrics is not None
    assert metrics.value("offload_worker_processes") == MIN
    assert metrics.total("offload_autoscale_decisions_total", direction="up") == 2
    assert metrics.value("offload_autoscale_decisions_total", direction="down", reason="quiet") == 2

    # ... and SIGTERM stops it cleanly
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=30) == 0, stack.output()
    wait_for(lambda: producer.workers() == 0, "the workers to deregister", stack, timeout=30)


def test_a_process_that_dies_is_restarted_and_counts_toward_the_size(sqlite_stack: Stack) -> None:
    stack = sqlite_stack
    # Given an autoscaled worker at its MIN of 2 processes, both registered
    port = free_ports(1 + MAX)
    stack.start_worker(
        *("--autoscale", f"2:{MAX}", "--metrics-port", str(port)), app="scaleapp:app"
    )
    producer = Producer(stack)

    def both() -> set[int] | None:
        pids = producer.pids()
        return pids if len(pids) == 2 else None

    first = wait_for(both, "2 workers", stack)
    assert first is not None

    # When one of them is killed
    victim = min(first)
    os.kill(victim, signal.SIGKILL)

    # Then the supervisor starts another in its place, and makes no decision for it
    wait_for(lambda: producer.pids() - first, "a restarted worker", stack)
    assert f"worker process {victim} exited with -9; restarting" in stack.output()
    assert decisions(stack) == []
    metrics = wait_for(lambda: scrape(f"http://127.0.0.1:{port}/metrics"), "metrics", stack)
    assert metrics is not None
    assert metrics.value("offload_worker_processes") == 2
    assert metrics.total("offload_autoscale_decisions_total") == 0
