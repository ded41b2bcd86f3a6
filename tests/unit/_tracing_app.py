"""A one-kind app and a worker run for tests/unit/test_tracing.py, importable where the
OpenTelemetry API is not (that test's subprocess)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from offload import App, Context, Message
from offload.worker.runner import Worker


class Ping(Message):
    n: int


def _app(tmp_path: Path) -> App:
    app = App("t", url=f"sqlite:///{tmp_path / 'jobs.db'}")
    app.message("t.ping", queue="pings")(Ping)

    @app.handles(Ping)
    def ping(msg: Ping, ctx: Context) -> int:
        return msg.n + 1

    return app


async def _run_one(app: App, job_id: str) -> str:
    """Run a worker until the job ends; its final state."""
    worker = Worker(app, concurrency=1)
    task = asyncio.create_task(worker.run())
    try:
        for _ in range(600):
            row = await app.get(job_id)
            if row is not None and row.state.final:
                return row.state.value
            await asyncio.sleep(0.05)
        raise AssertionError("the job never ended")
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 30)
