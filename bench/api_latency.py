"""`POST /v1/jobs/{kind}` on the embedded default (SQLite): throughput and latency, beside a
bare FastAPI route in the same run.

    python bench/api_latency.py [--rate 200] [--seconds 10] [--rounds 3] [--connections 16]
                                [--with-worker] [--no-throughput]

Starts `offload web` (and, with --with-worker, `offload worker`) on a fresh SQLite file with
the five-minute tour's app (examples/quickstart), and the reference: a FastAPI app whose
`POST /v1/jobs/{kind}` answers 202 with a fixed body (bench/api_reference.py), served with
the same uvicorn settings. The load comes from another process (bench/_load.py):

- throughput: closed loop, `--connections` keep-alive connections, the two servers in turn
  for `--rounds` rounds (so both see the same machine); the ratio of the medians.
- latency: open loop at `--rate` requests/s; p50/p90/p99/max of the job submission, of the
  reference route and of `GET /healthz`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _results import percentile as pct
from _results import write_section

TOP = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
#: The job submission both servers are sent (the caller's principal fills `user_id`).
BODY = '{"period": "2026-10"}'
PATH = "/v1/jobs/reports.export"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, path: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on {port} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on {port} not ready")


def load(*args: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, str(HERE / "_load.py"), *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, object] = json.loads(out)
    return result


def closed(port: int, connections: int, seconds: float) -> float:
    out = load(
        "closed", "--port", str(port), "--path", PATH, "--body", BODY,
        "--connections", str(connections), "--seconds", str(seconds),
    )  # fmt: skip
    if out["errors"]:
        raise RuntimeError(f"{out['errors']} errors on port {port}")
    return float(out["requests"]) / float(out["seconds"])  # type: ignore[arg-type]


def opened(
    port: int, method: str, path: str, rate: float, seconds: float
) -> tuple[list[float], int]:
    body = ["--body", BODY] if method == "POST" else []
    out = load(
        "open", "--port", str(port), "--method", method, "--path", path, *body,
        "--rate", str(rate), "--seconds", str(seconds),
    )  # fmt: skip
    return list(out["latencies_ms"]), int(out["errors"])  # type: ignore[call-overload]


def start(args: argparse.Namespace, work: Path) -> tuple[list[subprocess.Popen[bytes]], int, int]:
    offload_port, ref_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")}
    paths = [str(TOP / "examples" / "quickstart"), env.get("PYTHONPATH", "")]
    env.update(
        OFFLOAD_URL=f"sqlite:///{work / 'jobs.db'}",
        OFFLOAD_BLOBS_URL=str(work / "blobs"),
        PYTHONPATH=os.pathsep.join(p for p in paths if p),
    )
    quiet = {"env": env, "cwd": work, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    offload = [sys.executable, "-m", "offload"]
    web = [*offload, "web", "--app", "myproj.contracts:app", "--port", str(offload_port)]
    # BENCH_API_LOG=FILE keeps the web process's output (its log lines, an error's cause).
    log = os.environ.get("BENCH_API_LOG")
    shown = {**quiet, "stdout": open(log, "ab"), "stderr": subprocess.STDOUT} if log else quiet
    procs = [
        subprocess.Popen(web, **shown),  # type: ignore[call-overload]
        subprocess.Popen(  # type: ignore[call-overload]
            [sys.executable, str(HERE / "api_reference.py"), str(ref_port)], **quiet
        ),
    ]
    if args.with_worker:
        worker = [*offload, "worker", "--app", "myproj.worker:app"]
        procs.append(subprocess.Popen(worker, **quiet))  # type: ignore[call-overload]
    wait_ready(offload_port, "/readyz", procs[0])
    wait_ready(ref_port, "/openapi.json", procs[1])
    return procs, offload_port, ref_port


def row(label: str, values: list[float], errors: int) -> str:
    return (
        f"| {label} | {len(values)} | {errors} | {pct(values, 0.5):.2f} | "
        f"{pct(values, 0.9):.2f} | {pct(values, 0.99):.2f} | {max(values):.2f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--throughput-seconds", type=float, default=5.0)
    ap.add_argument("--no-throughput", action="store_true")
    ap.add_argument("--with-worker", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="offload-api-"))
    procs, port, ref = start(args, work)
    offload_rps: list[float] = []
    ref_rps: list[float] = []
    try:
        for p in (port, ref):  # warm-up: imports, caches, the first SQLite pages
            closed(p, 4, 1.0)
        if not args.no_throughput:
            for _ in range(args.rounds):
                offload_rps.append(closed(port, args.connections, args.throughput_seconds))
                ref_rps.append(closed(ref, args.connections, args.throughput_seconds))
        health = opened(port, "GET", "/healthz", args.rate, args.seconds)
        reference = opened(ref, "POST", PATH, args.rate, args.seconds)
        posts = opened(port, "POST", PATH, args.rate, args.seconds)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(20)
    during = " (a worker draining meanwhile)" if args.with_worker else ""
    lines = [
        "## The web tier on the embedded default (`make bench-api`)",
        "",
        f"One `offload web` process on SQLite and, in the same run, the reference: a bare "
        f"FastAPI route answering 202 with a fixed body (bench/api_reference.py), under the "
        f"same uvicorn settings{during}. Load from a separate process over keep-alive "
        f"HTTP/1.1 (bench/_load.py).",
    ]
    if offload_rps:
        ratio = statistics.median(offload_rps) / statistics.median(ref_rps)
        each = ", ".join(f"{o:,.0f} / {r:,.0f}" for o, r in zip(offload_rps, ref_rps, strict=True))
        lines += [
            "",
            f"Throughput, closed loop, {args.connections} connections, "
            f"{args.throughput_seconds:g} s per round, the two in turn ({args.rounds} rounds):",
            "",
            "| server | median requests/s | rounds (offload / reference) |",
            "|---|---|---|",
            f"| `POST {PATH}` (offload) | {statistics.median(offload_rps):,.0f} | {each} |",
            f"| bare FastAPI 202 (reference) | {statistics.median(ref_rps):,.0f} | |",
            "",
            f"offload / reference = **{ratio:.2f}×** (target ≥ 0.5×).",
        ]
    lines += [
        "",
        f"Latency, open loop, {args.rate:g} requests/s for {args.seconds:g} s "
        "(timed from each request's scheduled start). Target: POST p99 under 5 ms.",
        "",
        "| request | n | errors | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|",
        row(f"POST {PATH}", *posts),
        row("bare FastAPI 202 (reference)", *reference),
        row("GET /healthz", *health),
        "",
        f"POST p99 / target 5 ms = {pct(posts[0], 0.99) / 5:.2f}.",
    ]
    body_md = "\n".join(lines)
    print(body_md)
    write_section("api" + ("-worker" if args.with_worker else ""), body_md)


if __name__ == "__main__":
    main()
