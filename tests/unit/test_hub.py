"""The change-feed hub outlives backend errors: every stream of a web process depends on it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from offload._ids import uuid7
from offload.brokers.sqlite import SQLiteBackend
from offload.contract import Envelope
from offload.web.events import Hub

pytestmark = pytest.mark.anyio


def _job(owner: str) -> Envelope:
    now = time.time()
    return Envelope(
        id=uuid7(), kind="k", version=1, payload={}, queue="q", run_at=now, enqueued_at=now,
        owner=owner,
    )  # fmt: skip


async def test_the_hub_survives_a_backend_outage_and_goes_on_fanning_out(
    tmp_path: Path,
) -> None:
    # Given a hub watching a real SQLite store, with a subscriber,
    store = SQLiteBackend(str(tmp_path / "jobs.db"))
    await store.open()
    hub = Hub(store, store.last_seq)
    await hub.start()
    try:
        with hub.subscribe(owner="alice") as sub:
            # when the store goes away under it while it waits (reads fail) and comes back,
            await asyncio.sleep(0.1)
            await store.close()
            await asyncio.sleep(0.1)
            await store.open()
            job = _job("alice")
            await store.enqueue([job, _job("bob")])
            # then the watcher is still alive and the subscriber gets alice's change only.
            change = await asyncio.wait_for(sub.queue.get(), 5)
            assert change.job_id == job.id and sub.queue.empty()
    finally:
        await hub.stop()
        await store.close()
