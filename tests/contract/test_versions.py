"""Versions contract: the kinds in the worker registry (live_versions), the count of jobs
that wait for a newer worker, and real workers across a deploy, on every backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from offload import App, Context, JobState, Message, Settings
from offload.brokers import Backend
from offload.brokers.base import FORGET_WORKER_AFTER_S, NEWER_VERSION
from offload.contract import Outcome
from offload.versions import WORKER_LIVE_S
from offload.worker.runner import NEWER_VERSION_DELAY_S, Worker

from ._support import (
    PATIENCE_S,
    ShiftClock,
    claim,
    done,
    envelope,
    running,
    status,
    until,
    worker_info,
)

pytestmark = pytest.mark.anyio

KIND = "greet"
QUEUE = "greetings"


# -- the backend's part ---------------------------------------------------------------------


async def test_live_versions_are_those_of_workers_recorded_within_the_window(
    backend: Backend, clock: ShiftClock
) -> None:
    # Given two workers that recorded what they run
    assert await backend.live_versions(within_s=30) == {}
    await backend.record_worker(worker_info("w1", {"a": [1, 2]}))
    await backend.record_worker(worker_info("w2", {"a": [3], "b": [1]}))
    # Then the live versions are the union of theirs, per kind
    assert await backend.live_versions(within_s=30) == {"a": {1, 2, 3}, "b": {1}}
    # When one records again, its entry is replaced, not merged
    await backend.record_worker(worker_info("w1", {"a": [2]}))
    assert await backend.live_versions(within_s=30) == {"a": {2, 3}, "b": {1}}
    # When time passes and only w2 records again, w1 is no longer live
    clock.advance(20)
    await backend.record_worker(worker_info("w2", {"b": [1, 2]}))
    assert await backend.live_versions(within_s=10) == {"b": {1, 2}}
    assert await backend.live_versions(within_s=30) == {"a": {2}, "b": {1, 2}}


async def test_a_forgotten_entry_goes_and_dead_workers_are_forgotten(
    backend: Backend, clock: ShiftClock
) -> None:
    forever = 100 * FORGET_WORKER_AFTER_S
    await backend.record_worker(worker_info("stopping", {"a": [1]}))
    await backend.record_worker(worker_info("dead", {"b": [1]}))
    # When a worker stops cleanly, its entry goes
    await backend.forget_worker("stopping")
    await backend.forget_worker("stopping")  # idempotent
    assert await backend.live_versions(within_s=forever) == {"b": {1}}
    # When a worker has not recorded for longer than the forget horizon, the next record of
    # any worker deletes its entry
    clock.advance(FORGET_WORKER_AFTER_S + 1)
    assert await backend.live_versions(within_s=forever) == {"b": {1}}
    await backend.record_worker(worker_info("new", {"c": [2]}))
    assert await backend.live_versions(within_s=forever) == {"c": {2}}


async def test_stats_count_the_jobs_given_back_for_a_newer_worker(
    backend: Backend, clock: ShiftClock
) -> None:
    # Given two jobs a worker gave back (unspent, 30 s later) because they are too new for
    # it, and a third that failed an attempt for another reason
    newer = {"type": NEWER_VERSION, "message": "version 2 waits for a worker that runs it"}
    envs = [envelope(QUEUE) for _ in range(3)]
    await backend.enqueue(envs)
    leases = await claim(backend, QUEUE, limit=3)
    assert [le.job_id for le in leases] == [e.id for e in envs]
    later = clock.now() + 30
    given_back = [
        Outcome(lease=le, state=JobState.QUEUED, refund=True, run_at=later, error=newer)
        for le in leases[:2]
    ]
    other = {"type": "RuntimeError", "message": "boom"}
    retried = Outcome(lease=leases[2], state=JobState.RETRYING, run_at=later, error=other)
    assert await backend.settle([*given_back, retried]) == [True, True, True]
    # Then they wait unspent, and the queue's stats count the two
    record = await status(backend, envs[0].id)
    assert record["state"] == "queued" and record["attempt"] == 0
    assert record["error"]["type"] == NEWER_VERSION
    s = (await backend.stats())[QUEUE]
    assert (s["queued"], s["scheduled"], s["awaiting_newer_worker"]) == (0, 3, 2)
    assert (await backend.stats())[QUEUE]["awaiting_newer_worker"] == 2  # reading changes none
    # When their delay passes, they are ready and still counted
    clock.advance(31)
    s = (await backend.stats())[QUEUE]
    assert (s["queued"], s["awaiting_newer_worker"]) == (3, 2)
    # When a worker that knows the version claims one and it succeeds, and the other is
    # cancelled, neither waits for a newer worker any more
    (lease,) = await claim(backend, QUEUE, limit=1)
    assert lease.job_id == envs[0].id
    assert (await backend.stats())[QUEUE]["awaiting_newer_worker"] == 1
    assert await backend.settle([done(lease)]) == [True]
    await backend.cancel(envs[1].id)
    assert (await backend.stats())[QUEUE]["awaiting_newer_worker"] == 0


async def test_a_job_claimed_while_it_waits_for_a_newer_worker_counts_again_if_given_back(
    backend: Backend, clock: ShiftClock
) -> None:
    newer = {"type": NEWER_VERSION, "message": "too new"}
    env = envelope(QUEUE)
    await backend.enqueue([env])
    for _ in range(2):  # two old workers in a row give it back
        (lease,) = await claim(backend, QUEUE, limit=1)
        assert (await backend.stats())[QUEUE]["awaiting_newer_worker"] == 0
        back = Outcome(lease=lease, state=JobState.QUEUED, refund=True, error=newer)
        assert await backend.settle([back]) == [True]
        assert (await backend.stats())[QUEUE]["awaiting_newer_worker"] == 1
    assert (await status(backend, env.id))["attempt"] == 0


# -- real workers across a deploy -----------------------------------------------------------


class GreetV1(Message):
    name: str


class GreetV2(Message):
    first: str
    last: str


class GreetV3(Message):
    first: str
    last: str
    title: str


def split_name(payload: dict[str, Any]) -> dict[str, Any]:
    first, _, last = payload["name"].partition(" ")
    return {"first": first, "last": last}


def add_title(payload: dict[str, Any]) -> Message:
    return GreetV3(first=payload["first"], last=payload["last"], title="")


def deploy(app: App, version: int) -> type[Message]:
    """Give the app the code of one release: `greet` at `version`, its handler and the
    upgraders up to it (what a process started from that release's code holds)."""
    cls: type[Message] = {1: GreetV1, 2: GreetV2, 3: GreetV3}[version]
    for registry in (app.kinds, app.handlers, app.upgraders):
        registry.pop(KIND, None)
    app.message(KIND, version=version, queue=QUEUE)(cls)
    steps: dict[int, Callable[[dict[str, Any]], Any]] = {1: split_name, 2: add_title}
    for step in range(1, version):
        app.upgrade(KIND, step)(steps[step])

    @app.handles(cls)
    async def greet(msg: Message, ctx: Context) -> dict[str, Any]:
        return {"ran_at": version, "message": msg.model_dump()}

    return cls


@pytest.fixture
async def app(backend_url: str, clock: ShiftClock, tmp_path: Path) -> AsyncIterator[App]:
    """An App on this test's backend and clock, held open across the workers it runs (an
    in-memory store lives as long as the App holds it)."""
    settings = Settings(url=backend_url, blobs_url=str(tmp_path / "blobs"), secret_key=b"k" * 32)
    app = App("versions", settings=settings, clock=clock)
    async with app:
        yield app


async def test_a_job_queued_before_a_deploy_runs_on_the_new_workers_through_the_upgraders(
    app: App,
) -> None:
    # Given a job stored at version 1, before the deploy
    deploy(app, 1)
    job = await app.enqueue(GreetV1(name="Ada Lovelace"))
    # When workers of version 3 (upgraders 1 → 2 → 3) replace those of version 1
    deploy(app, 3)
    async with running(Worker(app)):
        record = await job.wait(PATIENCE_S)
    # Then its handler got the message of version 3, through both upgraders
    assert record.state is JobState.SUCCEEDED, record.error
    assert record.result == {
        "ran_at": 3,
        "message": {"first": "Ada", "last": "Lovelace", "title": ""},
    }
    assert record.attempt == 1


async def test_a_job_too_new_for_a_worker_waits_unspent_and_runs_when_a_newer_worker_starts(
    app: App, clock: ShiftClock
) -> None:
    # Given a web tier that already submits version 2 while the workers still run version 1
    deploy(app, 2)
    job = await app.enqueue(GreetV2(first="Grace", last="Hopper"))
    deploy(app, 1)
    before = clock.now()
    async with running(Worker(app)):

        async def given_back() -> bool:
            error = (await app.status(job.id))["error"]
            return error is not None and error["type"] == NEWER_VERSION

        # When a version 1 worker claims it
        await until(given_back, "the old worker gives the job back")
        after = clock.now()
    # Then it is queued again, unspent, for later, and counted as waiting for a newer worker
    record = await app.status(job.id)
    assert record["state"] == "queued" and record["attempt"] == 0
    assert "version 2" in record["error"]["message"]
    run_at = (await job.status()).run_at.timestamp()
    assert before + NEWER_VERSION_DELAY_S <= run_at <= after + NEWER_VERSION_DELAY_S
    stats = (await app.stats())[QUEUE]
    assert (stats["scheduled"], stats["awaiting_newer_worker"]) == (1, 1)
    # When a version 2 worker starts and the delay passes
    deploy(app, 2)
    async with running(Worker(app)):
        clock.advance(NEWER_VERSION_DELAY_S)
        final = await job.wait(PATIENCE_S)
    # Then it runs there, on its first attempt
    assert final.state is JobState.SUCCEEDED, final.error
    assert final.result == {"ran_at": 2, "message": {"first": "Grace", "last": "Hopper"}}
    assert final.attempt == 1
    assert (await app.stats())[QUEUE]["awaiting_newer_worker"] == 0


class Farewell(Message):
    name: str


async def test_a_job_of_a_kind_a_worker_does_not_handle_waits_unspent_for_one_that_does(
    app: App, clock: ShiftClock
) -> None:
    # Given a kind on the workers' queue that their release has no handler for (a worker
    # of another deploy handles it, or will: the web tier went out first)
    deploy(app, 1)
    app.message("farewell", queue=QUEUE)(Farewell)
    job = await app.enqueue(Farewell(name="Ada"))
    before = clock.now()
    async with running(Worker(app)):

        async def given_back() -> bool:
            error = (await app.status(job.id))["error"]
            return error is not None and error["type"] == NEWER_VERSION

        # When such a worker claims it
        await until(given_back, "the worker gives the job back")
        after = clock.now()
    # Then it is queued again for later, unspent (no attempt, so no dead letter), counted
    record = await app.status(job.id)
    assert record["state"] == "queued" and record["attempt"] == 0
    assert "farewell waits for a worker that handles it" in record["error"]["message"]
    run_at = (await job.status()).run_at.timestamp()
    assert before + NEWER_VERSION_DELAY_S <= run_at <= after + NEWER_VERSION_DELAY_S
    assert (await app.stats())[QUEUE]["awaiting_newer_worker"] == 1

    # When a worker with its handler starts and the delay passes
    @app.handles(Farewell)
    async def farewell(msg: Farewell, ctx: Context) -> str:
        return f"bye {msg.name}"

    async with running(Worker(app)):
        clock.advance(NEWER_VERSION_DELAY_S)
        final = await job.wait(PATIENCE_S)
    # Then it runs there, on its first attempt
    assert final.state is JobState.SUCCEEDED, final.error
    assert (final.result, final.attempt) == ("bye Ada", 1)


async def test_a_worker_records_what_it_runs_refreshes_it_and_deletes_it_when_it_stops(
    app: App, clock: ShiftClock
) -> None:
    backend = app._require_backend()
    deploy(app, 3)
    worker = Worker(app, lease_s=0.3)  # heartbeats (and records) every 0.1 s
    async with running(worker):
        # Given a running worker: it recorded the versions it runs before its first claim
        assert await backend.live_versions(within_s=WORKER_LIVE_S) == {KIND: {1, 2, 3}}
        # When its record ages past the live window, its heartbeat records it again
        clock.advance(WORKER_LIVE_S + 1)

        async def live() -> bool:
            return KIND in await backend.live_versions(within_s=WORKER_LIVE_S)

        await until(live, "the heartbeat records the worker again")
    # Then a clean stop deletes its entry
    assert await backend.live_versions(within_s=100 * FORGET_WORKER_AFTER_S) == {}


async def test_a_worker_records_only_the_kinds_of_the_queues_it_claims(app: App) -> None:
    deploy(app, 2)
    async with running(Worker(app, queues=["elsewhere"])):
        assert await app._require_backend().live_versions(within_s=WORKER_LIVE_S) == {}
    async with running(Worker(app)):
        assert await app._require_backend().live_versions(within_s=WORKER_LIVE_S) == {KIND: {1, 2}}
