"""The product across a restart of its engine: a real `offload web` and two real workers on
a private PostgreSQL or Redis (appendfsync always), jobs posted through HTTP without pause,
and the engine restarted under them, cleanly (fast) or by a crash (`-m immediate`, SIGKILL).

Every accepted job ends succeeded and runs once (the restart is far shorter than the lease,
so no worker loses a job it holds), the listeners reconnect, the event streams carry on, and
no process exits or logs an error that escaped. The web answers 503 problem documents while
calls are not yet retried across a dropped connection: `test_no_5xx_across_engine_restart`
holds the product to zero once they are.

An outage (the engine crashed and kept away past the lease) is survived the same way, but
there a job may run twice: one held by a worker that could not extend its lease meanwhile.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from bench.chaos.engines import PrivatePostgres, PrivateRedis

from ..e2e.conftest import Stack
from .engine_support import HOW, RESTARTABLE, private_engine
from .restart_flow import (
    LEASE_S,
    EventReader,
    Posted,
    Producer,
    migrated,
    project,
    runs_per_job,
    unhandled,
    wait_all_final,
    wait_none_unfinished,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

#: Jobs accepted before the restart, and again after it, before the producer stops.
LOAD = 60
#: What each process logs once its wake-up listener is back (PostgreSQL, Redis).
#: What a process logs when its PostgreSQL listener is back.
PG_LISTENER_BACK = "LISTEN connection back"
#: What a process on Redis logs when a wake-up connection was cut, and when it is back:
#: its pub/sub listener, or a worker's blocked wait on its wake-up tokens.
REDIS_WAKE_UPS = (
    ("Redis wake-up connection lost", "Redis wake-ups resubscribed"),
    ("Redis wake-up wait lost", "Redis wake-up wait back"),
)


@dataclass
class Restarted:
    """What one run saw: the answers, the jobs' ends and runs, the streams, the logs."""

    kind: str
    crash: bool
    down_s: float
    lease_s: float
    in_flight: set[str]  # posted before the engine went away: held, or about to be
    went_away: float  # by when the engine was surely gone (monotonic seconds)
    posted: Posted
    states: dict[str, str]
    runs: Counter[str]
    slow_runs: int
    feed: EventReader
    job_feed: EventReader
    slow_id: str
    probe_s: float
    unfinished: int
    exited: list[int | None]
    unhandled: list[str]
    output: str
    process_logs: list[str]


