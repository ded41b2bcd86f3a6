"""In-process fixtures: an App on a fresh SQLite file, a worker task, the web app via ASGI."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from offload import App, Settings
from offload.web import create_app
from offload.worker.runner import Worker


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        url=f"sqlite:///{tmp_path / 'jobs.db'}",
        blobs_url=str(tmp_path / "blobs"),
        secret_key=b"test-secret-of-32-bytes-or-more!",
        lease_s=2.0,
    )


@pytest.fixture
def app(settings: Settings) -> App:
    return App("acceptance", settings=settings)


class Running:
    """A worker running as a task of the test's own event loop."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.task = asyncio.create_task(worker.run())

    async def stop(self) -> None:
        self.worker.request_stop()
        await asyncio.wait_for(self.task, 30)


@pytest.fixture
async def start_worker(app: App) -> AsyncIterator[Callable[..., Any]]:
    running: list[Running] = []

    async def start(**options: Any) -> Worker:
        worker = Worker(app, **options)
        running.append(Running(worker))
        await asyncio.wait_for(worker.started.wait(), 10)
        return worker

    yield start
    for r in running:
        await r.stop()
    if not app._users:  # opened lazily (enqueue) and by no one else: close it; a web
        await app.close()  # fixture still serving holds its own open and closes it itself


@pytest.fixture
async def web(app: App) -> AsyncIterator[httpx.AsyncClient]:
    api = create_app(app)
    async with api.router.lifespan_context(api):
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            yield c
