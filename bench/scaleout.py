"""Scale-out across hosts: drain throughput with 1, 2, 4 and 8 worker hosts, on PostgreSQL
and Redis, for jobs that wait on I/O.

    python -m bench.scaleout [--engines postgres,redis] [--hosts 1,2,4,8] [--jobs 6000]
                             [--concurrency 8] [--claim-jobs 6000] [--out bench]

Needs root: each worker host is a Linux network namespace joined to this machine by a veth
pair (`bench/netns.py`), and reaches the engines only through it. The engines are private
ones (`bench/chaos/engines.py`) listening on 127.0.0.1 and on this machine's end of every
pair; the shared servers on 127.0.0.1 are not used. Each point: an empty store, the queue
paused, N jobs enqueued (each waits 20 ms on an asyncio sleep), one `offload worker
--concurrency C` started in each of H hosts; once all H are registered the queue is resumed
and the clock runs until the last job is settled (read through the App). A claim-only run
then drains jobs that do nothing with every host. Namespaces, veths, workers and engines are
removed at the end, also on failure or Ctrl-C, and those of an earlier run that died are
removed at the start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

from bench import netns
from bench._results import write_section
from bench.chaos.engines import PrivatePostgres, PrivateRedis
from bench.cputime import tree_seconds
from bench.scaleout_app import QUEUE, WAIT_S, Noop, Wait, app
from bench.scaleout_report import Point, chart, machine_note, saturation_lines, table

import offload
from offload.brokers import open_backend
from offload.contract import JobFilter

#: The checkout this file lives in, and the offload sources the bench imports: the workers
#: import the same ones.
TOP = Path(__file__).resolve().parents[1]
SOURCES = Path(offload.__file__).resolve().parents[1]
#: Where a run keeps its engines, worker logs and the pids a later run cleans up after.
STATE = Path(tempfile.gettempdir()) / "offload-scaleout"
#: Seconds the workers of a point have to register, and a drain to finish.
DEFAULT_READY_S = 180.0
DEFAULT_DRAIN_S = 240.0
#: Seconds between two reads of the queue while it drains.
DEFAULT_POLL_S = 0.02
#: Jobs per enqueue batch.
BATCH = 5000

Resolve = Callable[[netns.Host], str]


def log(text: str) -> None:
    print(text, flush=True)


# -- leftovers --------------------------------------------------------------------------------


def clean_leftovers() -> None:
    """Remove what a run that died before its clean-up left: processes in our namespaces,
    the namespaces and veths, and the engines whose pids it recorded."""
    gone = netns.clean_leftovers()
    pids = STATE / "pids"
    for line in pids.read_text().splitlines() if pids.exists() else []:
        pid, comm, marker = line.split(" ", 2)
        with contextlib.suppress(OSError, ValueError):
            # Only the very process recorded (a reused pid is left alone): its name, and
            # its data folder or port on its command line.
            named = Path(f"/proc/{pid}/comm").read_text().strip() == comm
            if named and marker in Path(f"/proc/{pid}/cmdline").read_text():
                os.kill(int(pid), signal.SIGKILL)
                gone.append(f"{comm}[{pid}]")
    for line in (STATE / "dirs").read_text().split() if (STATE / "dirs").exists() else []:
        shutil.rmtree(line, ignore_errors=True)
    shutil.rmtree(STATE, ignore_errors=True)
    if gone:
        log(f"removed leftovers of an earlier run: {', '.join(gone)}")


def record(pg: PrivatePostgres, redis: PrivateRedis) -> None:
    """Note the engines' pids and folders, for `clean_leftovers` should this run die."""
    pids = [f"{pg.pid()} postgres {pg.data}", f"{redis.pid()} redis-server :{redis.port}"]
    (STATE / "pids").write_text("\n".join(pids) + "\n")
    (STATE / "dirs").write_text(f"{pg.home}\n")


# -- workers ----------------------------------------------------------------------------------


class Workers:
    """The worker processes of one point, one per host, stopped (then killed) on `stop`."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []
        self._outs: list[IO[bytes]] = []
        self._count = 0

    def start(self, hosts: Sequence[netns.Host], url_of: Resolve, options: list[str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")}
        env["PYTHONPATH"] = os.pathsep.join([str(TOP), str(SOURCES)])
        for host in hosts:
            self._count += 1
            out = open(self.logs / f"{self._count:03d}-{host.name}.out", "wb")
            self._outs.append(out)
            argv = [sys.executable, "-m", "offload", "worker", "--app"]
            argv += ["bench.scaleout_app:app", "--url", url_of(host), *options]
            self.procs.append(
                subprocess.Popen(
                    host.argv(argv),
                    cwd=TOP,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C reaches the bench, which stops them
                )
            )

    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def check(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                tail = Path(self._outs[self.procs.index(proc)].name).read_text()[-1500:]
                raise RuntimeError(f"a worker exited with {proc.returncode}:\n{tail}")

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for out in self._outs:
            out.close()
        self.procs, self._outs = [], []


# -- one point --------------------------------------------------------------------------------


async def fresh_store(engine: PrivatePostgres | PrivateRedis) -> None:
    """Make the engine's offload store empty, with the schema."""
    if isinstance(engine, PrivatePostgres):
        import psycopg

        async with await psycopg.AsyncConnection.connect(engine.admin_url, autocommit=True) as c:
            await c.execute("DROP DATABASE IF EXISTS offload WITH (FORCE)")
            await c.execute("CREATE DATABASE offload")
    else:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(engine.url)
        await client.flushall()
        await client.aclose()
    backend = open_backend(engine.url)
    await backend.open(check_schema=False)
    try:
        await backend.migrate()
    finally:
        await backend.close()


