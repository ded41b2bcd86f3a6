"""The burst's clicks against the demo and against a bare Starlette route, alternating:
how much of an export's acknowledgement is offload's and how much the web stack's floor.

    python bench/burst_floor.py [--rounds 6] [--clicks 100]

Each round starts, in turn, `offload demo` (queued mode, one worker process, a new folder:
the first burst of a fresh demo; unlike `make bench-burst`, no home-page requests run before
or beside it) and a bare Starlette app served with the demo's uvicorn settings, whose route
reads the form and answers 202 with a fixed body the size of the demo's answer (beside it, a
health route for the readiness probe). Each gets the burst's clicks from the same separate
process (`offload.bench.clicks`: a new connection per click, all sent at once) once it and
its workers have started up (half a second with almost no CPU), then is stopped. The figures
are the acknowledgements' p50 and p99 and the server process's CPU per click (the demo's
worker processes not counted), per round.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from _results import percentile, rounds_rows, write_section
from api_latency import wait_ready
from cputime import tree_seconds

from offload.bench.burst import Clicks, Run, _demo, _free_port, _sign_in

#: What the bare route answers: about the size of the demo's answer to a click.
BODY = {"id": "0193a1c2-0000-7000-8000-000000000000", "state": "queued", "html": "x" * 1200}


def serve(port: int) -> None:
    """The bare app, served as `offload demo` serves its site (uvicorn's defaults)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from offload._loop import run

    async def click(request: Request) -> Response:
        await request.form()
        headers = {"Location": f"/v1/jobs/{BODY['id']}"}
        return JSONResponse(BODY, status_code=202, headers=headers)

    async def healthz(request: Request) -> Response:  # for the readiness probe only
        return Response(status_code=204)

    app = Starlette(routes=[Route("/reports", click, methods=["POST"]), Route("/healthz", healthz)])
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off"
    )
    run(uvicorn.Server(config).serve)


@contextlib.asynccontextmanager
async def _bare() -> AsyncIterator[tuple[str, subprocess.Popen[bytes]]]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    try:
        await asyncio.to_thread(wait_ready, port, "/healthz", proc)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def _cpu_s(pid: int) -> float:
    """CPU seconds of one process's threads (not its children), to the nanosecond."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


async def _settled(pid: int, timeout: float = 60.0) -> None:
    """Until the server and its workers have started up: half a second using under a
    twentieth of a core."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = tree_seconds([pid])
        await asyncio.sleep(0.5)
        if tree_seconds([pid]) - before < 0.025:
            return
    raise RuntimeError(f"process {pid} kept busy for {timeout:.0f} s")


async def _burst(
    base: str, pid: int, clickers: list[tuple[httpx.AsyncClient, str]], n: int
) -> tuple[float, float, float]:
    """Ack p50 and p99 (ms) of one burst, and the server's CPU per click (ms)."""
    clicks = await Clicks.ready(base, clickers, n)
    try:
        await _settled(pid)
        run = Run("floor")
        before = _cpu_s(pid)
        await clicks.go(run)
        await asyncio.sleep(0.2)  # the last answers' close and clean-up
        cpu_ms = (_cpu_s(pid) - before) * 1000 / n
    finally:
        await clicks.close()
    if run.ack_errors:
        raise RuntimeError(f"{run.ack_errors} of {n} clicks failed against {base}")
    return percentile(run.acks, 0.5), percentile(run.acks, 0.99), cpu_ms


async def measure(rounds: int, n: int) -> dict[str, list[tuple[float, float, float]]]:
    runs: dict[str, list[tuple[float, float, float]]] = {"offload demo (queued)": [], "bare": []}
    clickers: list[tuple[httpx.AsyncClient, str]] = []
    with tempfile.TemporaryDirectory(prefix="offload-burst-floor-") as tmp:

        async def demo(i: int) -> None:
            nonlocal clickers
            folder = Path(tmp) / str(i)
            folder.mkdir()
            async with _demo("queued", folder, 0.2, 1) as (base, proc):
                for client, _ in clickers:
                    await client.aclose()
                clickers = [await _sign_in(base, user) for user in ("alice", "bob")]
                runs["offload demo (queued)"].append(await _burst(base, proc.pid, clickers, n))

        async def bare() -> None:
            async with _bare() as (base, proc):  # the cookies are the demo's: it reads none
                runs["bare"].append(await _burst(base, proc.pid, clickers, n))

        try:
            for i in range(rounds):
                if i % 2 == 0:
                    await demo(i)
                    await bare()
                else:
                    await bare()
                    await demo(i)
                for name, figures in runs.items():
                    p50, p99, cpu = figures[-1]
                    print(f"round {i + 1}: {name}: ack p50 {p50:.1f} p99 {p99:.1f} ms, "
                          f"{cpu:.2f} ms CPU per click", flush=True)  # fmt: skip
        finally:
            for client, _ in clickers:
                await client.aclose()
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--clicks", type=int, default=100)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    runs = asyncio.run(measure(args.rounds, args.clicks))
    lines = [
        "## The burst's acknowledgements against a bare route (`bench/burst_floor.py`)",
        "",
        f"{args.clicks} concurrent clicks, each on a new connection from a process of their "
        f"own (the burst's), rounds alternating ({args.rounds}): `offload demo` in queued mode "
        "(a fresh demo each round, one worker process, started up) and a bare Starlette "
        "route that reads the form and answers 202 with a fixed body of the same size, "
        "served with the same uvicorn settings. CPU is the server process's (the demo's "
        "workers not counted), per click. Figures per round.",
        "",
        "| server | ack p50 ms | ack p99 ms | CPU per click ms |",
        "|---|---|---|---|",
        *rounds_rows(runs, [(0, ".1f"), (1, ".1f"), (2, ".2f")]),
    ]
    body = "\n".join(lines)
    print(body)
    write_section("burst-floor", body)


if __name__ == "__main__":
    main()
