"""`offload bench burst`: the burst this pattern exists for, queued mode against inline mode.

Starts the reference application (`offload demo`) once in inline mode and once in queued
mode. In each, a steady stream of home-page requests (a signed-in user's reports page) runs
while a burst of concurrent "Export my report" clicks arrives; the home page's latency is the
figure of merit. Queued mode answers each click at once and leaves the work to the worker;
inline mode renders the report inside the request, as a site without a queue would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import orjson
from rich.console import Console
from rich.progress import Progress

from .chart import latency_chart
from .results import fmt, percentile, write_section

console = Console(stderr=True)
#: A home-page request slower than this counts as a timeout (seconds).
DEFAULT_TIMEOUT_S = 10.0


@dataclass
class Run:
    """What one mode measured."""

    mode: str
    idle: list[float] = field(default_factory=list)
    home: list[tuple[float, float]] = field(default_factory=list)  # (t, ms); NaN = failed
    acks: list[float] = field(default_factory=list)
    ack_errors: int = 0
    burst_at: float = 0.0
    drain_s: float | None = None

    @property
    def home_ok(self) -> list[float]:
        return [ms for t, ms in self.home if ms == ms and t >= self.burst_at]

    @property
    def home_errors(self) -> int:
        return sum(1 for _, ms in self.home if ms != ms)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(argv: list[str], log_path: Path) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """Start the demo in its own session (its workers die with it), output to a log file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")}
    log = log_path.open("wb")
    proc = subprocess.Popen(
        argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    return proc, log


@contextlib.asynccontextmanager
async def _demo(
    mode: str, folder: Path, pace: float, workers: int
) -> AsyncIterator[tuple[str, subprocess.Popen[bytes]]]:
    port = _free_port()
    argv = [
        sys.executable,
        "-m",
        "offload",
        "demo",
        "--port",
        str(port),
        "--dir",
        str(folder / mode),
        "--pace",
        str(pace),
        "--workers",
        str(workers),
    ]
    if mode == "inline":
        argv.append("--inline")
    proc, log = _spawn(argv, folder / f"{mode}.log")
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base) as probe:
            for _ in range(300):
                if proc.poll() is not None:
                    raise RuntimeError(f"offload demo exited; see {folder / f'{mode}.log'}")
                with contextlib.suppress(httpx.TransportError):
                    if (await probe.get("/login")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
        yield base, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


async def _sign_in(base: str, user: str) -> tuple[httpx.AsyncClient, str]:
    client = httpx.AsyncClient(
        base_url=base, timeout=DEFAULT_TIMEOUT_S * 6, limits=httpx.Limits(max_connections=200)
    )
    await client.post("/login", data={"user": user})
    page = await client.get("/reports")
    found = re.search(r'data-csrf="([^"]+)"', page.text)
    if not found:
        raise RuntimeError(f"no CSRF token on /reports for {user} ({page.status_code})")
    return client, found.group(1)


async def _home_stream(
    client: httpx.AsyncClient,
    rate: float,
    seconds: float,
    start: float,
    out: list[tuple[float, float]],
) -> None:
    async def one(at: float) -> None:
        begin = time.perf_counter()
        try:
            response = await client.get("/reports", timeout=DEFAULT_TIMEOUT_S)
            ok = response.status_code == 200
        except httpx.HTTPError:
            ok = False
        ms = (time.perf_counter() - begin) * 1000
        out.append((at, ms if ok else float("nan")))

    tasks = []
    for i in range(int(rate * seconds)):
        at = i / rate
        delay = start + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(at)))
    await asyncio.gather(*tasks)


class Clicks:
    """The burst's clicks, in a process of their own (`offload.bench.clicks`): ready to send,
    then sent at once on `go`."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def ready(cls, base: str, clients: list[tuple[httpx.AsyncClient, str]], n: int) -> Clicks:
        spec = {
            "port": int(base.rsplit(":", 1)[1]),
            "path": "/reports",
            "timeout": DEFAULT_TIMEOUT_S * 6,
            "clicks": [
                {
                    "cookie": "; ".join(f"{c.name}={c.value}" for c in client.cookies.jar),
                    "csrf": csrf,
                }
                for client, csrf in (clients[i % len(clients)] for i in range(n))
            ],
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "offload.bench.clicks",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(orjson.dumps(spec) + b"\n")
        await proc.stdin.drain()
        if (await proc.stdout.readline()).strip() != b"ready":
            raise RuntimeError("the clicks process did not start")
        return cls(proc)

    async def go(self, run: Run) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"go\n")
        await self.proc.stdin.drain()
        out = orjson.loads(await self.proc.stdout.readline())
        await self.proc.wait()
        run.acks.extend(out["acks_ms"])
        run.ack_errors += out["errors"]

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def _drained(base: str, timeout: float) -> float | None:
    """Seconds until the demo's queues are empty (queued mode), from now."""
    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=10) as api:
        while time.perf_counter() - start < timeout:
            stats = (await api.get("/v1/queues")).json()["queues"]
            if all(s["queued"] + s["running"] + s["scheduled"] == 0 for s in stats.values()):
                return time.perf_counter() - start
            await asyncio.sleep(0.25)
    return None