async def wait_registered(count: int, workers: Workers) -> None:
    """Wait until `count` live workers are in the registry (all imported and connected)."""
    deadline = time.monotonic() + DEFAULT_READY_S
    while len([w for w in await app.workers() if not w.lost]) < count:
        workers.check()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} workers did not register within {DEFAULT_READY_S:g}s")
        await asyncio.sleep(0.1)


async def waiting() -> bool:
    """Whether a job of the queue is still queued or running (two capped counts: cheap,
    so the polling adds little to the engine's load)."""
    for state in ("queued", "running", "retrying"):
        if await app.count_jobs(JobFilter(state=state, queue=QUEUE), cap=1):
            return True
    return False


async def drain(count: int, workers: Workers, engine_pid: int) -> tuple[float, float, float]:
    """Resume the queue and wait until none of its `count` jobs waits or runs. Returns the
    seconds that took and the CPU seconds the workers and the engine spent meanwhile."""
    cpu = (tree_seconds(workers.pids()), tree_seconds([engine_pid]))
    start = time.perf_counter()
    await app.resume(QUEUE)
    while await waiting():
        workers.check()
        if time.perf_counter() - start > DEFAULT_DRAIN_S:
            raise RuntimeError(f"jobs still waiting after {DEFAULT_DRAIN_S:g}s")
        await asyncio.sleep(DEFAULT_POLL_S)
    seconds = time.perf_counter() - start
    spent = (tree_seconds(workers.pids()) - cpu[0], tree_seconds([engine_pid]) - cpu[1])
    done = await app.count_jobs(JobFilter(state="succeeded", queue=QUEUE))
    if done != count:
        raise RuntimeError(f"{done} of {count} jobs succeeded")
    return seconds, *spent


async def point(
    name: str,
    engine: PrivatePostgres | PrivateRedis,
    hosts: Sequence[netns.Host],
    *,
    kind: str,
    jobs: int,
    workers: Workers,
    options: list[str],
) -> Point:
    """One drain of `jobs` jobs of `kind` by `hosts`, on an empty store of `engine`."""
    await fresh_store(engine)
    app.configure(app.settings.with_(url=engine.url))
    message = Wait if kind == "wait" else Noop
    async with app:
        await app.pause(QUEUE)
        for first in range(0, jobs, BATCH):
            await app.enqueue_many([message(i=i) for i in range(first, min(jobs, first + BATCH))])
        try:
            workers.start(hosts, lambda h: engine.url_via(h.gateway), options)
            await wait_registered(len(hosts), workers)
            engine_pid = engine.pid()
            assert engine_pid is not None, "engine not running"
            seconds, worker_cpu, engine_cpu = await drain(jobs, workers, engine_pid)
        finally:
            workers.stop()
    found = Point(engine=name, kind=kind, hosts=len(hosts), jobs=jobs, seconds=seconds,
                  worker_cpu_s=worker_cpu, engine_cpu_s=engine_cpu,
                  load=os.getloadavg()[0])  # fmt: skip
    log(
        f"{name:8} {kind:4} {len(hosts)} host(s): {jobs:,} jobs in {seconds:.2f}s = "
        f"{found.rate:,.0f}/s; CPU per job: workers {found.worker_ms:.2f} ms, engine "
        f"{found.engine_ms:.2f} ms"
    )
    return found


async def measure(
    args: argparse.Namespace,
    engines: dict[str, PrivatePostgres | PrivateRedis],
    hosts: list[netns.Host],
    workers: Workers,
) -> list[Point]:
    """Every point: host counts in turn, each on every engine (so a load that comes and goes
    on this shared machine hits the engines alike), then the claim-only runs."""
    options = [f"--concurrency={args.concurrency}", f"--prefetch={args.concurrency}"]
    options += ["--grace=5", "--no-banner"]
    points = []
    for count in args.hosts:
        for name, engine in engines.items():
            points.append(
                await point(
                    name,
                    engine,
                    hosts[:count],
                    kind="wait",
                    jobs=args.jobs,
                    workers=workers,
                    options=options,
                )
            )
    if args.claim_jobs:
        for name, engine in engines.items():
            points.append(
                await point(
                    name,
                    engine,
                    hosts,
                    kind="noop",
                    jobs=args.claim_jobs,
                    workers=workers,
                    options=options,
                )
            )
    return points


