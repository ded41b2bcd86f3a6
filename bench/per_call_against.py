"""One enqueue at a time, this checkout against another commit, alternating.

    .venv/bin/python bench/per_call_against.py --against REV [--backends redis,sqlite]
                                               [--calls 10000] [--rounds 3] [--bulk N]

REV is checked out in a temporary git worktree. Each round runs, for every backend, a
process of this checkout's environment that imports offload from REV's source and one that
imports it from this checkout's (PYTHONPATH), in alternating order; each makes `--calls`
calls of `await app.enqueue(...)`, then as many of `app.enqueue_sync(...)` from a thread
(synchronous code's way), one at a time after a warm-up, and reports calls/s and its own
CPU per call. `--bulk N` adds `await app.enqueue_many(...)` of N jobs at once (three
batches after a warm-up one; the median batch's jobs/s and CPU per job), the peer
harness's bulk; `--calls 0` leaves out the calls one at a time. Prints the table; writes
nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from worker_cost import children_against


async def calls(url: str, n: int, bulk: int) -> dict[str, tuple[float, float]]:
    """In the child: (calls/s, CPU µs per call) of enqueue and enqueue_sync on `url` (none
    for `n` 0), and (jobs/s, CPU µs per job) of enqueue_many of `bulk` jobs (none for 0)."""
    from offload import App, Message, Settings

    class Noop(Message):
        i: int

    app = App("per-call", settings=Settings(url=url))
    app.message("bench.per_call", queue="per-call")(Noop)
    out: dict[str, tuple[float, float]] = {}
    async with app:
        if bulk:
            batches = []
            for _ in range(4):
                began, cpu = time.perf_counter(), time.process_time()
                await app.enqueue_many([Noop(i=i) for i in range(bulk)])
                batches.append(_rates(bulk, began, cpu))
            out[f"enqueue_many ({bulk:,})"] = sorted(batches[1:])[1]
        if not n:
            return out
        for i in range(500):
            await app.enqueue(Noop(i=i))
        began, cpu = time.perf_counter(), time.process_time()
        for i in range(n):
            await app.enqueue(Noop(i=i))
        out["enqueue"] = _rates(n, began, cpu)

        def blocking(k: int) -> tuple[float, float]:
            for i in range(500):
                app.enqueue_sync(Noop(i=i))
            began, cpu = time.perf_counter(), time.process_time()
            for i in range(k):
                app.enqueue_sync(Noop(i=i))
            return _rates(k, began, cpu)

        out["enqueue_sync"] = await asyncio.to_thread(blocking, n)
    return out


def _rates(n: int, began: float, cpu: float) -> tuple[float, float]:
    return n / (time.perf_counter() - began), (time.process_time() - cpu) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--against", help="the commit to compare with (required)")
    ap.add_argument("--backends", default="redis,sqlite")
    ap.add_argument("--calls", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bulk", type=int, default=0)
    ap.add_argument("--child", nargs=3, metavar=("URL", "CALLS", "BULK"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        url, n, bulk = args.child
        print(json.dumps(asyncio.run(calls(url, int(n), int(bulk)))))
        return
    if not args.against:
        ap.error("--against REV is required")
    figures: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    # A fresh store per run (as bench/drain.py makes them), emptied after.
    runs = children_against(
        args.against, args.backends, args.rounds, __file__, str(args.calls), str(args.bulk)
    )
    for backend, name, line in runs:
        for call, rates in json.loads(line).items():
            figures.setdefault((backend, call, name), []).append(tuple(rates))
    print(f"\n{args.calls:,} calls one at a time per case, {args.rounds} rounds alternating\n")
    print("| backend | call | code | calls (jobs)/s (rounds) | CPU µs per call (job) (rounds) |")
    print("|---|---|---|---|---|")
    for (backend, call, name), runs in sorted(figures.items()):
        rates = " / ".join(f"{c:,.0f}" for c, _ in runs)
        cost = " / ".join(f"{u:.0f}" for _, u in runs)
        print(f"| {backend} | `{call}` | {name} | {rates} | {cost} |")


if __name__ == "__main__":
    main()
