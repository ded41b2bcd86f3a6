"""Drain at --concurrency 10 and 64, with the completion counter blocking or asyncio.

    .venv/bin/python bench/drain_concurrency.py [--backends postgres,redis] [--jobs 10000]
                                                [--rounds 3] [--no-write]

The peer harness's handlers count each completion with a blocking Redis call on the
worker's event loop (`common.record_done`), and in its runs offload's PostgreSQL drain was
slower at concurrency 64 than at 10. This runs `make bench-drain`'s measurement (one
worker process, N no-op jobs queued in bulk, bench/drain_app.py) for every pair of counter
(blocking, as the harness's; asyncio) and concurrency (10, 64), in rounds that alternate
them, and reads the CPU the worker and the engine's server spent per job
(bench/cputime.py): a busy machine moves those far less than it moves rates.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess

import redis
from _results import rounds_rows, write_section
from cputime import tree_seconds
from drain import REDIS_URL, cleanup, console, drain, ensure_counter, fresh_backend, load
from rich.progress import Progress

CASES = [(counter, c) for counter in ("blocking", "async") for c in (10, 64)]


def server_pids(backend: str) -> list[int]:
    """The engine's server processes (PostgreSQL's postmaster, whose tree holds every
    backend; the Redis server), or none (SQLite is in the worker)."""
    if backend == "postgres":
        out = subprocess.run(["pgrep", "-o", "-x", "postgres"], capture_output=True, text=True)
        return [int(out.stdout.split()[0])] if out.stdout.strip() else []
    if backend == "redis":
        return [int(redis.Redis.from_url(REDIS_URL).info("server")["process_id"])]
    return []


async def one(
    backend: str, n: int, counter: str, concurrency: int, progress: Progress
) -> tuple[float, float, float]:
    """One drain: steady jobs/s, worker and server CPU µs per job."""
    url = await fresh_backend(backend)
    await load(url, n, progress, f"{backend} x{n:,}")
    servers = server_pids(backend)
    before = tree_seconds(servers)
    done = drain(url, n, 1, concurrency, progress, f"{backend} c={concurrency}", count_with=counter)
    server_cpu = tree_seconds(servers) - before
    await cleanup(backend, url)
    return (done.steady, done.worker_cpu_us, server_cpu / n * 1e6)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backends", default="postgres,redis")
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    ensure_counter()
    backends = args.backends.split(",")
    runs: dict[str, list[tuple[float, float, float]]] = {
        f"{b} | {counter} | {c}": [] for b in backends for counter, c in CASES
    }
    with Progress(console=console, transient=True) as progress:
        for _ in range(args.rounds):
            for b in backends:
                for counter, c in CASES:
                    figures = await one(b, args.jobs, counter, c, progress)
                    runs[f"{b} | {counter} | {c}"].append(figures)
                    console.print(
                        f"{b} {counter} c={c}: steady {figures[0]:,.0f}/s, worker "
                        f"{figures[1]:.0f} µs/job, server {figures[2]:.0f} µs/job"
                    )
    lines = [
        "## Drain by concurrency, with the completion counter blocking or asyncio "
        "(`bench/drain_concurrency.py`)",
        "",
        f"One worker process drains {args.jobs:,} no-op jobs queued in bulk "
        "(bench/drain_app.py); each handler counts its completion in a private Redis, with a "
        "blocking call on the event loop (as the peer harness's handlers do) or with redis-py's "
        f"asyncio client. {args.rounds} rounds, every case once per round in the table's "
        "order. Steady = first to last completion; CPU per job of the worker (its process "
        "tree, from the first completion seen to the last) and of the engine's server "
        "(PostgreSQL's postmaster and its backends; the Redis server, from the worker's "
        "spawn to its exit).",
        "",
        "| backend | counter | concurrency | steady jobs/s (rounds) | worker CPU µs/job "
        "(rounds) | server CPU µs/job (rounds) |",
        "|---|---|---|---|---|---|",
        *rounds_rows(runs, [(0, ",.0f"), (1, ".0f"), (2, ".0f")]),
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("drain-concurrency", body)


if __name__ == "__main__":
    asyncio.run(main())
