"""Drain throughput with Prometheus metrics on vs off, same run (`make bench-metrics`).

    python bench/metrics_overhead.py [--backends sqlite,postgres,redis] [--jobs 10000]
                                     [--rounds 3] [--concurrency 64]

Each round drains a fresh backlog of N no-op jobs twice, metrics off then on (the order
alternates between rounds), with one `offload worker` process; "on" is the same command
with `--metrics-port`, so every job is counted (wait, run time, completion, slots).
The figure is the median of the rounds; the ratio is on / off. Completions are counted in
a private Redis (127.0.0.1:6390), as `bench/drain.py` does.

The same comparison in process (`Worker` on the benchmark's own event loop, no process
start-up in the figure) also reports the CPU seconds the process spent per job, which a
loaded, shared machine disturbs far less than wall time; and the CPU cost of the hooks one
job goes through, timed alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import redis
from _results import fmt, write_section
from drain import COUNTER_URL, cleanup, ensure_counter, fresh_backend, load
from rich.console import Console
from rich.progress import Progress

import offload
from offload import App, Context, Message
from offload.metrics import Metrics
from offload.worker.runner import Worker

HERE = Path(__file__).parent
#: The offload under test (a source tree on PYTHONPATH included), for the worker processes.
SOURCES = Path(offload.__file__).resolve().parents[1]
console = Console()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def drain(url: str, n: int, concurrency: int, metrics: bool) -> float:
    """One worker process drains n jobs; returns jobs/s from spawn to the last completion."""
    counter = redis.Redis.from_url(COUNTER_URL)
    counter.delete("drain:done", "drain:first", "drain:last")
    path = os.pathsep.join([str(HERE), str(SOURCES), os.environ.get("PYTHONPATH", "")])
    env = {
        **os.environ,
        "OFFLOAD_URL": url,
        "BENCH_TARGET": str(n),
        "BENCH_COUNTER_URL": COUNTER_URL,
        "PYTHONPATH": path,
    }
    argv = [sys.executable, "-m", "offload", "worker", "--app", "drain_app:app"]
    argv += ["--concurrency", str(concurrency), "--grace", "2"]
    if metrics:
        argv += ["--metrics-port", str(free_port())]
    spawn = time.time()
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        while int(counter.get("drain:done") or 0) < n:
            if proc.poll() is not None:
                raise SystemExit(f"worker exited with {proc.returncode}")
            if time.time() - spawn > 900:
                raise SystemExit("drain timed out")
            time.sleep(0.02)
        last = float(counter.get("drain:last") or time.time())
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    return n / (last - spawn)


class Tock(Message):
    i: int


async def drain_in_process(
    url: str, n: int, concurrency: int, metrics: bool
) -> tuple[float, float]:
    """Drain n queued jobs with a Worker in this process; returns (jobs/s, CPU µs per job)."""
    app = App("inproc", url=url)
    app.message("bench.inproc", queue="inproc")(Tock)
    ran = 0
    done = asyncio.Event()

    @app.handles(Tock)
    async def tock(msg: Tock, ctx: Context) -> None:
        nonlocal ran
        ran += 1
        if ran == n:
            done.set()

    if metrics:
        app.metrics = Metrics()
    async with app:
        for first in range(0, n, 10_000):
            await app.enqueue_many([Tock(i=i) for i in range(first, min(n, first + 10_000))])
        worker = Worker(app, concurrency=concurrency)
        cpu, wall = time.process_time(), time.perf_counter()
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(done.wait(), 900)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        worker.request_stop()
        await task
    return n / wall, cpu / n * 1e6


def hook_cost_ns(rounds: int = 200_000) -> tuple[float, float]:
    """CPU ns of the hooks one job goes through (start, end with run time), on and off."""
    from offload.metrics import NO_METRICS, Metrics

    costs = []
    for metrics in (NO_METRICS, Metrics()):
        start = time.perf_counter()
        for _ in range(rounds):
            metrics.started("drain", 0.01)
            metrics.ended("bench.drain", "drain", "succeeded", 0.001)
        costs.append((time.perf_counter() - start) / rounds * 1e9)
    return costs[0], costs[1]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backends", default="sqlite,postgres,redis")
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()
    ensure_counter()
    load_before = os.getloadavg()[0]
    rates: dict[str, dict[bool, list[float]]] = {}
    inproc: dict[str, dict[bool, list[tuple[float, float]]]] = {}
    with Progress(console=console, transient=True) as progress:
        for name in args.backends.split(","):
            rates[name] = {False: [], True: []}
            inproc[name] = {False: [], True: []}
            for round_ in range(args.rounds):
                order = (False, True) if round_ % 2 == 0 else (True, False)
                for metrics in order:
                    url = await fresh_backend(name)
                    await load(url, args.jobs, progress, f"{name} x{args.jobs:,}")
                    rate = drain(url, args.jobs, args.concurrency, metrics)
                    rates[name][metrics].append(rate)
                    await cleanup(name, url)
                    url = await fresh_backend(name)
                    figures = await drain_in_process(url, args.jobs, args.concurrency, metrics)
                    inproc[name][metrics].append(figures)
                    await cleanup(name, url)
                    console.print(
                        f"{name} metrics {'on' if metrics else 'off'}: {rate:,.0f}/s; in "
                        f"process {figures[0]:,.0f}/s, {figures[1]:,.0f} µs CPU per job"
                    )
    loads = (load_before, os.getloadavg()[0])
    write_report(args, rates, inproc, hook_cost_ns(), loads)


def write_report(
    args: argparse.Namespace,
    rates: dict[str, dict[bool, list[float]]],
    inproc: dict[str, dict[bool, list[tuple[float, float]]]],
    hooks: tuple[float, float],
    loads: tuple[float, float],
) -> None:
    lines = [
        "## Drain throughput with metrics on and off (`make bench-metrics`)",
        "",
        f"{args.jobs:,} no-op jobs queued in bulk, drained by one `offload worker "
        f"--concurrency {args.concurrency}` process, without and with `--metrics-port` "
        f"(every job counted); {args.rounds} rounds, alternating which goes first. Median "
        "jobs/s (each round's figures in brackets); ratio = on / off.",
        "",
        "| backend | metrics off | metrics on | ratio |",
        "|---|---|---|---|",
    ]
    for name, by in rates.items():
        off, on = statistics.median(by[False]), statistics.median(by[True])
        shown = [" · ".join(fmt(r) for r in by[m]) for m in (False, True)]
        lines.append(
            f"| {name} | {fmt(off)} ({shown[0]}) | {fmt(on)} ({shown[1]}) | {on / off:.2f}x |"
        )
    lines += [
        "",
        "In process (a `Worker` on the benchmark's loop, same rounds): median jobs/s, and the "
        "median CPU time the process spent per job (less disturbed by other load than wall "
        "time).",
        "",
        "| backend | off jobs/s | on jobs/s | ratio | off CPU µs/job | on CPU µs/job | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, by in inproc.items():
        off_rate = statistics.median(r for r, _ in by[False])
        on_rate = statistics.median(r for r, _ in by[True])
        off_cpu = statistics.median(c for _, c in by[False])
        on_cpu = statistics.median(c for _, c in by[True])
        lines.append(
            f"| {name} | {fmt(off_rate)} | {fmt(on_rate)} | {on_rate / off_rate:.2f}x | "
            f"{off_cpu:,.0f} | {on_cpu:,.0f} | {on_cpu / off_cpu:.2f}x |"
        )
    lines += [
        "",
        f"The hooks one job goes through (its start and its end), timed in process: "
        f"{hooks[0]:,.0f} ns with metrics off, {hooks[1]:,.0f} ns with them on.",
        "",
        f"Load average at the start and the end of the run: {loads[0]:.1f} and {loads[1]:.1f} "
        f"on {os.cpu_count()} cores.",
    ]
    body = "\n".join(lines)
    print(body)
    write_section("metrics", body)


if __name__ == "__main__":
    asyncio.run(main())
