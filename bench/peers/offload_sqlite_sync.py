"""offload_sqlite with the per-call enqueue of synchronous code, `App.enqueue_sync` (in the
calling thread: Capability.BLOCKING_ENQUEUE), beside peers whose per-job API is synchronous
(Huey, RQ, Celery, Dramatiq). Everything else is offload_sqlite's."""

from __future__ import annotations

import _offload_common as c
import offload_sqlite as base

NAME = base.NAME + "-sync"
PACKAGES, BACKEND, WORKER_VARIANTS, BULK_API = (
    base.PACKAGES,
    base.BACKEND,
    base.WORKER_VARIANTS,
    base.BULK_API,
)
URL, app, noop, lat = base.URL, base.app, base.noop, base.lat
open_producer, close_producer, enqueue_bulk = base.open_producer, c.close_producer, c.enqueue_bulk
enqueue, enqueue_latency = c.enqueue_sync, c.enqueue_latency_sync
worker_cmd = base.worker_cmd
reset = base.reset
