"""The floor under one enqueue at a time on Redis: what the driver alone costs.

Alternates, in one process, N one-at-a-time calls of
- a bare redis-py asyncio `EVALSHA` of a one-line script (the asyncio driver's floor),
- `RedisBackend.enqueue([envelope])` (offload's script and its retry and timeout guard),
- `App.enqueue(message)` (plus validation, the envelope, group commit, tracing, metrics),
- a bare blocking redis-py `EVALSHA` (the blocking driver's floor, as Huey's client calls),
- `App.enqueue_sync(message)` (synchronous code: in the calling thread, a blocking client),
and prints calls/s and CPU µs per call for each; writes the `per-call-floor` section.

    .venv/bin/python bench/per_call_floor.py [N]      # Redis at OFFLOAD_BENCH_REDIS_URL
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable

import redis
import redis.asyncio as aioredis
from _results import rounds_rows, write_section

from offload import App, Context, Message, Settings

URL = os.environ.get("OFFLOAD_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
ROUNDS = 3


class Noop(Message):
    i: int


async def timed(n: int, call: Callable[[int], Awaitable[object]]) -> tuple[float, float]:
    """Calls per second and CPU microseconds per call of `n` awaited calls."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(n):
        await call(i)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return n / wall, cpu / n * 1e6


async def alternate(
    cases: dict[str, Callable[[int], Awaitable[object]]], n: int
) -> dict[str, list[tuple[float, float]]]:
    """Each case warmed up (200 calls), then ROUNDS rounds of `n` calls of every case in
    turn: per case, each round's calls per second and CPU microseconds per call."""
    for call in cases.values():
        for i in range(200):
            await call(i)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for _ in range(ROUNDS):
        for name, call in cases.items():
            runs[name].append(await timed(n, call))
    return runs


def report(
    section: str, title: str, intro: str, runs: dict[str, list[tuple[float, float]]]
) -> None:
    """Print `runs` as a table under `title` and `intro`, and write it to RESULTS' `section`."""
    lines = [
        intro,
        "",
        "| call | calls/s (rounds) | CPU µs per call (rounds) |",
        "|---|---|---|",
        *rounds_rows(runs, [(0, ",.0f"), (1, ",.0f")]),
    ]
    body_md = f"## {title}\n\n" + "\n".join(lines)
    print(body_md)
    write_section(section, body_md)


def done(call: Callable[[int], object]) -> Callable[[int], Awaitable[object]]:
    """A blocking call as the awaitable `timed` takes (it blocks the loop, as it would)."""

    async def blocked(i: int) -> object:
        return call(i)

    return blocked


async def main(n: int) -> None:
    raw = aioredis.Redis.from_url(URL)
    lua = "redis.call('LPUSH', KEYS[1], ARGV[1]) return 1"
    script = raw.register_script(lua)
    blocking = redis.Redis.from_url(URL)
    blocking_script = blocking.register_script(lua)
    app = App("floor", settings=Settings(url=URL))
    app.message("floor.noop", queue="floor")(Noop)

    @app.handles(Noop)
    async def noop(msg: Noop, ctx: Context) -> None:
        return None

    await app.open()
    backend = app._require_backend()
    body = "x" * 300  # about one envelope's JSON
    cases: dict[str, Callable[[int], Awaitable[object]]] = {
        "redis-py asyncio EVALSHA (floor)": lambda i: script(keys=["floor:raw"], args=[body]),
        "RedisBackend.enqueue": lambda i: backend.enqueue([app.envelope(Noop(i=i))]),
        "App.enqueue": lambda i: app.enqueue(Noop(i=i)),
        "redis-py blocking EVALSHA (floor)": done(
            lambda i: blocking_script(keys=["floor:raw"], args=[body])
        ),
        "App.enqueue_sync": done(lambda i: app.enqueue_sync(Noop(i=i))),
    }
    try:
        runs = await alternate(cases, n)
    finally:
        await raw.delete("floor:raw")
        await raw.aclose()
        blocking.close()
        await app.close()
    intro = (
        f"One call at a time, {n:,} calls per case, {ROUNDS} rounds alternating, one "
        "process, asyncio (no uvloop), Redis on loopback. `App.enqueue_sync` is called "
        "from the loop's thread as a plain loop would (its first call, in the warm-up, "
        "opened the backend it then uses in the calling thread)."
    )
    report("per-call-floor", "One enqueue at a time on Redis: the driver's floor", intro, runs)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000))
