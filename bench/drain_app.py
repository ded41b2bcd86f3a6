"""The no-op job the drain benchmark runs: count the completion in Redis, nothing else."""

from __future__ import annotations

import os
import time

import redis

from offload import App, Context, Message

COUNTER_URL = os.environ.get("BENCH_COUNTER_URL", "redis://127.0.0.1:6390/0")
TARGET = int(os.environ.get("BENCH_TARGET", "0") or 0)
app = App("drain")
_counter: redis.Redis | None = None


@app.message("bench.drain", queue="drain")
class Tick(Message):
    i: int


@app.handles(Tick)
async def tick(msg: Tick, ctx: Context) -> None:
    global _counter
    if _counter is None:
        _counter = redis.Redis.from_url(COUNTER_URL)
    n = _counter.incr("drain:done")
    if n == 1:
        _counter.set("drain:first", repr(time.time()))
    if n == TARGET:
        _counter.set("drain:last", repr(time.time()))
