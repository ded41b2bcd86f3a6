"""The faults: a seeded schedule of worker kills, stops and skews, web kills, connection
kills and engine restarts, each injected in its own thread and logged with its times."""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from .engines import Engine
from .ledger import Ledger
from .skew import write_skew
from .stack import Stack

#: Mean seconds between two faults.
DEFAULT_FAULT_INTERVAL_S = 1.0
#: Relative weights of the fault kinds (those an engine cannot have are left out).
WEIGHTS = {
    "worker_kill": 3,
    "worker_term": 2,
    "worker_stop": 2,
    "worker_skew": 2,
    "web_kill": 1,
    "conn_kill": 2,
    "engine_restart": 1,
    "engine_crash": 1,
}
#: Kinds that hold one worker slot while they last.
WORKER_KINDS = {"worker_kill", "worker_term", "worker_stop", "worker_skew"}


@dataclass(frozen=True)
class Planned:
    at: float  # seconds after the fault window opens
    kind: str
    slot: int
    hold_s: float  # how long a stop or a skew lasts
    skew_s: float  # signed clock offset of a skew


def schedule(
    seed: int, seconds: float, slots: int, lease_s: float, kinds: list[str]
) -> list[Planned]:
    """The faults of one run, the same for the same seed and arguments."""
    rng = random.Random(seed)
    planned: list[Planned] = []
    at = rng.expovariate(1 / DEFAULT_FAULT_INTERVAL_S)
    weights = [WEIGHTS[k] for k in kinds]
    while at < seconds:
        kind = rng.choices(kinds, weights)[0]
        hold = lease_s + rng.uniform(1.5, 3.0)
        skew = rng.choice([-1, 1]) * (lease_s + rng.uniform(2.0, 4.0))
        planned.append(Planned(at, kind, rng.randrange(slots), hold, skew))
        at += rng.expovariate(1 / DEFAULT_FAULT_INTERVAL_S)
    return planned


def kinds_for(engine: Engine) -> list[str]:
    kinds = ["worker_kill", "worker_term", "worker_stop", "worker_skew", "web_kill"]
    if engine.name != "sqlite":
        kinds.append("conn_kill")
    if engine.restartable:
        kinds += ["engine_restart", "engine_crash"]
    return kinds


class Injector:
    """Carries out a schedule against a stack and an engine; `restore` undoes what lasts."""

    def __init__(self, stack: Stack, engine: Engine, ledger: Ledger, *, term_wait_s: float):
        self.stack = stack
        self.engine = engine
        self.ledger = ledger
        self.term_wait_s = term_wait_s
        self.busy: set[object] = set()
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.skipped = 0
        self.errors: list[str] = []

    def run(self, planned: list[Planned], stop: threading.Event) -> None:
        opened = time.monotonic()
        for p in planned:
            if stop.wait(max(0.0, opened + p.at - time.monotonic())):
                return
            with self.lock:
                resource = self._free(p)
                if resource is None:
                    self.skipped += 1
                    continue
                self.busy.add(resource)
                p = replace(p, slot=resource) if isinstance(resource, int) else p
            thread = threading.Thread(target=self._inject, args=(p, resource), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _free(self, p: Planned) -> object | None:
        """What the fault will hold: its worker slot (the next free one when that one is
        busy) or its kind's resource (web, or the engine: a connection kill needs the engine
        up, so it waits out a restart rather than failing to connect); None when busy."""
        if p.kind not in WORKER_KINDS:
            resource = "engine" if p.kind == "conn_kill" else p.kind.split("_")[0]
            return None if resource in self.busy else resource
        slots = len(self.stack.workers)
        for i in range(slots):
            slot = (p.slot + i) % slots
            if slot not in self.busy:
                return slot
        return None

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.1, deadline - time.monotonic()))

    def _inject(self, p: Planned, resource: object) -> None:
        action: Callable[[Planned], None] = getattr(self, p.kind)
        try:
            action(p)
        except Exception as exc:  # a fault that could not be injected is reported, not fatal
            self.errors.append(f"{p.kind}: {type(exc).__name__}: {exc}")
        finally:
            with self.lock:
                self.busy.discard(resource)

    def worker_kill(self, p: Planned) -> None:
        pid = self.stack.signal_worker(p.slot, signal.SIGKILL)
        fault = self.ledger.fault("worker_kill", slot=p.slot, pid=pid)
        self.stack.reap(p.slot, 30)
        fault.end = time.time()
        self.stack.start_worker(p.slot)

    def worker_term(self, p: Planned) -> None:
        pid = self.stack.signal_worker(p.slot, signal.SIGTERM)
        fault = self.ledger.fault("worker_term", slot=p.slot, pid=pid)
        code = self.stack.reap(p.slot, self.term_wait_s)
        fault.end = time.time()
        with self.ledger.lock:
            self.ledger.sigterm_exits.append((pid, code))
        if code is None:  # did not exit: say so, then make room for a new one
            self.stack.signal_worker(p.slot, signal.SIGKILL)
            self.stack.reap(p.slot, 30)
        self.stack.start_worker(p.slot)

    def worker_stop(self, p: Planned) -> None:
        pid = self.stack.signal_worker(p.slot, signal.SIGSTOP)
        fault = self.ledger.fault("worker_stop", slot=p.slot, pid=pid, detail=f"{p.hold_s:.1f}s")
        time.sleep(p.hold_s)
        self.stack.signal_worker(p.slot, signal.SIGCONT)
        fault.end = time.time()

    def worker_skew(self, p: Planned) -> None:
        proc = self.stack.workers[p.slot]
        pid = proc.pid if proc is not None else None
        path = self.stack.skew_file(p.slot)
        write_skew(path, p.skew_s)
        fault = self.ledger.fault(
            "worker_skew", slot=p.slot, pid=pid, detail=f"{p.skew_s:+.1f}s for {p.hold_s:.1f}s"
        )
        time.sleep(p.hold_s)
        write_skew(path, 0)
        fault.end = time.time()

    def web_kill(self, p: Planned) -> None:
        fault = self.ledger.fault("web_kill")
        self.stack.kill_web()
        self.stack.start_web()
        fault.end = time.time()

    def conn_kill(self, p: Planned) -> None:
        fault = self.ledger.fault("conn_kill")
        killed = self.engine.kill_connections()
        fault.end = time.time()
        fault.detail = f"{killed} connections"

    def engine_restart(self, p: Planned) -> None:
        self._restart(crash=False)

    def engine_crash(self, p: Planned) -> None:
        self._restart(crash=True)

    def _restart(self, *, crash: bool) -> None:
        fault = self.ledger.fault("engine_crash" if crash else "engine_restart")
        down_s = self.engine.restart(crash=crash)
        fault.end = time.time()
        fault.detail = f"down {down_s:.2f}s"

    def restore(self) -> None:
        """The web process and every worker slot running again, and no clock skewed."""
        if not self.stack.web_alive():
            self.stack.start_web()
        for slot, proc in enumerate(self.stack.workers):
            write_skew(self.stack.skew_file(slot), 0)
            if proc is None or proc.poll() is not None:
                if proc is not None:
                    self.stack.reap(slot, 5)
                self.stack.start_worker(slot)
