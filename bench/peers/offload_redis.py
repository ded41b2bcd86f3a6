"""offload on Redis (the harness flushes Redis before every measurement)."""

from __future__ import annotations

import _offload_common as c
from common import REDIS_URL  # type: ignore[import-not-found]

NAME = "offload-redis"
PACKAGES = c.PACKAGES
BACKEND = "redis"
WORKER_VARIANTS = c.WORKER_VARIANTS
BULK_API = c.BULK_API
URL = REDIS_URL
app = c.make_app(URL)
noop, lat = app.handlers["bench.noop"].fn, app.handlers["bench.lat"].fn


async def open_producer():  # type: ignore[no-untyped-def]
    return await c.open_producer(c.make_app(URL))


close_producer, enqueue, enqueue_latency = c.close_producer, c.enqueue, c.enqueue_latency
enqueue_bulk = c.enqueue_bulk


def worker_cmd(variant: str) -> list[str]:
    return c.worker_cmd("offload_redis", variant)
