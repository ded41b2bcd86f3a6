"""offload_redis with the per-call enqueues of synchronous code (`App.enqueue_sync`), beside
peers whose per-job API is synchronous: see `_offload_common.synchronous`."""

from __future__ import annotations

import _offload_common as c
import offload_redis as base

globals().update(c.synchronous(base))
