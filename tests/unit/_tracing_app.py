"""A one-kind app and a worker run for tests/unit/test_tracing.py, importable where the
OpenTelemetry API is not (that test's subprocess)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from offload import App, Context, Message, Settings
from offload.worker.runner import Worker


class Ping(Message):
    n: int


def _app(tmp_path: Path) -> App:
    settings = Settings(url=f"sqlite:///{tmp_path / 'jobs.db'}", blobs_url=str(tmp_path / "blobs"))
    app = App("t", settings=settings)
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
