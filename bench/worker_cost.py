"""The worker's own CPU per job, this checkout against another commit, alternating.

    .venv/bin/python bench/worker_cost.py --against REV [--backends redis,postgres,sqlite]
                                          [--jobs 30000] [--rounds 4] [--concurrency 10]

REV is checked out in a temporary git worktree; each round drains N jobs of a handler that
does nothing (bench/noop_app.py) with one `offload worker` of this checkout's environment,
its package imported from REV's source or from this checkout's (PYTHONPATH), the two in
alternating order. Figures per drain: steady jobs/s (first to last completion) and the
worker's CPU per job while it drained (its CPU from a look once start-up is over to the
last completion, over the jobs completed meanwhile, read from /proc). Prints the table;
writes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from cputime import tree_seconds
from drain import TOP, cleanup, console, fresh_backend
from rich.progress import Progress

HERE = Path(__file__).parent


async def load(url: str, n: int) -> None:
    sys.path.insert(0, str(HERE))
    from noop_app import Noop, app

    app.configure(app.settings.with_(url=url))
    async with app:
        for first in range(0, n, 10_000):
            await app.enqueue_many([Noop(i=i) for i in range(first, min(n, first + 10_000))])


def drain(url: str, n: int, src: Path, concurrency: int, done_file: Path) -> tuple[float, float]:
    """(steady jobs/s, worker CPU µs per job) of one worker importing offload from `src`."""
    done_file.unlink(missing_ok=True)
    env = {
        **os.environ,
        "OFFLOAD_URL": url,
        "BENCH_TARGET": str(n),
        "BENCH_DONE_FILE": str(done_file),
        "PYTHONPATH": f"{src}{os.pathsep}{HERE}",
    }
    argv = [str(TOP / ".venv/bin/offload"), "worker", "--app", "noop_app:app"]
    argv += ["--concurrency", str(concurrency), "--grace", "2"]
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    spawn, started = time.monotonic(), None
    try:
        while not done_file.exists():
            if proc.poll() is not None:
                raise SystemExit(f"the worker exited with {proc.returncode}")
            if time.monotonic() - spawn > 600:
                raise SystemExit("the drain timed out")
            # Start-up (imports, opening the backend) is over well within a second here.
            if started is None and time.monotonic() - spawn > 1.0:
                started = time.time(), tree_seconds([proc.pid])
            time.sleep(0.005)
        cpu = tree_seconds([proc.pid])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    first, last = (float(v) for v in done_file.read_text().split())
    steady = (n - 1) / (last - first)
    if started is None or started[0] >= last:
        raise SystemExit("the drain ended before start-up was over: raise --jobs")
    # Jobs done between the look and the last completion, at the steady rate.
    jobs = steady * (last - max(started[0], first))
    return steady, (cpu - started[1]) / jobs * 1e6


@contextlib.contextmanager
def checkout(rev: str) -> Iterator[Path]:
    """The source folder (`src`) of commit `rev`, in a git worktree removed afterwards."""
    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "other"
        subprocess.run(
            ["git", "-C", str(TOP), "worktree", "add", "--detach", str(other), rev],
            check=True,
            capture_output=True,
        )
        try:
            yield other / "src"
        finally:
            subprocess.run(
                ["git", "-C", str(TOP), "worktree", "remove", "--force", str(other)], check=False
            )


def children_against(
    rev: str, backends: str, rounds: int, script: str, *args: str
) -> Iterator[tuple[str, str, str]]:
    """Run `script --child URL *args` once per round, backend and code: a process of this
    checkout's environment importing offload from `rev`'s source or from this checkout's
    (PYTHONPATH), the two in alternating order, each on a fresh store emptied after. Yields
    (backend, code, the child's last line of output) as each ends."""
    here = str(Path(__file__).parent)
    with checkout(rev) as other:
        sources = {rev: other, "this checkout": TOP / "src"}
        for r in range(rounds):
            for backend in backends.split(","):
                order = list(sources) if r % 2 == 0 else list(sources)[::-1]
                for name in order:
                    url = asyncio.run(fresh_backend(backend))
                    env = {**os.environ, "PYTHONPATH": f"{sources[name]}{os.pathsep}{here}"}
                    try:
                        done = subprocess.run(
                            [sys.executable, script, "--child", url, *args],
                            env=env,
                            check=True,
                            capture_output=True,
                            text=True,
                        )
                    finally:
                        asyncio.run(cleanup(backend, url))
                    print(f"round {r + 1} {backend} {name}: done", file=sys.stderr)
                    yield backend, name, done.stdout.splitlines()[-1]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--against", required=True, help="the commit to compare with")
    ap.add_argument("--backends", default="redis,postgres,sqlite")
    ap.add_argument("--jobs", type=int, default=30_000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=10)
    args = ap.parse_args()
    with checkout(args.against) as other, tempfile.TemporaryDirectory() as tmp:
        sources = {args.against: other, "this checkout": TOP / "src"}
        figures: dict[tuple[str, str], list[tuple[float, float]]] = {}
        backends = args.backends.split(",")
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("drains", total=args.rounds * 2 * len(backends))
            for r in range(args.rounds):
                for backend in backends:
                    order = list(sources) if r % 2 == 0 else list(sources)[::-1]
                    for name in order:
                        url = await fresh_backend(backend)
                        await load(url, args.jobs)
                        result = drain(
                            url, args.jobs, sources[name], args.concurrency, Path(tmp) / "done"
                        )
                        figures.setdefault((backend, name), []).append(result)
                        await cleanup(backend, url)
                        progress.advance(task)
    print(
        f"{args.jobs:,} no-op jobs, one worker --concurrency {args.concurrency}, "
        f"{args.rounds} rounds alternating\n"
    )
    print("| backend | code | steady jobs/s (rounds) | worker CPU µs/job (rounds) |")
    print("|---|---|---|---|")
    for (backend, name), runs in figures.items():
        steady = " / ".join(f"{s:,.0f}" for s, _ in runs)
        cost = " / ".join(f"{c:.1f}" for _, c in runs)
        print(f"| {backend} | {name} | {steady} | {cost} |")


if __name__ == "__main__":
    asyncio.run(main())
