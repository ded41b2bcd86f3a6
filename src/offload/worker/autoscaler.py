"""`offload worker --autoscale MIN:MAX`: keep between MIN and MAX worker processes, as the
backlog read through the App asks (`worker.scaling` decides; this carries it out)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._children import FORWARDED, child_options
from ..errors import OffloadError
from .scaling import Backlog, Decision, ScalingPolicy
from .supervisor import DEFAULT_RESTART_BACKOFF_S, STOP_SIGNALS, stopped_cleanly

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from ..app import App
    from ..metrics import Metrics

log = logging.getLogger("offload.autoscaler")

#: Seconds between two looks at the children (exits, restarts due).
TICK_S = 0.1
#: The longest gap between two backlog readings (seconds); shorter for a short target wait.
DEFAULT_SAMPLE_S = 1.0
#: The shortest gap between two backlog readings (seconds).
MIN_SAMPLE_S = 0.1
#: A backlog reading that takes longer than this (seconds) is given up; the size stays.
READ_TIMEOUT_S = 10.0
#: Minutes of `App.history` read to count completions (the current one and the one before).
HISTORY_MINUTES = 2
#: The metrics the autoscaler's own endpoint adds (counters with their `_total`).
AUTOSCALE_METRIC_NAMES = ("offload_worker_processes", "offload_autoscale_decisions_total")


def sample_interval(target_wait_s: float) -> float:
    """Seconds between backlog readings: half the target wait, within its bounds."""
    return min(DEFAULT_SAMPLE_S, max(MIN_SAMPLE_S, target_wait_s / 2))


class BacklogReader:
    """Reads `Backlog`s of `queues` through the App: ready jobs and the oldest one's age
    from `App.stats`, completions from the per-minute counts of `App.history` (ended jobs:
    succeeded, failed, dead), summed into a running count between readings."""

    def __init__(self, app: App, queues: Iterable[str]) -> None:
        self.app = app
        self.queues = frozenset(queues)
        #: The stats of the served queues at the last reading.
        self.stats: dict[str, dict[str, Any]] = {}
        self._completed = 0
        self._minutes: dict[float, int] | None = None

    async def read(self) -> Backlog:
        """One reading.

        Raises:
            OffloadError: the backend could not be read.
        """
        stats = await self.app.stats()
        self.stats = {q: s for q, s in stats.items() if q in self.queues}
        ready, oldest = 0, 0.0
        for queue in self.stats.values():
            if queue.get("paused"):
                continue  # no worker may claim them: more processes would not help
            # Jobs given back for another worker are no work for this one; given back they
            # wait ahead (`scheduled`) until they are due, so at most those beyond the
            # scheduled ones are ready (it took them all from the ready ones).
            given_back = int(queue.get("awaiting_newer_worker", 0))
            due = max(0, given_back - int(queue.get("scheduled", 0)))
            waiting = int(queue["queued"]) - due
            if waiting > 0:
                ready += waiting
                oldest = max(oldest, float(queue["oldest_age_s"]))
        await self._count_completions()
        return Backlog(ready=ready, oldest_age_s=oldest, completed=self._completed)

    async def running_by_pid(self) -> dict[int, int]:
        """How many jobs each worker process of this host ran at its last heartbeat, by pid
        (the worker registry). A lost entry counts too (a process whose loop stalled past
        its heartbeats still runs its jobs), unless a live one has its pid.

        Raises:
            OffloadError: the backend could not be read.
        """
        host = socket.gethostname()
        mine = [w for w in await self.app.workers() if w.host == host]
        return {w.pid: len(w.running) for w in sorted(mine, key=lambda w: not w.lost)}

    async def _count_completions(self) -> None:
        minutes: dict[float, int] = {}
        for row in await self.app.history(minutes=HISTORY_MINUTES):
            if row.queue in self.queues:
                key = row.minute.timestamp()
                minutes[key] = minutes.get(key, 0) + row.succeeded + row.failed + row.dead
        if self._minutes is not None:  # each minute's count only grows while it is read
            self._completed += sum(
                max(0, n - self._minutes.get(minute, 0)) for minute, n in minutes.items()
            )
        self._minutes = minutes


class ScalingMetrics:
    """`offload_worker_processes` (processes kept now) and
    `offload_autoscale_decisions_total{direction,reason}`, collected at scrape time into
    the registry of `metrics`, whose queue gauges show the last backlog reading."""

    def __init__(self, metrics: Metrics, size: Callable[[], int]) -> None:
        self.metrics = metrics
        self.size = size
        self.decisions: dict[tuple[str, str], int] = {}
        metrics.registry.register(self)

    def decided(self, decision: Decision) -> None:
        key = (decision.direction, decision.reason)
        self.decisions[key] = self.decisions.get(key, 0) + 1

    def read(self, stats: Mapping[str, Mapping[str, Any]], at: float) -> None:
        self.metrics.queues.stats = dict(stats)
        self.metrics.queues.read_at = at

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield GaugeMetricFamily(
            "offload_worker_processes",
            "Worker processes the autoscaler keeps running (not counting those stopping)",
            value=self.size(),
        )
        decisions = CounterMetricFamily(
            "offload_autoscale_decisions",
            "Processes added (up) or removed (down) by the autoscaler, by reason",
            labels=("direction", "reason"),
        )
        for labels, n in sorted(self.decisions.items()):
            decisions.add_metric(labels, n)
        yield decisions

    def describe(self) -> list[Metric]:
        return []  # collected at scrape time only


@dataclass
class _Child:
    """One worker process in a slot: running, stopping after a removal, or awaiting its
    restart (`proc` None until `restart_at`)."""

    proc: subprocess.Popen[bytes] | None
    started_at: float
    stopping: bool = False
    restart_at: float = 0.0
    #: The read end of the pipe the process reports its start on (None once it has, or
    #: once it exited): while open, the process is starting.
    ready_fd: int | None = None

    def close_ready(self) -> None:
        if self.ready_fd is not None:
            os.close(self.ready_fd)
            self.ready_fd = None

    def check_ready(self) -> None:
        """Read the start report if it came (or the pipe closed: the process exited)."""
        if self.ready_fd is None:
            return
        try:
            os.read(self.ready_fd, 16)
        except BlockingIOError:
            return  # still starting
        self.close_ready()


class AutoscalingSupervisor:
    """Runs `policy.min_processes` worker processes, then adds and removes them as `policy`
    decides from `reader`'s readings, until SIGTERM or SIGINT (forwarded to every child).

    A removed process (the one that ran the fewest jobs at its last heartbeat) gets SIGTERM:
    it claims no more, gives back the jobs it holds ahead unspent, and finishes its running
    jobs within its grace period. A process that dies is restarted in its slot and counts
    toward the size meanwhile.

    Each process reports on a pipe (`--ready-fd`) once it has started claiming; until it
    has (or `policy.start_wait_s` passed), it is starting, and no further process is added.

    Args:
        argv: the command of one worker process.
        slot_argv: arguments added to the command of the process in slot `i` (0 to MAX-1).
        sample_s: seconds between backlog readings.
        metrics: where the autoscaler's own metrics go (None: nowhere).
    """

    def __init__(
        self,
        policy: ScalingPolicy,
        reader: BacklogReader,
        argv: Sequence[str],
        *,
        slot_argv: Callable[[int], Sequence[str]] | None = None,
        sample_s: float = DEFAULT_SAMPLE_S,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.reader = reader
        self.argv = list(argv)
        self.slot_argv = slot_argv
        self.sample_s = sample_s
        self.clock = clock
        self.slots: list[_Child | None] = [None] * policy.max_processes
        self.metrics = None if metrics is None else ScalingMetrics(metrics, lambda: self.size)
        self._stopping = asyncio.Event()
        #: The signal the processes were sent to stop (None until then).
        self._stop_signal: int | None = None

    @property
    def size(self) -> int:
        """Processes kept running: those stopping after a removal not counted."""
        return sum(1 for c in self.slots if c is not None and not c.stopping)

    @property
    def alive(self) -> int:
        """Slots taken: the size and the processes still stopping."""
        return sum(1 for c in self.slots if c is not None)

    async def run(self) -> int:
        """Supervise until SIGTERM, SIGINT or SIGHUP; the exit code (0 when every child
        stopped cleanly)."""
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self._stop, signum)
        try:
            await self._supervise()
        except BaseException:
            # never leave the children running on a failure
            self._stop(signal.SIGTERM, "the supervisor failed")
            await asyncio.shield(self._wait_all())
            raise
        return await self._wait_all()

    @property
    def starting_since(self) -> float | None:
        """When the oldest process still starting was spawned (None: none is)."""
        times = [
            c.started_at
            for c in self.slots
            if c is not None and c.proc is not None and c.ready_fd is not None and not c.stopping
        ]
        return min(times) if times else None

    async def _supervise(self) -> None:
        for _ in range(self.policy.min_processes):
            self._add()
        next_read = self.clock()
        while not self._stopping.is_set():
            self._tend()
            if self.clock() >= next_read:
                next_read = self.clock() + self.sample_s
                await self._step()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), TICK_S)

    def _stop(self, signum: int, why: str | None = None) -> None:
        if not self._stopping.is_set():
            log.info(
                "stopping %d worker process%s (%s)",
                self.alive,
                "" if self.alive == 1 else "es",
                why or signal.Signals(signum).name,
                extra={"action": "autoscale_stop", "processes": self.alive},
            )
        self._stopping.set()
        self._stop_signal = FORWARDED
        for child in self.slots:
            if child is not None and child.proc is not None and not child.stopping:
                if child.proc.poll() is None:
                    child.proc.send_signal(FORWARDED)

    async def _step(self) -> None:
        """Read the backlog, decide, and carry the decision out."""
        try:
            backlog = await asyncio.wait_for(self.reader.read(), READ_TIMEOUT_S)
        except (OffloadError, OSError, TimeoutError) as exc:
            log.warning(
                "cannot read the backlog (%s); keeping %d processes",
                exc or type(exc).__name__,
                self.size,
                extra={"action": "autoscale_read_failed"},
            )
            return
        now = self.clock()
        if self.metrics is not None:
            self.metrics.read(self.reader.stats, now)
        decision = self.policy.decide(
            now, self.size, backlog, alive=self.alive, starting_since=self.starting_since
        )
        if decision is None or self._stopping.is_set():
            return
        if decision.direction == "up":
            self._add()
        elif not await self._remove():
            return
        log.info(
            "%s",
            decision,
            extra={"action": f"scale_{decision.direction}", "reason": decision.reason},
        )
        if self.metrics is not None:
            self.metrics.decided(decision)

    def _spawn(self, slot: int, child: _Child | None = None) -> _Child:
        """Start the process of `slot` (into `child` when restarting it), with the write end
        of its start-report pipe."""
        extra = self.slot_argv(slot) if self.slot_argv is not None else ()
        read, write = os.pipe()
        os.set_blocking(read, False)
        try:
            proc = subprocess.Popen(
                [*self.argv, *extra, f"--ready-fd={write}"], pass_fds=(write,), **child_options()
            )
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)
        if child is None:
            return _Child(proc, started_at=self.clock(), ready_fd=read)
        child.close_ready()
        child.proc, child.started_at, child.ready_fd = proc, self.clock(), read
        return child

    def _add(self) -> None:
        slot = self.slots.index(None)  # the policy never asks beyond MAX slots taken
        self.slots[slot] = self._spawn(slot)

    async def _remove(self) -> bool:
        """Stop one process gracefully (its slot frees once it exits): one awaiting its
        restart if any, else the one that ran the fewest jobs at its last heartbeat (the
        worker registry), the newest of equals; the newest when the registry cannot be read.
        A busy process stopped runs its jobs past its grace period, then gives them back.
        False when there was none to stop (a stop came meanwhile)."""
        try:
            running = await asyncio.wait_for(self.reader.running_by_pid(), READ_TIMEOUT_S)
        except (OffloadError, OSError, TimeoutError) as exc:
            log.debug("cannot read the worker registry (%s); stopping the newest", exc)
            running = {}

        def busy(child: _Child) -> tuple[int, float]:
            """Fewest jobs first (one awaiting its restart before any), then the newest
            (a process not recorded yet is starting: it runs none)."""
            jobs = -1 if child.proc is None else running.get(child.proc.pid, 0)
            return jobs, -child.started_at

        kept = [c for c in self.slots if c is not None and not c.stopping]
        if not kept or self._stopping.is_set():
            return False
        child = min(kept, key=busy)
        child.stopping = True
        if child.proc is None:  # awaiting a restart: nothing to stop
            self.slots[self.slots.index(child)] = None
        elif child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
        return True

    def _tend(self) -> None:
        """Free the slots of removed processes that exited; restart the others that died."""
        now = self.clock()
        for slot, child in enumerate(self.slots):
            if child is None:
                continue
            if child.proc is None:
                if now >= child.restart_at and not self._stopping.is_set():
                    self._spawn(slot, child)
                continue
            child.check_ready()
            code = child.proc.poll()
            if code is None:
                continue
            child.close_ready()
            if child.stopping:
                self.slots[slot] = None
                if code != 0:
                    log.warning(
                        "removed worker process %d exited with %s",
                        child.proc.pid,
                        code,
                        extra={"action": "worker_exit"},
                    )
                continue
            log.warning(
                "worker process %d exited with %s; restarting",
                child.proc.pid,
                code,
                extra={"action": "worker_restart"},
            )
            child.proc = None
            child.restart_at = child.started_at + DEFAULT_RESTART_BACKOFF_S

    async def _wait_all(self) -> int:
        procs = [c.proc for c in self.slots if c is not None and c.proc is not None]
        codes = [await asyncio.to_thread(proc.wait) for proc in procs]
        for child in self.slots:
            if child is not None:
                child.close_ready()
        return 0 if all(stopped_cleanly(code, self._stop_signal) for code in codes) else 1
