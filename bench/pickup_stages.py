"""Where a job's pickup time goes, per engine: from the enqueue call to its handler's start.

    python bench/pickup_stages.py [--backends sqlite,postgres,redis] [--rate 50]
                                  [--seconds 6] [--no-write]

One `offload worker --concurrency 10` process (`bench/pickup_app.py`) on a fresh backend,
warmed up, and a producer in this process enqueuing one job at a time at `--rate` jobs/s
(the peer harness's latency phase). Each job carries its enqueue call's start; the worker
stamps when its wait for work returned, when a claim handed it leases and when the handler
began (see pickup_app.py). Per job:

- **enqueue call**: the producer's `app.enqueue` (what a web request pays);
- **to wake-up**: call start → the worker's wait returned (the commit, and the wake-up's
  way: NOTIFY, or SQLite's change poll; on Redis a blocked BLPOP whose claim comes back
  with it, `wait_and_claim`, so this stage holds the claim's round trip there);
- **claim**: wake-up → the claim returned the job (on Redis only the worker's own step);
- **to handler**: claim → handler start (dispatch in the worker);
- **total**: call start → handler start (the harness's "latency").

A job that arrived while the worker was not waiting (it woke before the call began) counts
in the total only; the table says how many did.

PICKUP_WORKER_LOG=path keeps the worker's output.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import fmt, percentile, write_section
from enqueue import fresh_url

HERE = Path(__file__).resolve().parent
STAGES = ("enqueue call", "to wake-up", "claim", "to handler", "total")


async def produce(url: str, rate: float, seconds: float, out: Path) -> dict[int, float]:
    """Pace jobs at `rate` for `seconds` (after 20 warm-up jobs); the call time of each."""
    import pickup_app

    app = pickup_app.make_app(url)
    await app.open()
    calls: dict[int, float] = {}
    try:
        await app.enqueue(pickup_app.Probe(i=-100, t=time.time()))
        await _handled(out, 1, deadline_s=60.0)  # the worker is up and has run a job
        loop = asyncio.get_running_loop()
        n = int(rate * seconds)
        start = loop.time()
        for i in range(-20, n):
            due = start + (i + 20) / rate
            await asyncio.sleep(max(0.0, due - loop.time()))
            t0 = time.time()
            await app.enqueue(pickup_app.Probe(i=i, t=t0))
            calls[i] = time.time() - t0
        await _handled(out, n + 21, deadline_s=30.0)
    finally:
        await app.close()
    return calls


async def _handled(out: Path, n: int, deadline_s: float) -> None:
    async with asyncio.timeout(deadline_s):
        while len(out.read_text().splitlines()) < n:  # noqa: ASYNC110 (another process writes)
            await asyncio.sleep(0.05)


async def _made(url: str) -> None:
    """Make the store before the worker starts (the SQLite file: not two makers at once)."""
    from offload import App, Settings

    async with App("pickup-setup", settings=Settings(url=url)):
        pass


def run(name: str, rate: float, seconds: float) -> tuple[dict[str, list[float]], int]:
    """The stage durations (ms) of every measured job on engine `name`, and how many jobs
    came while the worker was not waiting (see `stages`)."""

    async def main() -> tuple[dict[str, list[float]], int]:
        async with fresh_url(name) as url:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "stamps.jsonl"
                out.touch()
                env = {**os.environ, "OFFLOAD_URL": url, "PICKUP_OUT": str(out)}
                env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
                env["OFFLOAD_BLOBS_URL"] = f"file://{tmp}/blobs"
                log = open(os.environ.get("PICKUP_WORKER_LOG", os.devnull), "a")  # noqa: ASYNC230
                await _made(url)
                worker = subprocess.Popen(
                    [sys.executable, "-m", "offload", "worker", "--app", "pickup_app:app",
                     "--concurrency", "10", "--grace", "1"],
                    env=env, stdout=subprocess.DEVNULL, stderr=log,
                )  # fmt: skip
                try:
                    calls = await produce(url, rate, seconds, out)
                finally:
                    worker.send_signal(signal.SIGTERM)
                    await asyncio.to_thread(worker.wait, 30)
                    log.close()
                rows = [json.loads(line) for line in out.read_text().splitlines()]
        return stages(rows, calls)

    return asyncio.run(main())


def stages(
    rows: list[dict[str, float]], calls: dict[int, float]
) -> tuple[dict[str, list[float]], int]:
    got: dict[str, list[float]] = {s: [] for s in STAGES}
    busy = 0
    for r in rows:
        if r["i"] < 0:
            continue
        t = r["t"]
        got["enqueue call"].append(calls[int(r["i"])] * 1e3)
        got["total"].append((r["handler"] - t) * 1e3)
        if r["woke"] < t or r["held"] < r["woke"]:
            busy += 1  # not waiting when it came: its stages are not its own
            continue
        got["to wake-up"].append((r["woke"] - t) * 1e3)
        got["claim"].append((r["held"] - r["woke"]) * 1e3)
        got["to handler"].append((r["handler"] - r["held"]) * 1e3)
    return got, busy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backends", default="sqlite,postgres,redis")
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    rows = [
        "| engine | jobs | " + " | ".join(f"{s} p50 / p99 ms" for s in STAGES) + " |",
        "|---|---|" + "---|" * len(STAGES),
    ]
    for name in args.backends.split(","):
        got, busy = run(name, args.rate, args.seconds)
        cells = []
        for s in STAGES:
            xs = got[s]
            cells.append(
                f"{fmt(percentile(xs, 0.5), 2)} / {fmt(percentile(xs, 0.99), 2)}" if xs else "–"
            )
        rows.append(f"| {name} | {len(got['total'])} ({busy} not waiting) | "
                    + " | ".join(cells) + " |")  # fmt: skip
        print(rows[-1], flush=True)
    table = "\n".join(rows)
    print(table)
    if not args.no_write:
        note = (
            "## Where pickup time goes (`make bench-pickup`)\n\n"
            f"One worker (`--concurrency 10`), one producer pacing {args.rate:g} jobs/s for "
            f"{args.seconds:g} s after 20 warm-up jobs (the peer harness's latency phase), "
            "one call at a time. Stages per job, from stamps the worker takes (see "
            "`bench/pickup_stages.py`): the enqueue call; call start → the worker's wait for "
            "work returned (on Redis with its claim: a blocked BLPOP, the claim sent behind "
            "it); → a claim returned the job; → its handler began; total (call "
            "start → handler, the harness's latency). Jobs that came while the worker was not "
            "waiting count in the call and total only.\n\n"
        )
        write_section("pickup-stages", note + table)


if __name__ == "__main__":
    main()
