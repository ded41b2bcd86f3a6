"""Crashed, stopped and competing worker processes lose no job and run none twice."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from offload import App, Message, Settings
from offload.cli import SAME_STOP_S

from .conftest import Stack


def wait_for(predicate: object, timeout: float, what: str, stack: Stack) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}\n{stack.output()}")


def slow_job_started(stack: Stack) -> None:
    """Wait until an `e2e.slow` job's handler has begun (its log says so)."""
    wait_for(
        lambda: any(line.startswith("start") for line in stack.log_lines("slow.log")),
        20,
        "the job to start",
        stack,
    )


def test_sigkilled_worker_job_runs_again_after_lease_lapses(stack: Stack) -> None:
    stack.start_web()
    alice = stack.client()
    first = stack.start_worker("--lease", "1.5")
    job_id = alice.post("/v1/jobs/e2e.slow", json={"seconds": 2.5}).json()["id"]

    # Given a worker in the middle of the job,
    slow_job_started(stack)
    # when it is killed without a chance to clean up,
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert alice.get(f"/v1/jobs/{job_id}").json()["state"] == "running"
    # then another worker re-runs it once the lease lapses, and it succeeds.
    stack.start_worker("--lease", "1.5")
    record = stack.wait_state(alice, job_id, {"succeeded", "dead", "failed"}, timeout=40)
    assert record["state"] == "succeeded"
    assert record["attempt"] == 2
    starts = [line for line in stack.log_lines("slow.log") if line.startswith("start")]
    ends = [line for line in stack.log_lines("slow.log") if line.startswith("end")]
    assert len(starts) == 2 and len(ends) == 1
    assert ends[0].split()[2] == "2"  # the second attempt finished


def test_failing_job_ends_dead_and_cli_retry_brings_it_back(stack: Stack) -> None:
    stack.start_web()
    stack.start_worker()
    alice = stack.client()
    job_id = alice.post("/v1/jobs/e2e.flaky", json={"flag": "fixed.flag"}).json()["id"]

    # Given a handler that keeps failing, the job spends its budget and ends dead.
    record = stack.wait_state(alice, job_id, {"dead"}, timeout=30)
    assert record["attempt"] == 3 == record["max_attempts"]
    assert record["error"]["type"] == "RuntimeError"
    # The API shows the error, not the server's traceback; operators read it from the CLI.
    assert set(record["error"]) == {"type", "message"}
    shown = stack.run_cli("jobs", "show", job_id)
    assert shown.returncode == 0, shown.stderr
    assert "Traceback (most recent call last)" in shown.stdout and "flag fixed.flag" in shown.stdout
    listed = stack.run_cli("jobs", "list", "--state", "dead", "--json")
    assert listed.returncode == 0 and job_id in listed.stdout

    # When the cause is fixed and an operator re-queues it, it runs again and succeeds.
    (stack.logs / "fixed.flag").touch()
    retried = stack.run_cli("jobs", "retry", job_id)
    assert retried.returncode == 0, retried.stderr
    record = stack.wait_state(alice, job_id, {"succeeded"}, timeout=30)
    assert record["attempt"] == 1 and record["result"] == "fixed"

    # Re-queueing a job that is not dead is refused with a clear message.
    again = stack.run_cli("jobs", "retry", job_id)
    assert again.returncode == 1 and "succeeded" in again.stdout + again.stderr


def test_sigterm_lets_the_running_job_finish_and_exits_zero(stack: Stack) -> None:
    stack.start_web()
    alice = stack.client()
    worker = stack.start_worker("--grace", "20")
    job_id = alice.post("/v1/jobs/e2e.slow", json={"seconds": 1.5}).json()["id"]
    wait_for(lambda: stack.log_lines("slow.log"), 20, "the job to start", stack)

    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    record = alice.get(f"/v1/jobs/{job_id}").json()
    assert record["state"] == "succeeded" and record["attempt"] == 1


