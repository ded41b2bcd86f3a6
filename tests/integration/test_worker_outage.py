"""A worker told to stop while PostgreSQL is out of reach: it ends within its grace and the
backend's retry deadline, saying which jobs' outcomes it could not record (they run again
once their leases expire), where it waited half a minute more and said they were released."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import pytest

from offload import App, Context, Message, Settings
from offload.contract import JobState
from offload.errors import BackendError
from offload.worker.runner import FLUSH_GUARD_S, Worker

from ..services import PgSchema
from ..tcp_proxy import TcpProxy

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

#: The retry deadline of the app under test (seconds): short, so the test is.
RETRY_DEADLINE_S = 2.0
GRACE_S = 0.5


class Long(Message):
    seconds: float = 600


async def test_a_worker_stopped_in_an_outage_ends_soon_and_names_what_it_could_not_record(
    schema: PgSchema, caplog: pytest.LogCaptureFixture
) -> None:
    port = urlsplit(schema.url).port or 5432
    started = asyncio.Event()
    with TcpProxy(port) as proxy:
        through = schema.url.replace(f"127.0.0.1:{port}", f"127.0.0.1:{proxy.port}", 1)
        app = App("outage", settings=Settings(url=through, retry_deadline_s=RETRY_DEADLINE_S))
        app.message("t.long")(Long)

        @app.handles(Long)
        async def long(msg: Long, ctx: Context) -> None:
            started.set()
            await asyncio.sleep(msg.seconds)

        job = await app.enqueue(Long())
        worker = Worker(app, concurrency=1, prefetch=0, grace_s=GRACE_S)
        run = asyncio.create_task(worker.run())
        async with asyncio.timeout(30):
            await started.wait()
        # Given a job running when the network to PostgreSQL fails,
        proxy.cut()
        # when the worker is told to stop (a deploy, a pod's SIGTERM),
        stopping = time.monotonic()
        worker.request_stop()
        # then it ends once its grace is over and a settle failed for its retry deadline,
        # not after the flush's guard besides (it waited for it, then tried again),
        with pytest.raises(BackendError, match="outcomes of 1 job could not be recorded"):
            async with asyncio.timeout(60):
                await run
        assert time.monotonic() - stopping < FLUSH_GUARD_S
    # naming the job whose release it could not write,
    lost = [r for r in caplog.records if getattr(r, "action", None) == "outcome_lost"]
    assert [r.job_id for r in lost] == [job.id]  # type: ignore[attr-defined]
    assert "runs again once its lease expires" in lost[0].getMessage()
    # which the backend still has running under it, to be rescued when its lease lapses.
    # (the check's own connection, to the server itself: a loaded CI run took more than
    # the default 5 s to open its pool once)
    look = Settings(url=schema.url, connect_timeout_s=30.0)
    async with App("check", settings=look) as check:
        row = await check.get(job.id)
        assert row is not None and row.state is JobState.RUNNING
