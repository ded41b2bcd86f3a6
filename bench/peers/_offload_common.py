"""What the three offload adapters share: the app, its two jobs, producer and worker commands.

Loaded by the peer harness (`run.py --adapter offload_sqlite=…/offload_sqlite.py@.venv/bin/python`)
inside offload's own interpreter; `common` is the harness's module (completion counters).
"""

from __future__ import annotations

import os
from types import ModuleType

from common import record_done, record_latency  # type: ignore[import-not-found]

from offload import App, Context, Message, Settings

PACKAGES = ["offload", "psycopg", "redis", "orjson", "uvloop"]
WORKER_VARIANTS = {
    "async10": "asyncio, --concurrency 10 (as the harness's other asyncio peers)",
    "async64": "asyncio, --concurrency 64 (offload's batched claims stretched)",
}
BULK_API = "App.enqueue_many() (one transaction / one script call)"


class Noop(Message):
    i: int


class Lat(Message):
    t: float


def make_app(url: str) -> App:
    """The benchmark app on backend `url`, with the harness's two no-op jobs."""
    app = App("bench", settings=Settings(url=url))
    app.message("bench.noop", queue="bench")(Noop)
    app.message("bench.lat", queue="bench")(Lat)

    @app.handles(Noop)
    async def noop(msg: Noop, ctx: Context) -> None:
        record_done(msg.i)

    @app.handles(Lat)
    async def lat(msg: Lat, ctx: Context) -> None:
        record_latency(msg.t)

    return app


async def open_producer(app: App) -> App:
    await app.open()
    return app


async def close_producer(app: App) -> None:
    await app.close()


async def enqueue(app: App, i: int) -> None:
    await app.enqueue(Noop(i=i))


async def enqueue_latency(app: App, t: float) -> None:
    await app.enqueue(Lat(t=t))


async def enqueue_bulk(app: App, items: list[int]) -> None:
    await app.enqueue_many([Noop(i=i) for i in items])


def worker_cmd(module: str, variant: str) -> list[str]:
    concurrency = {"async10": "10", "async64": "64"}[variant]
    env_url = os.environ.get("OFFLOAD_URL")
    argv = [
        "offload",
        "worker",
        "--app",
        f"{module}:app",
        "--concurrency",
        concurrency,
        "--grace",
        "1",
    ]
    return argv + ([f"--url={env_url}"] if env_url else [])


def enqueue_sync(app: App, i: int) -> None:
    """The per-call enqueue of synchronous code (Django, Flask): `App.enqueue_sync`."""
    app.enqueue_sync(Noop(i=i))


def enqueue_latency_sync(app: App, t: float) -> None:
    app.enqueue_sync(Lat(t=t))


def synchronous(base: ModuleType) -> dict[str, object]:
    """The attributes of an adapter that is `base` but for its per-call enqueues, those of
    synchronous code (`App.enqueue_sync`: in the calling thread on SQLite files and Redis),
    for the peers whose per-job API is synchronous (Huey, RQ, Celery, Dramatiq)."""
    names = {k: v for k, v in vars(base).items() if not k.startswith("__")}
    return {
        **names,
        "NAME": base.NAME + "-sync",
        "enqueue": enqueue_sync,
        "enqueue_latency": enqueue_latency_sync,
    }
