"""The no-op job the drain benchmark runs: count the completion in Redis, nothing else.

The count is a blocking call on the event loop's thread, as the peer harness's handlers make
it (`common.record_done`); BENCH_COUNTER=async makes it with redis-py's asyncio client
instead, so that a wait for the counter's Redis no longer holds up the worker's loop (see
bench/drain_concurrency.py)."""

from __future__ import annotations

import os
import time

import redis
import redis.asyncio as aioredis

from offload import App, Context, Message

COUNTER_URL = os.environ.get("BENCH_COUNTER_URL", "redis://127.0.0.1:6390/0")
TARGET = int(os.environ.get("BENCH_TARGET", "0") or 0)
ASYNC_COUNTER = os.environ.get("BENCH_COUNTER", "blocking") == "async"
app = App("drain")
_counter: redis.Redis | None = None
_async_counter: aioredis.Redis | None = None


@app.message("bench.drain", queue="drain")
class Tick(Message):
    i: int


@app.handles(Tick)
async def tick(msg: Tick, ctx: Context) -> None:
    global _counter, _async_counter
    if ASYNC_COUNTER:
        if _async_counter is None:
            _async_counter = aioredis.Redis.from_url(COUNTER_URL)
        n = await _async_counter.incr("drain:done")
        if n == 1:
            await _async_counter.set("drain:first", repr(time.time()))
        if n == TARGET:
            await _async_counter.set("drain:last", repr(time.time()))
        return
    if _counter is None:
        _counter = redis.Redis.from_url(COUNTER_URL)
    n = _counter.incr("drain:done")
    if n == 1:
        _counter.set("drain:first", repr(time.time()))
    if n == TARGET:
        _counter.set("drain:last", repr(time.time()))