def wait_for(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def probe_job_seconds(stack: Stack, client: httpx.Client) -> float:
    """Seconds from posting a job to seeing it succeeded (idle workers: their wake-up)."""
    began = time.monotonic()
    job_id = client.post("/v1/jobs/e2e.noop", json={"n": 0}).json()["id"]
    stack.wait_state(client, job_id, {"succeeded"}, timeout=30)
    return time.monotonic() - began


def run_across_restart(
    kind: str, crash: bool, root: Path, *, lease_s: float = LEASE_S, outage_s: float = 0.0
) -> Restarted:
    """Jobs through web and workers while the engine restarts; with `outage_s`, it stays
    down that long between its stop and its start."""
    with private_engine(kind, root / "engine") as engine:
        stack = project(root / "project", migrated(engine), kind)
        try:
            return _flow(stack, engine, kind, crash, lease_s=lease_s, outage_s=outage_s)
        finally:
            stack.stop()


def restart(
    engine: PrivatePostgres | PrivateRedis, crash: bool, outage_s: float
) -> tuple[float, float]:
    """Restart the engine (down for `outage_s` at least): the seconds it was away, and
    when (monotonic) it was surely gone (its stop had returned; for a plain restart, when
    it was back)."""
    if not outage_s:
        down_s = engine.restart(crash=crash)
        return down_s, time.monotonic()
    began = time.monotonic()
    engine.stop(crash=crash)
    gone = time.monotonic()
    time.sleep(outage_s)  # the fault itself: how long the engine stays away
    engine.start()
    return time.monotonic() - began, gone


def _flow(
    stack: Stack,
    engine: PrivatePostgres | PrivateRedis,
    kind: str,
    crash: bool,
    *,
    lease_s: float,
    outage_s: float,
) -> Restarted:
    stack.start_web()
    logs = []
    for _ in range(2):
        logs.append(stack.logs / f"proc-{len(stack.procs)}.out")
        stack.start_worker("--lease", str(lease_s), "--concurrency", "8")
    # (the restart is under running workers: one still starting up would see its engine
    # refuse it, which is a start that fails, not the fault this test injects)
    wait_for(lambda: all(" started" in log.read_text() for log in logs), 60, "workers to start")
    alice = stack.client()
    feed = EventReader(stack, "/v1/events")
    feed.start()
    wait_for(feed.opened.is_set, 30, "/v1/events to open")
    # Given a job in the middle of its run, followed on its own stream,
    slow_id = alice.post("/v1/jobs/e2e.slow", json={"seconds": 2.0}).json()["id"]
    job_feed = EventReader(stack, f"/v1/jobs/{slow_id}/events", until_final=True)
    job_feed.start()
    wait_for(lambda: stack.log_lines("slow.log"), 30, "the slow job to start")
    # and jobs posted without pause by two clients,
    producers = [Producer(stack) for _ in range(2)]
    for producer in producers:
        producer.start()

    def accepted() -> int:
        return sum(len(p.posted.accepted) for p in producers)

    wait_for(lambda: accepted() >= LOAD, 60, "jobs to be accepted")
    # when the engine restarts under them,
    down_s, went_away = restart(engine, crash, outage_s)
    before = accepted()
    wait_for(lambda: accepted() >= before + LOAD, 60, "jobs accepted again")
    posted = Posted()
    for producer in producers:
        posted.add(producer.stop())
    # Only a job posted before the engine was gone can have been stored, and held by a
    # worker, before it went. Not only those accepted before it came back: a post in flight
    # as it went may have stored its job (and a worker claimed it at once), its 202 sent
    # once the engine was back.
    in_flight = {job for job, sent in posted.sent_at.items() if sent < went_away} | {slow_id}
    # then (the test asserts) every accepted job ends, the streams carry on, and so on.
    states = wait_all_final(stack, [slow_id, *posted.accepted], timeout=120)
    wait_for(lambda: not feed.saw_final(posted.accepted), 60, "/v1/events to show every end")
    feed.stopping.set()
    job_feed.join(30)
    unfinished = wait_none_unfinished(engine.url, timeout=60)
    probe_s = statistics.median(probe_job_seconds(stack, alice) for _ in range(5))
    starts = [line for line in stack.log_lines("slow.log") if line.startswith("start")]
    return Restarted(
        kind=kind,
        crash=crash,
        down_s=down_s,
        lease_s=lease_s,
        in_flight=in_flight,
        went_away=went_away,
        posted=posted,
        states=states,
        runs=runs_per_job(stack),
        slow_runs=len(starts),
        feed=feed,
        job_feed=job_feed,
        slow_id=slow_id,
        probe_s=probe_s,
        unfinished=unfinished,
        exited=[proc.poll() for proc in stack.procs],
        unhandled=unhandled(stack),
        output=stack.output(),
        process_logs=[path.read_text() for path in sorted(stack.logs.glob("proc-*.out"))],
    )


def summary(run: Restarted) -> str:
    how = "crash" if run.crash else "fast"
    twice = sorted(n for n in run.runs.values() if n > 1)
    return (
        f"\n{run.kind} {how} (down {run.down_s:.2f}s, lease {run.lease_s:g}s): "
        f"{len(run.posted.accepted)} accepted, answers {dict(run.posted.answers)}, "
        f"no answer {run.posted.unreachable}, jobs run twice {len(twice)}, "
        f"/v1/events ends {run.feed.ends}, job stream ends {run.job_feed.ends}, "
        f"probe job {run.probe_s:.2f}s"
    )


@pytest.fixture(
    scope="module",
    params=[pytest.param((k, c.values[0]), id=f"{k}-{c.id}") for k in RESTARTABLE for c in HOW],
)
def restarted(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Restarted]:
    """One run per engine and restart kind, shared by the tests of this module."""
    kind, crash = request.param
    run = run_across_restart(kind, crash, tmp_path_factory.mktemp(f"{kind}-{crash}"))
    print(summary(run))
    yield run


#: The lease of the outage runs, and how long their engine stays away: past the lease, so
#: jobs held by a worker that cannot reach the engine lapse and run again elsewhere.
OUTAGE_LEASE_S = 2.0
OUTAGE_S = 5.0


@pytest.fixture(scope="module", params=RESTARTABLE)
def outage(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Restarted]:
    """One run per engine with the engine crashed and kept away past the lease."""
    kind = request.param
    root = tmp_path_factory.mktemp(f"{kind}-outage")
    run = run_across_restart(kind, True, root, lease_s=OUTAGE_LEASE_S, outage_s=OUTAGE_S)
    print(summary(run))
    yield run


# -- checks, for a restart and for an outage -------------------------------------------------


def every_accepted_job_succeeded(run: Restarted) -> None:
    accepted = [run.slow_id, *run.posted.accepted]
    not_done = {j: run.states.get(j) for j in accepted}
    not_done = {j: s for j, s in not_done.items() if s != "succeeded"}
    assert not_done == {}, run.output[-4000:]
    # Nor is any other job left unfinished (one made by a post whose answer was lost).
    assert run.unfinished == 0


def duplicates_are_explained(run: Restarted) -> None:
    """A job runs twice only when the worker holding it could not reach the engine for
    longer than its lease: then the lease lapsed and another worker ran the job again
    (the first one's late result is refused). A restart shorter than the lease lets no
    lease lapse: no duplicate at all. A crash loses no claim either (committed on
    PostgreSQL, written before the answer with Redis `always`); a claim whose answer was
    lost leaves a job that runs once, after its lease lapses."""
    twice = {job for job, n in run.runs.items() if n > 1}
    if run.slow_runs > 1:
        twice.add(run.slow_id)
    if run.down_s < run.lease_s:
        assert twice == set(), {job: run.runs[job] for job in twice}
    else:
        unexplained = {
            job: round(run.posted.sent_at.get(job, float("nan")) - run.went_away, 3)
            for job in twice - run.in_flight
        }
        assert not unexplained, (
            f"ran twice, posted this long after the engine was gone (s): {unexplained}"
        )
    never_ran = [j for j in run.posted.accepted if run.runs[j] < 1]
    assert never_ran == []


def listeners_came_back(run: Restarted) -> None:
    # Each process's wake-ups came back (it logs so), and jobs posted once the flow settled
    # ran at once (median), not after a poll interval. On PostgreSQL every process
    # listens. On Redis the web process's stream listener is subscribed throughout, and a
    # worker waits on its wake-up tokens only while idle: whatever was cut logs its return
    # (a worker that was busy as the engine went had no wait to lose).
    if run.kind.startswith("postgres"):
        silent = [log for log in run.process_logs if PG_LISTENER_BACK not in log]
    else:
        silent = [
            log
            for log in run.process_logs
            if any(lost in log and back not in log for lost, back in REDIS_WAKE_UPS)
            or (not log.startswith("offload worker") and REDIS_WAKE_UPS[0][1] not in log)
        ]
    assert silent == [], "\n---\n".join(log[-3000:] for log in silent)
    assert run.probe_s < 0.5


def streams_carried_on(run: Restarted) -> None:
    # /v1/events showed every accepted job succeed (resuming with Last-Event-ID had it
    # ended), and every end of it was a clean one; the slow job's own stream reached its
    # final state.
    assert run.feed.saw_final(run.posted.accepted) == []
    assert set(run.feed.ends) <= {"clean"}
    assert run.job_feed.finished.is_set()
    assert run.job_feed.states[run.slow_id][-1] == "succeeded"
    assert set(run.job_feed.ends) <= {"clean"}


def processes_stayed_up(run: Restarted) -> None:
    assert run.exited == [None, None, None]
    assert run.posted.unreachable == 0
    assert run.unhandled == []
    assert all(t == "application/problem+json" for t in run.posted.problems)


# -- a restart -------------------------------------------------------------------------------


def test_every_accepted_job_succeeds_and_none_is_stuck(restarted: Restarted) -> None:
    every_accepted_job_succeeded(restarted)


def test_no_job_runs_twice(restarted: Restarted) -> None:
    assert restarted.down_s < restarted.lease_s
    duplicates_are_explained(restarted)


def test_workers_take_new_work_at_once_after_the_restart(restarted: Restarted) -> None:
    listeners_came_back(restarted)


def test_event_streams_resume_or_end_cleanly(restarted: Restarted) -> None:
    streams_carried_on(restarted)


def test_processes_stay_up_and_answer_problem_documents(restarted: Restarted) -> None:
    processes_stayed_up(restarted)


def test_no_5xx_across_engine_restart(restarted: Restarted) -> None:
    """Calls that meet a dropped connection are retried within a bounded deadline, so a
    restart of the engine costs latency, not errors."""
    assert restarted.posted.server_errors == 0, dict(restarted.posted.answers)


# -- an outage past the lease ----------------------------------------------------------------


def test_after_an_outage_every_accepted_job_succeeds(outage: Restarted) -> None:
    assert outage.down_s >= OUTAGE_S
    every_accepted_job_succeeded(outage)


def test_after_an_outage_only_jobs_held_through_it_ran_twice(outage: Restarted) -> None:
    duplicates_are_explained(outage)


def test_after_an_outage_listeners_streams_and_processes_carry_on(outage: Restarted) -> None:
    listeners_came_back(outage)
    streams_carried_on(outage)
    processes_stayed_up(outage)