def test_sigterm_past_the_grace_period_releases_not_fails(stack: Stack) -> None:
    stack.start_web()
    alice = stack.client()
    worker = stack.start_worker("--grace", "0.3")
    job_id = alice.post("/v1/jobs/e2e.slow", json={"seconds": 30}).json()["id"]
    wait_for(lambda: stack.log_lines("slow.log"), 20, "the job to start", stack)

    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    record = alice.get(f"/v1/jobs/{job_id}").json()
    # Released: waiting again, the interrupted attempt given back, no failure recorded.
    assert record["state"] == "queued"
    assert record["attempt"] == 0
    assert record["error"]["type"] == "Released"


def test_four_worker_processes_drain_2000_jobs_exactly_once(stack: Stack) -> None:
    # Given 2,000 jobs already queued in the file (by a producer that shares only the contract),
    app = App("loader", settings=Settings(url=stack.env["OFFLOAD_URL"]))

    @app.message("e2e.noop", queue="bulk")
    class Noop(Message):
        n: int

    async def load() -> None:
        async with app:
            for start in range(0, 2000, 500):
                await app.enqueue_many([Noop(n=i) for i in range(start, start + 500)])

    asyncio.run(load())
    # when 4 worker processes compete for them,
    supervisor = stack.start_worker("--processes", "4", "--concurrency", "16", "--queues", "bulk")
    wait_for(lambda: len(stack.log_lines("noop.log")) >= 2000, 120, "2,000 runs", stack)

    def importers() -> list[str]:  # the processes that imported the handlers: each worker
        return [line for line in stack.log_lines("imports.log") if "worker" in line]

    # (three can drain the 2,000 while a loaded machine still starts the fourth, which a
    # stop then ends before its import: wait for it, as the assertion below counts four)
    wait_for(lambda: len(importers()) >= 4, 60, "the four processes to start", stack)
    time.sleep(0.5)  # a duplicate run would show up here
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=30) == 0, stack.output()

    # then every job ran exactly once, by several processes, and is succeeded.
    runs = Counter(stack.log_lines("noop.log"))
    assert len(runs) == 2000 and set(runs.values()) == {1}
    assert len(importers()) == 4
    # The first process said once what all four serve; the supervisor imported nothing.
    said = [line.strip() for line in stack.output().splitlines() if "concurrency" in line]
    assert said == ["concurrency  16 in each of 4 processes, prefetch 256"]

    async def states() -> dict[str, int]:
        async with app:
            stats = await app.stats()
            rows = await app.list_jobs(owner="local", state="succeeded", limit=5000)
            bulk = stats.get("bulk", {"queued": 0, "running": 0})
            return {"succeeded": len(rows), "queued": bulk["queued"], "running": bulk["running"]}

    assert asyncio.run(states()) == {"succeeded": 2000, "queued": 0, "running": 0}


def test_a_worker_whose_plain_handler_runs_on_past_its_attempt_still_exits(stack: Stack) -> None:
    stack.start_web()
    alice = stack.client()

    def stuck_job_dies() -> None:
        job_id = alice.post("/v1/jobs/e2e.stuck", json={}).json()["id"]
        record = stack.wait_state(alice, job_id, {"dead"}, timeout=30)
        assert record["error"]["type"] == "TimeoutError"

    # Given a worker whose plain handler's thread runs on after its attempt timed out (its
    # job held running for the grace, 2 s here, then dead),
    worker = stack.start_worker("--concurrency", "1", "--queues", "stuck", "--grace", "2")
    stuck_job_dies()
    # when it is asked to stop, it exits 0 without waiting for that thread (it waited
    # for it forever once it said "worker stopped").
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, stack.output()
    assert str(worker.pid) in stack.log_lines("exits.log")  # its exit functions ran
    # A worker with more such threads than slots, still running a grace period (1 s here)
    # after their attempts, stops by itself, exit 1, for its supervisor to start it again
    # with fresh threads.
    worker = stack.start_worker("--concurrency", "1", "--queues", "stuck", "--grace", "1")
    stuck_job_dies()
    stuck_job_dies()
    assert worker.wait(timeout=30) == 1, stack.output()
    assert "handler threads run on 1s past their attempts" in stack.output()


