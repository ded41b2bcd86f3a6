"""A worker frozen past its leases (SIGSTOP) and resumed starts none of the jobs it held
ahead: their leases lapsed and another worker ran them; it then goes on working."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from offload import App, Message, Settings

from .conftest import Stack

T = TypeVar("T")
#: The lease of both workers (seconds): short, so that the test outlasts it quickly.
LEASE = "2"


class Gate(Message):
    flag: str


class Step(Message):
    n: int


class Endless(Message):
    pass


class Producer:
    """Enqueues the stall app's jobs (declared as a producer does: messages, no handlers)
    and reads their states, from the test process."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.app = App("stall-producer", settings=Settings(url=stack.env["OFFLOAD_URL"]))
        self.app.message("stall.gate", queue="stall")(Gate)
        self.app.message("stall.step", queue="stall")(Step)
        self.app.message("stall.endless", queue="stall")(Endless)

    def _call(self, fn: Callable[[App], Coroutine[Any, Any, T]]) -> T:
        async def run() -> T:
            async with self.app:
                return await fn(self.app)

        return asyncio.run(run())

    def enqueue(self, messages: list[Message]) -> list[str]:
        async def send(app: App) -> list[str]:
            return [job.id for job in await app.enqueue_many(messages)]

        return self._call(send)

    def steps(self, first: int, count: int) -> list[str]:
        return self.enqueue([Step(n=n) for n in range(first, first + count)])

    def states(self, ids: list[str]) -> dict[str, str]:
        async def read(app: App) -> dict[str, str]:
            rows = [await app.get(job_id) for job_id in ids]
            return {r.id: str(r.state) for r in rows if r is not None}

        return self._call(read)

    def wait_states(self, ids: list[str], state: str, timeout: float, what: str) -> None:
        wait_for(lambda: set(self.states(ids).values()) == {state}, timeout, what, self.stack)


def wait_for(predicate: Callable[[], T], timeout: float, what: str, stack: Stack) -> T:
    """Poll `predicate` until it answers something true, and return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answer := predicate():
            return answer
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}\n{stack.output()}")


def starts(stack: Stack) -> list[tuple[str, int]]:
    """(job id, pid) of every handler start, in order."""
    return [(job, int(pid)) for job, pid in (ln.split() for ln in stack.log_lines("starts.log"))]


def _tcp_ports(pid: int, server_port: int) -> list[int]:
    """The local ports of the TCP connections process `pid` holds to `server_port` (read
    from Linux's /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = []
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if inode in inodes and int(remote.split(":")[1], 16) == server_port:
            ports.append(int(local.split(":")[1], 16))
    return ports


def cut_connections(stack: Stack, pid: int) -> None:
    """Close the server connections of worker `pid` from the server's side, as an idle
    timeout or a failover would while it is frozen. Its first requests on waking fail, so
    its heartbeat cannot learn of the lost leases before a slot frees: the test does not
    hang on that race. (SQLite has no connection to cut; its extend waits for a thread.)"""
    url = stack.env["OFFLOAD_URL"]
    if stack.backend == "redis":
        import redis

        ports = _tcp_ports(pid, urlsplit(url).port or 6379)
        client = redis.Redis.from_url(url.split("?")[0])
        try:
            for port in ports:
                client.client_kill_filter(_id=None, addr=f"127.0.0.1:{port}")
        finally:
            client.close()
    elif stack.backend == "postgres":
        import psycopg

        name = parse_qs(urlsplit(url).query)["application_name"][0]
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s AND pid <> pg_backend_pid()",
                (name,),
            )


def _worker(stack: Stack, *args: str) -> subprocess.Popen[bytes]:
    return stack.start_worker("--lease", LEASE, "--queues", "stall", *args, app="stallapp:app")


