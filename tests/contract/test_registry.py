"""Worker registry contract: record, replace, forget, lost and pruned entries, and what a real
worker reports of itself (running jobs, processed, failed), on every backend."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from offload import App, Context, Message, Settings, WorkerInfo, __version__
from offload.brokers import Backend
from offload.brokers.base import FORGET_WORKER_AFTER_S, WORKER_LOST_AFTER_S
from offload.worker.runner import Worker

from ._support import PATIENCE_S, ShiftClock, running, until, worker_info

pytestmark = pytest.mark.anyio

#: Seconds a backend's stamp may differ from the test's clock (the PostgreSQL server's, or
#: the moment between the test's reading and the backend's).
SLACK_S = 5.0


def _at(clock: ShiftClock) -> datetime:
    return datetime.fromtimestamp(clock.now(), UTC)


def _stored(info: WorkerInfo) -> dict[str, Any]:
    """What a registry entry keeps of a record: all but the stamp and the lost flag."""
    return {k: v for k, v in dataclasses.asdict(info).items() if k not in ("heartbeat_at", "lost")}


async def _by_id(backend: Backend) -> dict[str, WorkerInfo]:
    return {w.id: w for w in await backend.workers(lost_after_s=WORKER_LOST_AFTER_S)}


# -- the backend's part ---------------------------------------------------------------------


async def test_a_recorded_worker_is_listed_as_recorded_and_stamped_by_the_backend(
    backend: Backend, clock: ShiftClock
) -> None:
    # Given no worker, then one that records itself
    assert await backend.workers(lost_after_s=WORKER_LOST_AFTER_S) == []
    before = _at(clock)
    record = worker_info("w1", {"a": [1, 2]}, queues=("q", "r"), running=("j1",), processed=3)
    await backend.record_worker(record)
    after = _at(clock)
    # Then it is listed with every field as recorded, live, stamped when it recorded
    (listed,) = await backend.workers(lost_after_s=WORKER_LOST_AFTER_S)
    assert _stored(listed) == _stored(record)
    assert listed.kinds == {"a": (1, 2)} and listed.queues == ("q", "r")
    assert not listed.lost
    assert listed.heartbeat_at.tzinfo is not None
    assert before.timestamp() - SLACK_S <= listed.heartbeat_at.timestamp()
    assert listed.heartbeat_at.timestamp() <= after.timestamp() + SLACK_S


async def test_a_new_record_replaces_the_entry_and_moves_its_heartbeat(
    backend: Backend, clock: ShiftClock
) -> None:
    await backend.record_worker(worker_info("w1", {"a": [1]}, running=("j1", "j2")))
    await backend.record_worker(worker_info("w2", {"b": [1]}))
    first = (await _by_id(backend))["w1"].heartbeat_at
    # When w1 records again later, running other jobs and having processed some
    clock.advance(5)
    again = worker_info("w1", {"a": [1]}, running=("j3",), processed=7, failed=2)
    await backend.record_worker(again)
    # Then its one entry is the new record, its heartbeat 5 s on; w2's is untouched
    listed = await _by_id(backend)
    assert sorted(listed) == ["w1", "w2"]
    assert _stored(listed["w1"]) == _stored(again)
    assert (listed["w1"].running, listed["w1"].processed, listed["w1"].failed) == (("j3",), 7, 2)
    moved = (listed["w1"].heartbeat_at - first).total_seconds()
    assert 5 <= moved <= 5 + SLACK_S
    assert _stored(listed["w2"]) == _stored(worker_info("w2", {"b": [1]}))


async def test_a_forgotten_worker_is_no_longer_listed(backend: Backend) -> None:
    await backend.record_worker(worker_info("stopping", {"a": [1]}))
    await backend.record_worker(worker_info("staying", {"a": [1]}))
    # When one stops cleanly (twice over: forgetting is idempotent)
    await backend.forget_worker("stopping")
    await backend.forget_worker("stopping")
    await backend.forget_worker("never-recorded")
    # Then only the other is listed
    assert list(await _by_id(backend)) == ["staying"]


async def test_a_worker_whose_heartbeat_lapsed_is_lost_until_it_records_again(
    backend: Backend, clock: ShiftClock
) -> None:
    await backend.record_worker(worker_info("hung", {"a": [1]}))
    await backend.record_worker(worker_info("beating", {"a": [1]}))
    # When more than the lost threshold passes and only one of them records again
    clock.advance(WORKER_LOST_AFTER_S + 1)
    await backend.record_worker(worker_info("beating", {"a": [1]}))
    # Then the other is lost, and still listed
    listed = await _by_id(backend)
    assert (listed["hung"].lost, listed["beating"].lost) == (True, False)
    # And a wider threshold is the caller's to choose
    assert not any(w.lost for w in await backend.workers(lost_after_s=WORKER_LOST_AFTER_S + 60))
    # When the hung one records again, it is live again
    await backend.record_worker(worker_info("hung", {"a": [1]}))
    assert not any(w.lost for w in (await _by_id(backend)).values())


async def test_a_lost_worker_is_pruned_by_the_next_record_after_the_forget_horizon(
    backend: Backend, clock: ShiftClock
) -> None:
    await backend.record_worker(worker_info("dead", {"a": [1]}))
    # When the forget horizon passes, the dead worker is listed (lost) until a record
    clock.advance(FORGET_WORKER_AFTER_S + 1)
    assert [(w.id, w.lost) for w in await backend.workers(lost_after_s=WORKER_LOST_AFTER_S)] == [
        ("dead", True)
    ]
    # Then the next record of any worker deletes it, and its kinds are no longer live
    await backend.record_worker(worker_info("new", {"b": [1]}))
    assert list(await _by_id(backend)) == ["new"]
    assert await backend.live_versions(within_s=100 * FORGET_WORKER_AFTER_S) == {"b": {1}}


# -- a real worker --------------------------------------------------------------------------


class Task(Message):
    n: int
    fail: bool = False


@pytest.fixture
async def app(backend_url: str, clock: ShiftClock, tmp_path: Path) -> AsyncIterator[App]:
    """An App on this test's backend and clock, held open across the workers it runs."""
    settings = Settings(url=backend_url, blobs_url=str(tmp_path / "blobs"), secret_key=b"k" * 32)
    app = App("registry", settings=settings, clock=clock)
    app.message("registry.task", queue="tasks", max_attempts=1)(Task)
    async with app:
        yield app