async def measure(
    mode: str,
    folder: Path,
    *,
    requests: int,
    rate: float,
    seconds: float,
    idle_s: float,
    pace: float,
    workers: int,
    progress: Progress,
) -> Run:
    run = Run(mode)
    task = progress.add_task(f"{mode}: starting", total=None)
    async with _demo(mode, folder, pace, workers) as (base, _proc):
        home, _ = await _sign_in(base, "carol")
        clickers = [await _sign_in(base, user) for user in ("alice", "bob")]
        clicks: Clicks | None = None
        try:
            progress.update(task, description=f"{mode}: idle home page")
            idle: list[tuple[float, float]] = []
            await _home_stream(home, rate, idle_s, time.perf_counter(), idle)
            run.idle = [ms for _, ms in idle if ms == ms]
            progress.update(task, description=f"{mode}: burst of {requests} exports")
            clicks = await Clicks.ready(base, clickers, requests)
            start = time.perf_counter()
            run.burst_at = 1.0
            stream = asyncio.create_task(_home_stream(home, rate, seconds, start, run.home))
            await asyncio.sleep(max(0.0, start + run.burst_at - time.perf_counter()))
            burst_started = time.perf_counter()
            await clicks.go(run)
            await stream
            if mode == "queued":
                progress.update(task, description=f"{mode}: waiting for the queue to drain")
                left = await _drained(base, 600)
                elapsed = time.perf_counter() - burst_started
                run.drain_s = None if left is None else elapsed
        finally:
            if clicks is not None:
                await clicks.close()
            await home.aclose()
            for client, _ in clickers:
                await client.aclose()
    progress.remove_task(task)
    return run


def report(
    runs: list[Run],
    *,
    requests: int,
    rate: float,
    seconds: float,
    pace: float,
    workers: int,
    chart: str,
) -> str:
    lines = [
        "## The burst (`offload bench burst`, `make bench-burst`)",
        "",
        f"The reference application in each mode; a signed-in user's reports page requested "
        f'{rate:g} times/s for {seconds:g} s, and {requests} concurrent "Export my report" '
        f"clicks 1 s in (report pace {pace:g} s per month, {workers} worker process(es) in "
        f"queued mode). The clicks come from a process of their own, each on a new "
        f"connection; the home page is requested from the measuring process. Home-page "
        f"figures cover the burst window; a request over "
        f"{DEFAULT_TIMEOUT_S:g} s counts as a timeout. Ratio = home p99 during the burst / "
        "home p99 idle, measured in the same run.",
        "",
        "| mode | home idle p99 ms | home p50 ms | home p99 ms | home max ms | p99 ratio | "
        "errors/timeouts | export ack p50 ms | ack p99 ms | ack errors | queue drained in s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        idle99 = percentile(r.idle, 0.99)
        ok = r.home_ok
        p99 = percentile(ok, 0.99)
        lines.append(
            f"| {r.mode} | {idle99:.1f} | {percentile(ok, 0.5):.1f} | {p99:.1f} | "
            f"{max(ok, default=float('nan')):.1f} | {p99 / idle99:.2f}x | {r.home_errors} | "
            f"{percentile(r.acks, 0.5):.1f} | {percentile(r.acks, 0.99):.1f} | {r.ack_errors} | "
            f"{fmt(r.drain_s, 1) if r.mode == 'queued' else 'n/a (done in the requests)'} |"
        )
    lines += ["", f"![home-page latency over time, both modes]({chart})"]
    return "\n".join(lines)


async def run_burst(
    *,
    requests: int = 100,
    rate: float = 20.0,
    seconds: float = 20.0,
    idle_s: float = 5.0,
    pace: float = 0.2,
    workers: int = 1,
    out: Path = Path("."),
    modes: tuple[str, ...] = ("inline", "queued"),
) -> str:
    """Run the burst in each mode; write the table to out/RESULTS.md and a PNG beside it."""
    folder = Path(tempfile.mkdtemp(prefix="offload-burst-"))
    runs = []
    with Progress(console=console, transient=True) as progress:
        for mode in modes:
            runs.append(
                await measure(
                    mode,
                    folder,
                    requests=requests,
                    rate=rate,
                    seconds=seconds,
                    idle_s=idle_s,
                    pace=pace,
                    workers=workers,
                    progress=progress,
                )
            )
    chart = out / "burst.png"
    latency_chart(
        chart,
        {f"{r.mode} mode": r.home for r in runs},
        title=f"Home-page latency while {requests} exports arrive at t=1s (x = error or timeout)",
        marks=[(1.0, "burst")],
    )
    body = report(
        runs,
        requests=requests,
        rate=rate,
        seconds=seconds,
        pace=pace,
        workers=workers,
        chart=chart.name,
    )
    write_section(out / "RESULTS.md", "burst", body)
    return body