# -- the run ----------------------------------------------------------------------------------


@contextlib.contextmanager
def environment(names: Sequence[str], count: int) -> Iterator[
    tuple[list[netns.Host], dict[str, PrivatePostgres | PrivateRedis], Workers]
]:  # fmt: skip
    """Hosts, engines listening on their gateways, and the worker set; all removed after."""
    clean_leftovers()
    STATE.mkdir(parents=True)
    (STATE / "logs").mkdir()
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, STATE, True)
        hosts = stack.enter_context(netns.Hosts(count))
        gateways = [h.gateway for h in hosts]
        network = f"{netns.DEFAULT_BASE}.0.0/16"
        pg = stack.enter_context(PrivatePostgres(STATE / "pg", listen=gateways, clients=[network]))
        redis = stack.enter_context(PrivateRedis(STATE / "redis", listen=gateways))
        record(pg, redis)
        engines: dict[str, PrivatePostgres | PrivateRedis] = {"postgres": pg, "redis": redis}
        workers = Workers(STATE / "logs")
        stack.callback(workers.stop)
        yield hosts, {n: engines[n] for n in names}, workers


def report(args: argparse.Namespace, points: list[Point]) -> None:
    """Print the table and write it (with the chart) into the results."""
    png = args.out / "scaleout.png"
    cores = os.cpu_count() or 1
    chart(png, points, concurrency=args.concurrency, wait_s=WAIT_S)
    lines = [
        "## Scale-out across hosts (`make bench-scaleout`)",
        "",
        f"Each host is a Linux network namespace joined to this machine by a veth pair, "
        f"reaching private PostgreSQL and Redis servers only through it; one `offload worker "
        f"--concurrency {args.concurrency} --prefetch {args.concurrency}` per host. "
        f"{args.jobs:,} jobs that each wait {WAIT_S * 1000:g} ms (an asyncio sleep: I/O, not "
        "CPU) are queued with the queue paused; all hosts' workers start and register, the "
        "queue is resumed, and the clock runs from the resume until no job waits or runs "
        "(read through the App every 20 ms). Per doubling = jobs/s over jobs/s with half "
        f"the hosts; of ideal = jobs/s over hosts x {args.concurrency} / "
        f"{WAIT_S * 1000:g} ms. PostgreSQL: fsync and synchronous_commit on; Redis: AOF, "
        "appendfsync everysec.",
        "",
        *table(points, concurrency=args.concurrency, wait_s=WAIT_S),
        "",
        "CPU ms/job: CPU time (user + system, from /proc) the hosts' worker processes, and "
        "every process of the engine (PostgreSQL's backends and helpers; redis-server), "
        "spent from the resume to the end, per job; the engine's includes the bench's "
        "polls. Time spent waiting for a core is not CPU time, so these figures move much "
        "less with the machine's load than the rates do.",
        "",
        "Where each engine saturates: the first doubling that gave less than 1.5x, the "
        "highest claim rate seen (each job is claimed once, so jobs/s is claims/s), and "
        f"a claim-only run: {args.claim_jobs:,} jobs that do nothing, drained by every "
        "host, which measures claiming and settling alone. From its engine CPU per job "
        "follows the claim rate at which the engine fills one core of its own (Redis runs "
        "commands on one thread, so that is its ceiling; PostgreSQL spreads over cores).",
        "",
        *saturation_lines(points),
        "",
        f"This machine has {cores} cores, shared by the engines, every worker process and "
        "the bench: where the rate stops growing with hosts, the cores are spent, so the "
        "rates are this machine's ceiling, not the engines' (the CPU per job is what carries "
        "over to a bigger machine). " + machine_note(points, cores),
        "",
        f"![drain throughput against hosts, PostgreSQL and Redis]({png.name})",
    ]
    body = "\n".join(lines)
    print(body)
    write_section("scaleout", body)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--engines", default="postgres,redis")
    ap.add_argument("--hosts", default="1,2,4,8")
    ap.add_argument("--jobs", type=int, default=6000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--claim-jobs", type=int, default=6000, help="0: no claim-only run")
    ap.add_argument("--out", type=Path, default=TOP / "bench")
    args = ap.parse_args(argv)
    args.hosts = sorted({int(h) for h in args.hosts.split(",")})
    names = args.engines.split(",")
    if why := netns.available():
        print(f"bench.scaleout {why}", file=sys.stderr)
        return 2
    # A SIGTERM unwinds like Ctrl-C, so the clean-up below runs; and Ctrl-C does so even
    # where the shell started this with SIGINT ignored (a background job).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with environment(names, max(args.hosts)) as (hosts, engines, workers):
        points = asyncio.run(measure(args, engines, hosts, workers))
    report(args, points)
    return 0


if __name__ == "__main__":
    sys.exit(main())
