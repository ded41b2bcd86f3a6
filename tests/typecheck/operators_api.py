"""Checked by mypy (see `files` in pyproject.toml), never run: the operators' Python API (the
worker registry, pausing queues) is typed as the dashboard reads it; a frozen `WorkerInfo`
cannot be changed.

Every `# type: ignore[...]` below marks a mistake mypy must report (see job_api.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import assert_type

from offload import App, WorkerInfo

app = App("typecheck")


async def well_typed() -> None:
    workers = await app.workers()
    assert_type(workers, list[WorkerInfo])
    worker = workers[0]
    assert_type(worker.queues, tuple[str, ...])
    assert_type(worker.kinds, dict[str, tuple[int, ...]])
    assert_type(worker.started_at, datetime)
    assert_type(worker.heartbeat_at, datetime)
    assert_type(worker.running, tuple[str, ...])
    assert_type(worker.lost, bool)
    assert_type(await app.pause("reports"), bool)
    assert_type(await app.resume("reports"), bool)


async def mistakes() -> None:
    worker = (await app.workers())[0]
    worker.lost = True  # type: ignore[misc]
    await app.pause(queue=1)  # type: ignore[arg-type]
