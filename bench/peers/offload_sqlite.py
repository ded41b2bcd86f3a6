"""offload on its embedded default, SQLite (WAL), one file in the temp folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import _offload_common as c

NAME = "offload-sqlite"
PACKAGES = c.PACKAGES
BACKEND = "sqlite"
WORKER_VARIANTS = c.WORKER_VARIANTS
BULK_API = c.BULK_API
DB = Path(
    os.environ.get("BENCH_OFFLOAD_SQLITE") or Path(tempfile.gettempdir()) / "offload-bench.db"
)
URL = f"sqlite:///{DB}"
app = c.make_app(URL)
noop, lat = app.handlers["bench.noop"].fn, app.handlers["bench.lat"].fn


def reset() -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{DB}{suffix}").unlink(missing_ok=True)


async def open_producer():  # type: ignore[no-untyped-def]
    return await c.open_producer(c.make_app(URL))


close_producer, enqueue, enqueue_latency = c.close_producer, c.enqueue, c.enqueue_latency
enqueue_bulk = c.enqueue_bulk


def worker_cmd(variant: str) -> list[str]:
    return c.worker_cmd("offload_sqlite", variant)