def test_resumed_worker_starts_no_held_job_whose_lease_lapsed(stack: Stack) -> None:
    producer = Producer(stack)
    frozen = _worker(stack, "--concurrency", "1")
    # Given a worker that has learnt its jobs are short (so it claims ahead of its one slot),
    warm = producer.steps(0, 3)
    producer.wait_states(warm, "succeeded", 60, "the warm-up jobs")
    # whose slot a gate job holds while more jobs wait in its hands, claimed ahead: stored
    # together, one claim takes the gate and as many jobs as its prefetch allows (all six,
    # unless the machine is slow enough that the warm-up runs looked long; enqueued once
    # the gate had run a tenth of a second, none: a slot held that long finishes little)
    gate, *held = producer.enqueue([Gate(flag="open.flag"), *(Step(n=n) for n in range(100, 106))])
    wait_for(lambda: len(starts(stack)) == 4, 30, "the gate job to start", stack)
    assert starts(stack)[3][0] == gate  # (first in line: ordered by id, the same time)

    # when it freezes past its leases, and another worker takes and finishes those jobs,
    frozen.send_signal(signal.SIGSTOP)
    try:
        (stack.logs / "open.flag").touch()
        other = _worker(stack, "--concurrency", "4")
        producer.wait_states(held, "succeeded", 60, "the other worker to run them")
        producer.wait_states([gate], "cancelled", 60, "the other worker to open the gate")
        other.send_signal(signal.SIGTERM)
        assert other.wait(timeout=30) == 0
        cut_connections(stack, frozen.pid)
        # and then it wakes up,
    finally:
        frozen.send_signal(signal.SIGCONT)

    # then it goes on working (it alone runs the next jobs), and has started none of the
    # jobs it held: each ran exactly once, on the other worker.
    after = producer.steps(200, 5)
    producer.wait_states(after, "succeeded", 60, "the resumed worker to run new jobs")
    runs = starts(stack)
    by_job = Counter(job for job, _ in runs)
    assert {job: by_job[job] for job in held} == dict.fromkeys(held, 1), stack.output()
    assert {pid for job, pid in runs if job in held} == {other.pid}
    assert {pid for job, pid in runs if job in after} == {frozen.pid}
    # It let them go: on waking, their leases lapsed; or, its one slot held by the gate
    # for longer than its runs took before, it gave them back first, for idle workers
    # (within about half a second: a freeze may come later, or earlier on a loaded machine).
    said = stack.output()
    assert "held ahead: its lease lapsed" in said or "held ahead: this worker's runs" in said
    assert frozen.poll() is None
    frozen.send_signal(signal.SIGTERM)
    assert frozen.wait(timeout=30) == 0


def test_resumed_worker_cancels_the_run_whose_lease_lapsed_while_it_was_frozen(
    stack: Stack,
) -> None:
    producer = Producer(stack)
    frozen = _worker(stack, "--concurrency", "1")
    # Given a worker running a job that only ends when told (or cancelled),
    (job,) = producer.enqueue([Endless()])
    wait_for(lambda: (job, frozen.pid) in starts(stack), 30, "the job to start", stack)
    # when it freezes past its lease, and another worker runs the job to its end,
    frozen.send_signal(signal.SIGSTOP)
    try:
        other = _worker(stack, "--concurrency", "1")
        wait_for(lambda: (job, other.pid) in starts(stack), 30, "the job to run again", stack)
        (stack.logs / f"stop-{other.pid}").touch()
        producer.wait_states([job], "succeeded", 60, "the other worker to finish it")
        other.send_signal(signal.SIGTERM)
        assert other.wait(timeout=30) == 0
        cut_connections(stack, frozen.pid)
        # and then it wakes up,
    finally:
        frozen.send_signal(signal.SIGCONT)

    # then its run of the job is cancelled as soon as it learns the lease is gone,
    wait_for(
        lambda: f"{job} {frozen.pid}" in stack.log_lines("cancelled.log"),
        30,
        "the frozen worker's run to be cancelled",
        stack,
    )
    # the other worker's outcome stands, and it goes on working.
    record = producer.states([job])
    assert record == {job: "succeeded"}
    after = producer.steps(300, 3)
    producer.wait_states(after, "succeeded", 60, "the resumed worker to run new jobs")
    assert {pid for j, pid in starts(stack) if j in after} == {frozen.pid}
    frozen.send_signal(signal.SIGTERM)
    assert frozen.wait(timeout=30) == 0
