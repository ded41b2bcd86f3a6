"""What offload's tracing hooks cost on the hot path, on SQLite, in three set-ups:

    python bench/tracing.py [--jobs 3000] [--rounds 3]

- `no API`: `opentelemetry` cannot be imported (as without the `otel` extra),
- `API, no SDK`: the API alone, its proxy tracer provider global (the default),
- `SDK, in memory`: an SDK provider with a SimpleSpanProcessor and an InMemorySpanExporter.

Each round runs each set-up in a fresh process (which one goes first rotates): N single
`app.enqueue` calls (the web tier's path) and one in-process worker draining N no-op jobs
(the worker's path, one `process` span per job). Also timed: the hooks alone (`tracing.send` and
`tracing.process`, entered and left) with tracing off, against an empty `with` block.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from _results import write_section

TOP = Path(__file__).resolve().parent.parent
MODES = ("no API", "API, no SDK", "SDK, in memory")

CHILD = textwrap.dedent(
    """
    import sys
    if MODE == "no API":
        sys.modules["opentelemetry"] = None  # what a missing package is to `import`
    import asyncio, contextlib, json, time, timeit
    from offload import App, Context, Message, Settings, tracing
    from offload.worker.runner import Worker

    exporter = None
    if MODE == "SDK, in memory":
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)

    class Tick(Message):
        i: int

    app = App("bench", settings=Settings(url=f"sqlite:///{DB}", blobs_url=DB + ".blobs"))
    app.message("bench.tick", queue="ticks")(Tick)
    done = 0
    finished = None

    @app.handles(Tick)
    async def tick(msg: Tick, ctx: Context) -> None:
        global done
        done += 1
        if done == JOBS:
            finished.set()

    def hooks() -> dict:
        envelope = app.envelope(Tick(i=0))
        lease = type("L", (), {"envelope": envelope, "worker": "w"})()
        def send():
            with tracing.send([envelope]):
                pass
        def process():
            with tracing.process(lease):
                pass
        def empty():
            with contextlib.nullcontext():
                pass
        n, best = 100_000, {}
        for _ in range(7):  # interleaved, so drift in the machine's speed hits all three
            for name, fn in (("send", send), ("process", process), ("empty", empty)):
                took = timeit.timeit(fn, number=n) / n * 1e9
                best[name] = min(best.get(name, took), took)
        return best

    async def main() -> dict:
        global finished
        finished = asyncio.Event()
        await app.open()
        await app.enqueue(Tick(i=-1))  # warm up: schema, statements
        await app.purge("ticks")
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(JOBS):
            await app.enqueue(Tick(i=i))
        enqueue_s, enqueue_cpu = time.perf_counter() - start, time.process_time() - cpu
        worker = Worker(app, concurrency=16)
        start, cpu = time.perf_counter(), time.process_time()
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(finished.wait(), 300)
        drain_s, drain_cpu = time.perf_counter() - start, time.process_time() - cpu
        worker.request_stop()
        await task
        await app.close()
        spans = len(exporter.get_finished_spans()) if exporter is not None else 0
        out = {"enqueue_per_s": JOBS / enqueue_s, "drain_per_s": JOBS / drain_s,
               "enqueue_cpu_us": enqueue_cpu / JOBS * 1e6, "drain_cpu_us": drain_cpu / JOBS * 1e6,
               "spans": spans, "active": tracing.active()}
        if MODE != "SDK, in memory":
            out["hooks_ns"] = hooks()
        return out

    print(json.dumps(asyncio.run(main())))
    """
)


def run(mode: str, jobs: int, folder: Path, n: int) -> dict[str, object]:
    db = folder / f"bench-{n}.db"
    prelude = f"MODE = {mode!r}\nJOBS = {jobs}\nDB = {str(db)!r}\n"
    env = {**os.environ, "PYTHONPATH": str(TOP / "src")}
    done = subprocess.run(
        [sys.executable, "-c", prelude + CHILD],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{mode}: {done.stderr}")
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    results: dict[str, list[dict[str, object]]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as folder:
        n = 0
        for r in range(args.rounds):
            for mode in MODES[r % 3 :] + MODES[: r % 3]:  # each set-up first in turn
                n += 1
                result = run(mode, args.jobs, Path(folder), n)
                results[mode].append(result)
                print(mode, result, flush=True)
    write_section("tracing", report(results, args.jobs, args.rounds))


def _rates(runs: list[dict[str, object]], key: str) -> list[float]:
    return [float(r[key]) for r in runs]  # type: ignore[arg-type]


def report(results: dict[str, list[dict[str, object]]], jobs: int, rounds: int) -> str:
    base = results["no API"]

    def med(runs: list[dict[str, object]], key: str) -> float:
        return statistics.median(_rates(runs, key))

    lines = [
        "## Tracing on the hot path (`bench/tracing.py`)",
        "",
        f"SQLite, {jobs:,} single `app.enqueue` calls, then one in-process worker "
        f"(concurrency 16) draining {jobs:,} no-op jobs; {rounds} rounds, each set-up in a "
        "fresh process, the order rotating. CPU µs per enqueue and per job (the process's CPU "
        "time, which other load on this shared machine disturbs less than wall time), medians, "
        "and the wall-clock rates of each round. Ratios are to `no API`, median to median.",
        "",
        "| set-up | CPU µs / enqueue | vs no API | CPU µs / job run | vs no API "
        "| enqueue/s (wall) | drain jobs/s (wall) | spans recorded |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        runs = results[mode]
        enq_cpu, drain_cpu = med(runs, "enqueue_cpu_us"), med(runs, "drain_cpu_us")
        enq, drain = _rates(runs, "enqueue_per_s"), _rates(runs, "drain_per_s")
        lines.append(
            f"| {mode} | {enq_cpu:.0f} | {enq_cpu / med(base, 'enqueue_cpu_us'):.2f}x "
            f"| {drain_cpu:.0f} | {drain_cpu / med(base, 'drain_cpu_us'):.2f}x "
            f"| {' · '.join(f'{v:,.0f}' for v in enq)} "
            f"| {' · '.join(f'{v:,.0f}' for v in drain)} | {runs[-1]['spans']} |"
        )
    lines += [
        "",
        "The hooks alone with tracing off (ns per `with` block, best of 7 × 100,000, "
        "interleaved; an empty `with nullcontext()` for reference):",
        "",
        "| set-up | `tracing.send` | `tracing.process` | empty `with` |",
        "|---|---|---|---|",
    ]
    best: dict[str, dict[str, float]] = {}
    for mode in MODES[:2]:
        hooks = [r["hooks_ns"] for r in results[mode]]
        best[mode] = {k: min(float(h[k]) for h in hooks) for k in ("send", "process", "empty")}  # type: ignore[index]
        b = best[mode]
        lines.append(f"| {mode} | {b['send']:.0f} | {b['process']:.0f} | {b['empty']:.0f} |")
    # What the hooks add per job with the API but no SDK, against the measured time per job.
    b = best["API, no SDK"]
    enqueue_ns = statistics.median(_rates(base, "enqueue_cpu_us")) * 1000
    job_ns = statistics.median(_rates(base, "drain_cpu_us")) * 1000
    send_ns, process_ns = b["send"] - b["empty"], b["process"] - b["empty"]
    drains = _rates(base, "drain_per_s")
    lines += [
        "",
        f"With the API but no SDK, `tracing.send` adds about {send_ns / 1000:.1f} µs to an "
        f"enqueue that takes {enqueue_ns / 1000:.0f} CPU µs here ({send_ns / enqueue_ns:.1%}), and "
        f"`tracing.process` about {process_ns / 1000:.1f} µs to a no-op job that takes "
        f"{job_ns / 1000:.0f} CPU µs of a worker ({process_ns / job_ns:.1%}); the no-API "
        f"drain rates alone spread from {min(drains):,.0f} to {max(drains):,.0f} jobs/s.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
