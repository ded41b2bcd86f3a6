"""One chaos run on one engine: start the stack, load it while faults happen, drain, check."""

from __future__ import annotations

import asyncio
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from offload import Settings
from offload.contract import JobRow

from .checks import Checker, Report, read_executions
from .contracts import app
from .engines import Engine, engine_for
from .faults import Injector, kinds_for, schedule
from .ledger import Ledger
from .load import Plan, follow, http_loop, many_loop
from .stack import Stack

#: Lease of the workers (seconds): short, so a stop or a skew past it fits in a short run.
DEFAULT_LEASE_S = 5.0
#: Seconds a SIGTERMed worker has to finish its running handlers (they last < 0.5 s).
DEFAULT_GRACE_S = 10.0
#: Seconds the jobs have to reach a final state once the faults end.
DEFAULT_DRAIN_S = 300.0
#: Every how many accepted HTTP jobs one is followed over its event stream.
DEFAULT_STREAM_EVERY = 10
#: Most event streams followed in one run.
DEFAULT_MAX_STREAMS = 40


@dataclass(frozen=True)
class Config:
    engine: str
    setting: str = ""
    seed: int = 1
    jobs: int = 500
    fault_seconds: float = 20.0
    workers: int = 3
    lease_s: float = DEFAULT_LEASE_S
    drain_s: float = DEFAULT_DRAIN_S
    keep: bool = False  # keep the run's folder (logs) afterwards
    only: tuple[str, ...] = ()  # only these fault kinds (all the engine can have when empty)


def run(config: Config, *, say: Callable[[str], None] = print) -> Report:
    """Run one engine/setting and return its report (the folder is removed unless kept)."""
    root = Path(tempfile.mkdtemp(prefix=f"chaos-{config.engine}-"))
    root.chmod(0o755)  # a private PostgreSQL runs as its own OS user, inside this folder
    try:
        engine = engine_for(config.engine, root / "engine", setting=config.setting)
        with engine:
            return Run(config, engine, root, say).go()
    finally:
        if not config.keep:
            shutil.rmtree(root, ignore_errors=True)


class Run:
    def __init__(
        self, config: Config, engine: Engine, root: Path, say: Callable[[str], None]
    ) -> None:
        self.config = config
        self.engine = engine
        self.say = say
        self.ledger = Ledger()
        grace = DEFAULT_GRACE_S
        self.stack = Stack(
            root / "stack",
            engine.url,
            workers=config.workers,
            lease_s=config.lease_s,
            grace_s=grace,
        )
        self.injector = Injector(self.stack, engine, self.ledger, term_wait_s=grace + 30)
        self.report = Report(config.engine, engine.setting, config.seed)
        self.streams: list[threading.Thread] = []
        self.followed = 0
        app.configure(Settings(url=engine.url, blobs_url=str(root / "stack" / "blobs")))

    def log(self, message: str) -> None:
        name = " ".join(filter(None, [self.config.engine, self.engine.setting]))
        self.say(f"[{name}] {message}")

    def go(self) -> Report:
        c = self.config
        try:
            self.stack.migrate()
            self.stack.start_web()
            for slot in range(c.workers):
                self.stack.start_worker(slot, wait=False)
            for slot in range(c.workers):
                self.stack.wait_worker(slot)
            self.load_and_faults()
            self.log("draining")
            rows = self.drain()
            self.stop_workers()
            self.check(rows)
        finally:
            self.stack.stop()
        return self.report

    def follow_some(self, job_id: str) -> None:
        """Follow every DEFAULT_STREAM_EVERY-th job accepted over HTTP (up to a maximum)."""
        with self.ledger.lock:
            self.followed += 1
            if self.followed % DEFAULT_STREAM_EVERY or len(self.streams) >= DEFAULT_MAX_STREAMS:
                return
            if job_id in self.ledger.streams:
                return
            self.ledger.streams[job_id] = None
        deadline = time.time() + self.config.fault_seconds + self.config.drain_s + 60
        thread = threading.Thread(
            target=follow, args=(self.stack.base, job_id, self.ledger, deadline), daemon=True
        )
        thread.start()
        self.streams.append(thread)

    def load_and_faults(self) -> None:
        c = self.config
        upfront = c.jobs // 5
        plan = Plan(c.seed, c.jobs, upfront, c.fault_seconds)
        stop = threading.Event()
        loaders = [
            threading.Thread(
                target=http_loop, args=(self.stack.base, plan, self.ledger, stop, self.follow_some)
            ),
            threading.Thread(
                target=http_loop, args=(self.stack.base, plan, self.ledger, stop, self.follow_some)
            ),
            threading.Thread(target=many_loop, args=(app, plan, self.ledger, stop, 20)),
        ]
        for t in loaders:
            t.start()
        kinds = [k for k in kinds_for(self.engine) if not c.only or k in c.only]
        planned = schedule(c.seed, c.fault_seconds, c.workers, c.lease_s, kinds)
        self.log(f"{c.jobs} jobs, {len(planned)} faults planned over {c.fault_seconds:.0f}s")
        faults = threading.Thread(target=self.injector.run, args=(planned, stop))
        faults.start()
        faults.join(c.fault_seconds + 30)
        stop.set()
        for t in loaders:
            t.join(120)
        self.injector.join(120)
        self.injector.restore()
        self.log(f"{len(self.ledger.accepted)} jobs accepted, {len(self.ledger.faults)} faults")

    def drain(self) -> dict[str, JobRow | None]:
        """Poll the accepted jobs until every one is final or the drain time is up."""

        async def poll() -> dict[str, JobRow | None]:
            rows: dict[str, JobRow | None] = {}
            pending = list(self.ledger.accepted)
            deadline = time.monotonic() + self.config.drain_s
            async with app:
                while pending and time.monotonic() < deadline:
                    waiting = []
                    for job_id in pending:
                        try:
                            rows[job_id] = row = await app.get(job_id)
                        except Exception:  # the engine may still be coming back
                            waiting.append(job_id)
                            continue
                        if row is not None and not row.state.final:
                            waiting.append(job_id)
                    pending = waiting
                    if pending:
                        await asyncio.sleep(0.5)
            return rows

        return asyncio.run(poll())

    def stop_workers(self) -> None:
        """SIGTERM every worker (their exit codes count, as any SIGTERM's), after the event
        streams are done (they end with their jobs)."""
        deadline = time.monotonic() + 60
        for thread in self.streams:
            thread.join(max(0.1, deadline - time.monotonic()))
        for slot, proc in enumerate(self.stack.workers):
            if proc is not None:
                pid = self.stack.signal_worker(slot, signal.SIGTERM)
                code = self.stack.reap(slot, DEFAULT_GRACE_S + 30)
                self.ledger.sigterm_exits.append((pid, code))

    def check(self, rows: dict[str, JobRow | None]) -> None:
        r = self.report
        r.faults = Counter(f.kind for f in self.ledger.faults)
        r.faults_skipped = self.injector.skipped
        opened = min((f.start for f in self.ledger.faults), default=0.0)
        r.fault_log = [
            f"{f.start - opened:7.2f}s {f.kind} {f.pid or ''} {(f.end or f.start) - f.start:.2f}s"
            f" {f.detail}".rstrip()
            for f in sorted(self.ledger.faults, key=lambda f: f.start)
        ]
        r.fault_errors = self.injector.errors
        checker = Checker(
            self.ledger, r, lease_s=self.config.lease_s, everysec="everysec" in self.engine.setting
        )
        checker.jobs(rows, read_executions(self.stack.logs))
        checker.keys(rows)
        checker.errors()
        checker.sigterms()
        checker.streams(rows)
