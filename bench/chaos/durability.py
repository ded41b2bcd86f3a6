"""What an engine restart costs: how long each kind keeps each engine away, and how many
acknowledged enqueues are missing after a crash under write load.

    python -m bench.chaos.durability [--tries 5] [--load 1.5] [--writers 16]

Each try: a fresh private engine (bench/chaos/engines.py), `--writers` concurrent offload
enqueues for `--load` seconds, the engine crashed while they write (`pg_ctl stop -m
immediate`, SIGKILL of redis-server), started again, and every acknowledged job looked up.
Then a fast and a crash restart of the loaded engine, timed from the stop until a new
connection is served. Prints one row per engine and setting.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from offload import App, Message
from offload.brokers import open_backend
from offload.errors import BackendError

from .engines import PrivatePostgres, PrivateRedis

#: The engines and settings measured.
ENGINES = ("postgres", "redis-everysec", "redis-always")


class Ping(Message):
    n: int = 0


@dataclass
class Figures:
    """One engine's measurements over every try."""

    kind: str
    acknowledged: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    fast_s: list[float] = field(default_factory=list)
    crash_s: list[float] = field(default_factory=list)


def make_engine(kind: str, root: Path) -> PrivatePostgres | PrivateRedis:
    if kind == "postgres":
        return PrivatePostgres(root)
    return PrivateRedis(root, appendfsync=kind.removeprefix("redis-"))


async def migrate(url: str) -> None:
    backend = open_backend(url)
    await backend.open(check_schema=False)
    try:
        await backend.migrate()
    finally:
        await backend.close()


async def crash_under_load(
    engine: PrivatePostgres | PrivateRedis, *, writers: int, load_s: float
) -> tuple[int, int]:
    """Enqueue from `writers` tasks, crash the engine while they write, start it again;
    returns (acknowledged enqueues, acknowledged ones missing after the restart)."""
    app = App("durability")
    app.message("durability.ping")(Ping)
    backend = open_backend(engine.url)
    await backend.open()
    acknowledged: list[str] = []
    crashed = asyncio.Event()

    async def write() -> None:
        while not crashed.is_set():
            envelope = app.envelope(Ping())
            try:
                await backend.enqueue([envelope])
            except BackendError:
                await asyncio.sleep(0.01)
                continue
            if not crashed.is_set():  # acknowledged before the crash: it must survive it
                acknowledged.append(envelope.id)

    tasks = [asyncio.create_task(write()) for _ in range(writers)]
    await asyncio.sleep(load_s)
    await asyncio.to_thread(engine.stop, crash=True)
    crashed.set()
    for task in tasks:  # a writer may wait on the pool for the server's return: no need
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await backend.close()
    await asyncio.to_thread(engine.start)
    return len(acknowledged), await count_missing(engine.url, acknowledged)


async def count_missing(url: str, job_ids: list[str]) -> int:
    backend = open_backend(url)
    await backend.open()
    try:
        return sum([await backend.get(job_id) is None for job_id in job_ids])
    finally:
        await backend.close()


def one_try(kind: str, figures: Figures, *, writers: int, load_s: float) -> None:
    with tempfile.TemporaryDirectory(prefix="offload-durability-") as root:
        with make_engine(kind, Path(root)) as engine:
            asyncio.run(migrate(engine.url))
            acked, missing = asyncio.run(crash_under_load(engine, writers=writers, load_s=load_s))
            figures.acknowledged.append(acked)
            figures.missing.append(missing)
            figures.fast_s.append(engine.restart(crash=False))
            figures.crash_s.append(engine.restart(crash=True))


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s (max {max(values):.2f})"


def report(all_figures: list[Figures]) -> str:
    rows = [
        "| engine | acknowledged, all tries | missing after crash | fast restart | crash restart |",
        "|---|---:|---:|---:|---:|",
    ]
    for f in all_figures:
        rows.append(
            f"| {f.kind} | {sum(f.acknowledged):,} | {sum(f.missing)} "
            f"(per try {', '.join(map(str, f.missing))}) | {spread(f.fast_s)} "
            f"| {spread(f.crash_s)} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=5)
    parser.add_argument("--load", type=float, default=1.5, help="seconds of writes per try")
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--engines", default=",".join(ENGINES))
    args = parser.parse_args()
    results = []
    for kind in args.engines.split(","):
        figures = Figures(kind)
        for _ in range(args.tries):
            one_try(kind, figures, writers=args.writers, load_s=args.load)
        results.append(figures)
        print(f"{kind}: missing {figures.missing} of {figures.acknowledged}", flush=True)
    print(report(results))


if __name__ == "__main__":
    main()
