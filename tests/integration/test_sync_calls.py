"""Synchronous code (a Flask view, a script) on a server backend: the `*_sync` methods list,
cancel and re-queue a user's jobs on the App's own loop thread; and an App opened by one
`asyncio.run` and used by another says why it cannot, where Redis's connections, bound to
the ended loop, failed every other call with `Event loop is closed`."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from offload import App, ConfigurationError, JobState, Message, Settings

from ..services import drop_redis_prefix, redis_prefix, redis_url, require_redis

pytestmark = [pytest.mark.redis]


class Export(Message):
    period: str


@pytest.fixture
def app() -> Iterator[App]:
    require_redis()
    prefix = redis_prefix()
    app = App("sync-calls", settings=Settings(url=redis_url(prefix)))
    app.message("t.export")(Export)
    yield app
    drop_redis_prefix(prefix)


def test_a_views_sync_calls_list_cancel_and_requeue_a_users_jobs(app: App) -> None:
    # Given two of alice's jobs and one of bob's, none picked up yet
    first = app.enqueue_sync(Export(period="2026-10"), owner="alice")
    second = app.enqueue_sync(Export(period="2026-11"), owner="alice")
    app.enqueue_sync(Export(period="2026-11"), owner="bob")
    try:
        # her page lists hers alone, newest first;
        mine = app.list_jobs_sync(owner="alice")
        assert [row.id for row in mine] == [second.id, first.id]
        # her cancel, through the job found as hers, ends it (waiting: at once);
        job = app.job_sync(first.id, owner="alice")
        assert job is not None and app.job_sync(first.id, owner="bob") is None
        assert job.cancel_sync().state is JobState.CANCELLED
        # and an operator re-queues it.
        assert app.requeue_sync(first.id).state is JobState.QUEUED
        assert app.cancel_sync(second.id).state is JobState.CANCELLED
    finally:
        asyncio.run(app.close())


# The first run's loop ended with its connections open (the mistake this test makes on
# purpose): they are collected unclosed, and Python says so.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_an_app_used_from_a_second_asyncio_run_says_why_not_each_time(app: App) -> None:
    # Given an App a first asyncio.run opened (a script's first call),
    job = asyncio.run(app.enqueue(Export(period="2026-10")))
    # every call from a later asyncio.run is refused the same way, naming the fix,
    for _ in range(3):
        with pytest.raises(ConfigurationError, match=r"event loop that has ended.*_sync"):
            asyncio.run(app.get(job.id))
    # and once closed (its connections ended with that loop), a new run opens it anew.
    asyncio.run(app.close())
    gc.collect()  # (the dropped connections go now, under this test's warning filters)

    async def read_and_close() -> JobState | None:
        async with app:
            row = await app.get(job.id)
            return None if row is None else row.state

    assert asyncio.run(read_and_close()) is JobState.QUEUED