async def test_a_worker_reports_itself_what_it_runs_and_how_it_did_and_goes_when_it_stops(
    app: App,
) -> None:
    gate = asyncio.Event()

    @app.handles(Task)
    async def task(msg: Task, ctx: Context) -> int:
        if msg.fail:
            raise ValueError("no")
        await gate.wait()
        return msg.n

    worker = Worker(app, lease_s=0.6, concurrency=4)  # heartbeats (and records) every 0.2 s
    async with running(worker):
        # Given a running worker: it recorded itself before its first claim
        (me,) = await app.workers()
        assert (me.id, me.host, me.pid) == (worker.id, socket.gethostname(), os.getpid())
        assert me.queues == ("tasks", "offload.notify") and me.concurrency == 4
        assert me.version == __version__ and me.kinds == {"registry.task": (1,)}
        assert (me.running, me.processed, me.failed, me.lost) == ((), 0, 0, False)
        assert me.started_at == worker.started_at
        # When it runs a job that waits, its next record shows it running
        held = await app.enqueue(Task(n=1))

        async def shows_running() -> bool:
            return (await app.workers())[0].running == (held.id,)

        await until(shows_running, "the registry shows the job running")
        # When that job ends and another fails for good
        gate.set()
        await held.wait(PATIENCE_S)
        failing = await app.enqueue(Task(n=2, fail=True))
        await failing.wait(PATIENCE_S)

        async def counted() -> WorkerInfo | None:
            (entry,) = await app.workers()
            return entry if (entry.processed, entry.failed) == (2, 1) else None

        # Then its record counts both, one failed, and runs nothing
        entry = await until(counted, "the registry counts two attempts, one failed")
        assert entry.running == ()
    # When it stops cleanly, its entry is gone
    assert await app.workers() == []


async def test_workers_list_live_ones_first_then_by_start(app: App, clock: ShiftClock) -> None:
    backend = app._require_backend()
    base = clock.now() - 100
    started = {"first": base, "zeta": base + 1, "alpha": base + 2}
    # Given three workers started in turn, of which the first stopped beating
    for name, at in started.items():
        await backend.record_worker(worker_info(name, started_at=at))
    clock.advance(WORKER_LOST_AFTER_S + 1)
    for name in ("alpha", "zeta"):
        await backend.record_worker(worker_info(name, started_at=started[name]))
    # Then the live ones come first, each group by start time (not by name)
    assert [(w.id, w.lost) for w in await app.workers()] == [
        ("zeta", False),
        ("alpha", False),
        ("first", True),
    ]
