"""`POST /v1/jobs/{kind}` latency at a steady request rate on the embedded default (SQLite).

    python bench/api_latency.py [--rate 200] [--seconds 10] [--with-worker]

Starts `offload web` (and, with --with-worker, `offload worker`) on a fresh SQLite file with
the five-minute tour's app (examples/quickstart), then sends a paced stream of job
submissions over keep-alive HTTP and reports p50/p90/p99/max. The reference in the same
run: `GET /healthz` at the same rate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from _results import percentile as pct
from _results import write_section

TOP = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def paced(
    client: httpx.AsyncClient,
    rate: float,
    seconds: float,
    method: str,
    path: str,
    body: bytes | None,
) -> tuple[list[float], int]:
    """Fire requests at `rate`/s (each on its own task, so a slow one doesn't delay the next)."""
    latencies: list[float] = []
    errors = 0
    headers = {"Content-Type": "application/json"} if body is not None else None

    async def one() -> None:
        nonlocal errors
        start = time.perf_counter()
        try:
            response = await client.request(method, path, content=body, headers=headers)
            if response.status_code >= 400:
                errors += 1
        except httpx.HTTPError:
            errors += 1
            return
        latencies.append((time.perf_counter() - start) * 1000)

    tasks = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    return latencies, errors


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--with-worker", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="offload-api-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")}
    env.update(
        OFFLOAD_URL=f"sqlite:///{work / 'jobs.db'}",
        OFFLOAD_BLOBS_URL=str(work / "blobs"),
        PYTHONPATH=str(TOP / "examples" / "quickstart"),
    )
    offload = str(TOP / ".venv/bin/offload")
    procs = [
        subprocess.Popen(
            [offload, "web", "--app", "myproj.contracts:app", "--port", str(port)],
            env=env,
            cwd=work,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    if args.with_worker:
        procs.append(
            subprocess.Popen(
                [offload, "worker", "--app", "myproj.worker:app"],
                env=env,
                cwd=work,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(
            base_url=base, timeout=10, limits=httpx.Limits(max_connections=64)
        ) as client:
            for _ in range(100):
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            await paced(client, args.rate, 1.0, "GET", "/healthz", None)  # warm-up
            body = b'{"period": "2026-10"}'
            await paced(client, args.rate, 1.0, "POST", "/v1/jobs/reports.export", body)
            health, health_err = await paced(
                client, args.rate, args.seconds, "GET", "/healthz", None
            )
            posts, post_err = await paced(
                client, args.rate, args.seconds, "POST", "/v1/jobs/reports.export", body
            )
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(20)
    rows = [
        ("POST /v1/jobs/reports.export", posts, post_err),
        ("GET /healthz (reference)", health, health_err),
    ]
    during = " (a worker draining meanwhile)" if args.with_worker else ""
    lines = [
        "## Submission latency on the embedded default (`make bench-api`)",
        "",
        f"`offload web` on SQLite, {args.rate:g} requests/s for {args.seconds:g} s over "
        f"keep-alive HTTP from one client process{during}. "
        "Target: POST p99 under 5 ms.",
        "",
        "| request | n | errors | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, values, errors in rows:
        lines.append(
            f"| {label} | {len(values)} | {errors} | {pct(values, 0.5):.2f} | "
            f"{pct(values, 0.9):.2f} | {pct(values, 0.99):.2f} | {max(values):.2f} |"
        )
    p99_post, p99_health = pct(posts, 0.99), pct(health, 0.99)
    lines += [
        "",
        f"POST p99 / target 5 ms = {p99_post / 5:.2f}; POST p99 / healthz p99 = "
        f"{p99_post / p99_health:.2f}.",
    ]
    body_md = "\n".join(lines)
    print(body_md)
    write_section("api" + ("-worker" if args.with_worker else ""), body_md)


if __name__ == "__main__":
    asyncio.run(main())
