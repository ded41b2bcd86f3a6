"""Drain throughput: 1, 2 and 4 worker processes per backend, and cost per job vs backlog.

    python bench/drain.py [--backends sqlite,postgres,redis] [--jobs 10000]
                          [--processes 1,2,4] [--big 1000000] [--concurrency 64]

Each measurement: a fresh backend, N no-op jobs enqueued in bulk, then P worker processes
(`offload worker --processes P`) started; drain jobs/s = N / (last completion - spawn).
The backlog check enqueues `--big` jobs and times the first N completions against a drain of
N from a backlog of N: the rate must not fall as the backlog grows. Completions are counted in
a private Redis (127.0.0.1:6390), as the peer harness does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import redis
from _pg import fresh_database
from _results import fmt, write_section
from cputime import tree_seconds
from rich.console import Console
from rich.progress import Progress

HERE = Path(__file__).parent
TOP = HERE.parent
COUNTER_PORT = int(os.environ.get("BENCH_REDIS_PORT", "6390"))
COUNTER_URL = f"redis://127.0.0.1:{COUNTER_PORT}/0"
REDIS_URL = os.environ.get("OFFLOAD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
console = Console()


def ensure_counter() -> redis.Redis:
    r = redis.Redis.from_url(COUNTER_URL)
    try:
        r.ping()
    except redis.ConnectionError:
        subprocess.run(
            [
                "redis-server",
                "--daemonize",
                "yes",
                "--bind",
                "127.0.0.1",
                "--port",
                str(COUNTER_PORT),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                tempfile.gettempdir(),
            ],
            check=True,
        )
        time.sleep(0.5)
    return r


async def fresh_backend(name: str) -> str:
    """A URL of an empty backend of kind `name`."""
    if name == "sqlite":
        path = Path(tempfile.gettempdir()) / "offload-drain.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return f"sqlite:///{path}"
    if name == "postgres":
        return await fresh_database("offload_drain")
    if name == "redis":
        prefix = f"drain{int(time.time() * 1000)}:"
        return f"{REDIS_URL}?prefix={prefix}"
    raise SystemExit(f"unknown backend {name}")


async def cleanup(name: str, url: str) -> None:
    if name == "redis":
        client = redis.Redis.from_url(REDIS_URL)
        prefix = url.split("prefix=", 1)[1]
        for key in client.scan_iter(match=f"*{prefix}*", count=10_000):
            client.delete(key)


async def load(url: str, n: int, progress: Progress, label: str) -> float:
    """Enqueue n jobs in bulk batches; returns jobs/s."""
    sys.path.insert(0, str(HERE))
    from drain_app import Tick, app

    app.configure(app.settings.with_(url=url))
    task = progress.add_task(f"enqueue {label}", total=n)
    start = time.perf_counter()
    async with app:
        for first in range(0, n, 10_000):
            batch = [Tick(i=i) for i in range(first, min(n, first + 10_000))]
            await app.enqueue_many(batch)
            progress.advance(task, len(batch))
    progress.remove_task(task)
    return n / (time.perf_counter() - start)


class Drained(NamedTuple):
    rate: float  # jobs/s, spawn to last completion
    steady: float  # jobs/s, first to last completion
    #: CPU µs per job of the worker processes, from the first look that saw jobs done (its
    #: start-up is over) to the last completion.
    worker_cpu_us: float


def drain(
    url: str,
    n: int,
    processes: int,
    concurrency: int,
    progress: Progress,
    label: str,
    *,
    count_with: str = "blocking",
) -> Drained:
    """Start the workers, wait for n completions (each counted by a `count_with` call:
    "blocking" or "async", see drain_app.py)."""
    counter = redis.Redis.from_url(COUNTER_URL)
    counter.delete("drain:done", "drain:first", "drain:last")
    env = {
        **os.environ,
        "OFFLOAD_URL": url,
        "BENCH_TARGET": str(n),
        "BENCH_COUNTER_URL": COUNTER_URL,
        "BENCH_COUNTER": count_with,
        # the bench's app, then the caller's path: a source tree put there (another commit's,
        # to compare with) is what the workers import too
        "PYTHONPATH": os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p),
    }
    argv = [
        str(TOP / ".venv/bin/offload"),
        "worker",
        "--app",
        "drain_app:app",
        "--processes",
        str(processes),
        "--concurrency",
        str(concurrency),
        "--grace",
        "2",
    ]
    task = progress.add_task(f"drain {label}", total=n)
    spawn = time.time()
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    started: tuple[int, float] | None = None  # jobs done and worker CPU seconds, first seen
    try:
        while True:
            done = int(counter.get("drain:done") or 0)
            progress.update(task, completed=done)
            if started is None and done:
                started = done, tree_seconds([proc.pid])
            if done >= n:
                cpu = tree_seconds([proc.pid])
                break
            if proc.poll() is not None:
                raise SystemExit(f"workers exited with {proc.returncode}")
            if time.time() - spawn > 900:
                raise SystemExit("drain timed out")
            time.sleep(0.02)
        last = float(counter.get("drain:last") or time.time())
        first = float(counter.get("drain:first") or spawn)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        progress.remove_task(task)
    assert started is not None
    per_job = (cpu - started[1]) / max(1, n - started[0]) * 1e6
    return Drained(n / (last - spawn), (n - 1) / max(1e-9, last - first), per_job)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backends", default="sqlite,postgres,redis")
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--processes", default="1,2,4")
    ap.add_argument("--big", type=int, default=1_000_000)
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()
    ensure_counter()
    backends = args.backends.split(",")
    counts = [int(p) for p in args.processes.split(",")]
    scaling: dict[tuple[str, int], tuple[float, float, float]] = {}
    backlog: dict[str, tuple[float, float, float]] = {}
    with Progress(console=console, transient=True) as progress:
        for name in backends:
            for p in counts:
                url = await fresh_backend(name)
                bulk = await load(url, args.jobs, progress, f"{name} x{args.jobs:,}")
                rate, steady, _ = drain(
                    url, args.jobs, p, args.concurrency, progress, f"{name} {p} proc"
                )
                scaling[(name, p)] = (rate, steady, bulk)
                console.print(
                    f"{name}: {p} process(es) drain {rate:,.0f}/s "
                    f"(steady {steady:,.0f}/s, bulk enqueue {bulk:,.0f}/s)"
                )
                await cleanup(name, url)
            if args.big:
                url = await fresh_backend(name)
                await load(url, args.big, progress, f"{name} backlog {args.big:,}")
                _, steady_big, _ = drain(
                    url,
                    args.jobs,
                    1,
                    args.concurrency,
                    progress,
                    f"{name} first {args.jobs:,} of {args.big:,}",
                )
                small = scaling.get((name, 1), (0.0, 0.0, 0.0))[1]
                backlog[name] = (small, steady_big, steady_big / small if small else 0.0)
                console.print(
                    f"{name}: steady {small:,.0f}/s from {args.jobs:,} queued, "
                    f"{steady_big:,.0f}/s from {args.big:,} queued"
                )
                await cleanup(name, url)
    write_report(args, backends, counts, scaling, backlog)


def write_report(
    args: argparse.Namespace,
    backends: list[str],
    counts: list[int],
    scaling: dict[tuple[str, int], tuple[float, float, float]],
    backlog: dict[str, tuple[float, float, float]],
) -> None:
    lines = [
        "## Drain throughput by worker processes (`make bench-drain`)",
        "",
        f"{args.jobs:,} no-op jobs queued in bulk, then `offload worker --processes P "
        f"--concurrency {args.concurrency}`; drain = N / (last completion - spawn), steady = "
        "first to last completion. Ratio = rate / rate with one process.",
        "",
        "| backend | processes | drain jobs/s | steady jobs/s | vs 1 process | bulk enqueue/s |",
        "|---|---|---|---|---|---|",
    ]
    for name in backends:
        one = scaling.get((name, counts[0]), (0.0, 0.0, 0.0))[0]
        for p in counts:
            rate, steady, bulk = scaling[(name, p)]
            lines.append(
                f"| {name} | {p} | {fmt(rate)} | {fmt(steady)} | "
                f"{rate / one if one else 0:.2f}x | {fmt(bulk)} |"
            )
    if backlog:
        lines += [
            "",
            f"### Cost per job as the backlog grows ({args.jobs:,} vs {args.big:,} queued)",
            "",
            f"Steady rate of the first {args.jobs:,} completions, one worker process.",
            "",
            "| backend | from small backlog jobs/s | from big backlog jobs/s | ratio |",
            "|---|---|---|---|",
        ]
        for name, (small, big, ratio) in backlog.items():
            lines.append(f"| {name} | {fmt(small)} | {fmt(big)} | {ratio:.2f}x |")
    body = "\n".join(lines)
    print(body)
    write_section("drain", body)


if __name__ == "__main__":
    asyncio.run(main())