def test_a_second_signal_ends_the_grace_period(stack: Stack) -> None:
    stack.start_web()
    alice = stack.client()
    worker = stack.start_worker("--grace", "600", "--queues", "slow")
    job_id = alice.post("/v1/jobs/e2e.slow", json={"seconds": 60}).json()["id"]
    slow_job_started(stack)
    # Given a worker asked to stop while its job has a minute to go (its grace ten minutes),
    worker.send_signal(signal.SIGINT)
    wait_for(lambda: "waiting up to" in stack.output(), 20, "the grace period", stack)
    # when it is asked again (Ctrl+C twice: a second on from the first, which it took, so
    # that it is no copy of the first come twice), it releases the job at once and exits 0.
    time.sleep(SAME_STOP_S)
    worker.send_signal(signal.SIGINT)
    assert worker.wait(timeout=30) == 0, stack.output()
    record = alice.get(f"/v1/jobs/{job_id}").json()
    assert (record["state"], record["attempt"]) == ("queued", 0)


def _alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, ended but not reaped yet, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_worker_processes_end_when_their_supervisor_is_killed_outright(stack: Stack) -> None:
    # Given a supervisor of two worker processes (each writes its pid as it imports),
    supervisor = stack.start_worker("--processes", "2", "--queues", "bulk")

    def children() -> list[int]:
        return [int(line.split()[0]) for line in stack.log_lines("imports.log")]

    def registered() -> set[int]:
        listed = stack.run_cli("workers", "--json")
        return (
            {w["pid"] for w in json.loads(listed.stdout or "[]")}
            if listed.returncode == 0
            else set()
        )

    def running() -> set[int]:  # (one that died at its start was restarted: a new pid)
        return {pid for pid in children() if _alive(pid)}

    # both up and registered (a process still importing has no signal handler yet: the
    # kernel's SIGTERM would end it without a word),
    wait_for(lambda: len(running()) >= 2, 60, "the two processes to start", stack)
    wait_for(lambda: running() <= registered(), 60, "the two processes to register", stack)
    # when it is killed without a chance to stop them (SIGKILL, out of memory),
    supervisor.kill()
    supervisor.wait()
    # then they stop too (they ran on unsupervised), asked by the kernel.
    wait_for(lambda: not any(_alive(pid) for pid in children()), 30, "them to end", stack)
    assert "stopping" in stack.output() or "stopped" in stack.output()


@pytest.mark.parametrize(
    ("to", "signum"), [("group", signal.SIGINT), ("supervisor", signal.SIGHUP)]
)
def test_ctrl_c_to_the_process_group_of_a_supervisor_stops_it_gracefully(
    stack: Stack, to: str, signum: signal.Signals
) -> None:
    stack.start_web()
    alice = stack.client()
    # Given a supervisor of two worker processes started from a terminal (its own process
    # group here, so that the signal below reaches it and its children alone),
    with open(stack.logs / "group.out", "wb") as out:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "offload", "worker", "--app", "e2eapp.handlers:app",
             "--processes", "2", "--grace", "60", "--queues", "slow"],
            cwd=stack.root, env=stack.env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            # both processes started (a process signalled while it starts has no handler
            # yet: the signal ends it, as tests/unit/test_supervisor_stop.py shows; here the
            # stop finds both running),
            def both_started() -> bool:
                said = (stack.logs / "group.out").read_text()
                return all(re.search(rf"worker {n} \(pid \d+\) started", said) for n in (1, 2))

            wait_for(both_started, 60, "the two processes to start", stack)
            job_id = alice.post("/v1/jobs/e2e.slow", json={"seconds": 3}).json()["id"]
            slow_job_started(stack)
            # when Ctrl+C reaches the group (each child gets it from the terminal, and again
            # from the supervisor, which forwards it), or the terminal closes (SIGHUP),
            if to == "group":
                os.killpg(supervisor.pid, signum)
            else:
                supervisor.send_signal(signum)
            assert supervisor.wait(timeout=60) == 0, stack.output()
        finally:
            if supervisor.poll() is None:
                os.killpg(supervisor.pid, signal.SIGKILL)
                supervisor.wait()
    # then that is one request to stop: the job finished within the grace period (it was
    # taken as Ctrl+C twice, and released at once).
    record = alice.get(f"/v1/jobs/{job_id}").json()
    assert (record["state"], record["attempt"]) == ("succeeded", 1), stack.output()
