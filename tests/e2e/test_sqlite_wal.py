"""SQLite: under a sustained load with readers, the WAL stays within its bound."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload import App, Message, Settings
from offload._bulk import DEFAULT_COUNT_CAP
from offload.brokers.sqlite.checkpoint import wal_bound
from offload.contract import JobFilter

from .conftest import TEMPLATE, Stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

#: The WAL's cap for this test (MiB): small, so that a few seconds of load pass it.
CAP_MIB = 16
#: How long the load goes on at least while the files are sampled (seconds).
LOAD_S = 20.0
#: Jobs waiting at most: the producer keeps ahead of the workers, no further.
AHEAD = 2000
#: Jobs the workers must have run before the load stops: a real load, many times the cap.
ENOUGH = 5 * AHEAD
#: How long the load may go on until they have (seconds): a loaded machine is slower.
PATIENCE_S = 180.0


MIB = 1 << 20


class Noop(Message):
    n: int


@pytest.fixture
def wal_stack(tmp_path: Path) -> Iterator[Stack]:
    shutil.copytree(TEMPLATE, tmp_path, dirs_exist_ok=True)
    stack = Stack(tmp_path, f"sqlite:///{tmp_path / 'jobs.db'}?wal_cap_mib={CAP_MIB}")
    try:
        yield stack
    finally:
        stack.stop()


def _size(path: Path) -> int:
    return os.path.getsize(path) if path.exists() else 0


def _produce(url: str, halt: threading.Event) -> None:
    app = App("producer", settings=Settings(url=url))
    app.message("e2e.noop", queue="bulk")(Noop)

    async def run() -> None:
        async with app:
            n = 0
            while not halt.is_set():
                if (await app.stats()).get("bulk", {}).get("queued", 0) > AHEAD:
                    await asyncio.sleep(0.01)
                    continue
                await app.enqueue_many([Noop(n=n + i) for i in range(200)])
                n += 200

    asyncio.run(run())


def _read(url: str, halt: threading.Event) -> None:
    """What the dashboard reads, again and again: stats, the newest jobs, a capped count."""
    app = App("reader", settings=Settings(url=url))

    async def run() -> None:
        async with app:
            while not halt.is_set():
                await app.stats()
                await app.search_jobs(JobFilter(), limit=50)
                await app.count_jobs(JobFilter(state="succeeded"), cap=DEFAULT_COUNT_CAP)

    asyncio.run(run())


def test_the_wal_stays_within_its_bound_under_load_with_readers(wal_stack: Stack) -> None:
    stack = wal_stack
    url = stack.env["OFFLOAD_URL"]
    db = stack.root / "jobs.db"
    # Given two worker processes draining what a producer enqueues as fast as they go, and
    # two readers reading what the dashboard reads,
    for _ in range(2):
        stack.start_worker("--queues", "bulk")
    halt = threading.Event()
    threads = [threading.Thread(target=_produce, args=(url, halt))]
    threads += [threading.Thread(target=_read, args=(url, halt)) for _ in range(2)]
    for thread in threads:
        thread.start()
    # when the load goes on (the files sampled every 50 ms) for LOAD_S, and on until the
    # workers ran ENOUGH jobs (a loaded machine takes longer),
    worst = (0.0, 0, 0)  # WAL / bound, database bytes, WAL bytes
    ran = 0
    try:
        began = time.monotonic()
        counted = began
        while time.monotonic() < began + PATIENCE_S:
            db_bytes, wal_bytes = _size(db), _size(Path(f"{db}-wal"))
            worst = max(
                worst, (wal_bytes / wal_bound(db_bytes, CAP_MIB << 20), db_bytes, wal_bytes)
            )
            if time.monotonic() - counted >= 1.0:  # the workers' log, once a second
                counted = time.monotonic()
                ran = len(stack.log_lines("noop.log"))
                if ran > ENOUGH and counted - began >= LOAD_S:
                    break
            time.sleep(0.05)
    finally:
        halt.set()
        for thread in threads:
            thread.join()
    # then the WAL never passed the larger of twice the database and the cap, and the load
    # was real: the workers ran thousands of jobs.
    ratio, db_bytes, wal_bytes = worst
    assert ratio <= 1, f"WAL {wal_bytes / MIB:.1f} MiB over a {db_bytes / MIB:.1f} MiB database"
    assert ran > ENOUGH, f"{ran} jobs run in {PATIENCE_S:.0f} s\n{stack.output()}"
