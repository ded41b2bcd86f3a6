"""Prometheus metrics: what offload counts, the hooks its call sites call, and the scrape.

`App.metrics` is a `Metrics` (prometheus-client installed: `pip install 'offload[metrics]'`)
or `NO_METRICS`, whose hooks do nothing. The web tier turns metrics on for the app it serves
(`GET /metrics`); `offload worker --metrics-port N` turns them on for the worker. Each
`Metrics` has its own `CollectorRegistry` unless given one, so two apps (or two tests) in one
process never share counters.

Hooks are on the hot path: each resolves its label children once per (kind, queue) and
keeps them, so a counted job costs a dict look-up and the child's own update. Labels are
kinds, queues, states and channels, never a job id or an owner (unbounded series).
"""

from __future__ import annotations

import asyncio
import bisect
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import BackendError, ConfigurationError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from .brokers.base import WalReading
    from .contract import EnqueueResult, Envelope

#: The media type of the Prometheus text format `render` writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Seconds one reading of the queue stats serves every scrape (many scrapers, one query).
QUEUE_STATS_TTL_S = 1.0
#: Longest one reading of the queue stats may take before it is given up (seconds): past
#: the backend's retries of it (10 s by default), where only a connection that never
#: answers keeps it.
STUCK_READING_S = 30.0
#: Longest a scrape waits for the queue stats before it answers without them (seconds):
#: well under Prometheus's default scrape timeout (10 s), where the backend's retries of a
#: reading run to their deadline (10 s by default) before it is said to be unavailable.
QUEUE_STATS_WAIT_S = 5.0
#: Buckets of the run time and the wait histograms (seconds): 5 ms to an hour.
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0
)  # fmt: skip
#: Buckets of the web tier's answer time histogram (seconds): 1 ms to a minute (an event
#: stream's whole life lands in the last ones).
HTTP_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0
)  # fmt: skip
#: The request methods `offload_http_requests_total` names (and `WS`, a WebSocket's
#: handshake); any other counts as `other`, so that a client cannot make a series per
#: made-up method.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: The `route` label of a request that no route matched (a 404 before any handler).
UNMATCHED = "unmatched"
#: The states `offload_queue_depth` reports per queue (keys of `App.stats()`).
DEPTH_STATES = ("queued", "scheduled", "running", "dead")
#: Every metric offload exports, as scraped (counters with their `_total`).
METRIC_NAMES = (
    "offload_jobs_enqueued_total",
    "offload_jobs_completed_total",
    "offload_job_duration_seconds",
    "offload_job_wait_seconds",
    "offload_queue_depth",
    "offload_queue_oldest_age_seconds",
    "offload_queue_paused",
    "offload_queue_stats_up",
    "offload_worker_slots",
    "offload_deliveries_total",
    "offload_http_requests_total",
    "offload_http_request_duration_seconds",
)
#: What an app on a SQLite file adds (its WAL, as the checkpointer keeps it bounded).
SQLITE_METRIC_NAMES = (
    "offload_sqlite_wal_bytes",
    "offload_sqlite_wal_bound_bytes",
    "offload_sqlite_write_pauses_total",
    "offload_sqlite_write_pauses_spent_total",
    "offload_sqlite_write_pause_seconds_total",
)


def _bounds(buckets: Sequence[float]) -> tuple[str, ...]:
    """The `le` label of each bucket, as Prometheus writes bounds."""
    return (*(repr(float(b)) for b in buckets), "+Inf")


_JOB_BOUNDS = _bounds(DURATION_BUCKETS)
_HTTP_BOUNDS = _bounds(HTTP_BUCKETS)

_MISSING = "Prometheus metrics need prometheus-client: pip install 'offload[metrics]'"


def available() -> bool:
    """Whether prometheus-client is installed (the `metrics` extra)."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


class NoMetrics:
    """The hooks of an app without metrics: each does nothing."""

    enabled = False

    def enqueued(self, kind: str, queue: str, count: int = 1) -> None:
        """Count `count` jobs of `kind` newly stored in `queue`."""

    def stored(self, envelopes: Sequence[Envelope], results: Sequence[EnqueueResult]) -> None:
        """Count the jobs of one enqueue call that were stored (a replayed key is not)."""

    def started(self, queue: str, waited_s: float) -> None:
        """Count a job starting in `queue` after waiting `waited_s` since it was due."""

    def ended(self, kind: str, queue: str, state: str, ran_s: float | None = None) -> None:
        """Count an attempt that ended in `state`, having run `ran_s` (None: not timed, a
        lapsed lease's)."""

    def delivered(self, channel: str, outcome: str) -> None:
        """Count one webhook or email delivery attempt and its outcome."""

    def answered(self, method: str, route: str, status: int, took_s: float) -> None:
        """Count one request the web tier answered: its method (`HTTP_METHODS`, else
        `other`), its route's template (`UNMATCHED`: none), its status (0: no answer, the
        client went first) and how long the answer took."""

    def watch_slots(self, read: Callable[[], tuple[int, int]]) -> Callable[[], None]:
        """Report a worker's slots at scrape time; returns the function that stops it."""
        return _nothing

    def watch_wal(self, read: Callable[[], WalReading | None]) -> Callable[[], None]:
        """Report a SQLite backend's WAL at scrape time; returns the function that stops it."""
        return _nothing


def _nothing() -> None:
    pass


#: The hooks of an app whose metrics are off.
NO_METRICS = NoMetrics()


class Metrics(NoMetrics):
    """offload's Prometheus metrics, in one registry.

    The hooks update plain numbers under one lock (a counted job costs a few look-ups and
    additions); the registry reads them at scrape time. prometheus-client's own metric
    objects lock and loop more per update, which shows at thousands of jobs a second.

    Args:
        registry: where the metrics are registered; a new `CollectorRegistry` when None
            (pass `prometheus_client.REGISTRY` to serve them with your own).

    Raises:
        ConfigurationError: prometheus-client is not installed.
    """

    enabled = True

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        try:
            import prometheus_client
        except ImportError:
            raise ConfigurationError(_MISSING) from None
        if registry is None:
            # The process's own CPU, memory, open files, Python and its garbage collector
            # (prometheus-client's standard collectors, which its default registry has)
            registry = prometheus_client.CollectorRegistry()
            prometheus_client.ProcessCollector(registry=registry)
            prometheus_client.PlatformCollector(registry=registry)
            prometheus_client.GCCollector(registry=registry)
        self.registry = registry
        # Every number, nested by label value (a look-up allocates nothing; a tuple key
        # would, per job): kind → queue (→ state), queue, or channel → outcome.
        self._lock = threading.Lock()
        self._enqueued: dict[str, dict[str, _Count]] = {}
        self._completed: dict[str, dict[str, dict[str, _Count]]] = {}
        self._duration: dict[str, dict[str, _Histogram]] = {}
        self._wait: dict[str, _Histogram] = {}
        self._deliveries: dict[str, dict[str, _Count]] = {}
        self._requests: dict[str, dict[str, dict[int, _Count]]] = {}  # route → method → status
        self._answers: dict[str, dict[str, _Histogram]] = {}  # route → method
        self._slots: list[Callable[[], tuple[int, int]]] = []
        self._wal: _WalCollector | None = None  # registered with the first SQLite file
        self.queues = QueueGauges()
        for collector in (_Collector(self), _SlotsCollector(self._slots), self.queues):
            self.registry.register(collector)

    # The hooks take the lock by hand: `with` costs twice as much on CPython 3.11.

    def enqueued(self, kind: str, queue: str, count: int = 1) -> None:
        cell = _cell(self._enqueued, kind, queue, _Count)
        self._lock.acquire()
        try:
            cell.value += count
        finally:
            self._lock.release()

    def stored(self, envelopes: Sequence[Envelope], results: Sequence[EnqueueResult]) -> None:
        if len(envelopes) == 1:
            if results[0].created:
                self.enqueued(envelopes[0].kind, envelopes[0].queue)
            return
        counts: dict[tuple[str, str], int] = {}  # a batch: one update per (kind, queue)
        for envelope, result in zip(envelopes, results, strict=True):
            if result.created:
                pair = (envelope.kind, envelope.queue)
                counts[pair] = counts.get(pair, 0) + 1
        for (kind, queue), n in counts.items():
            self.enqueued(kind, queue, n)

    def started(self, queue: str, waited_s: float) -> None:
        histogram = self._wait.get(queue) or self._wait.setdefault(queue, _Histogram())
        value = waited_s if waited_s > 0.0 else 0.0
        slot = bisect.bisect_left(DURATION_BUCKETS, value)  # the first bound >= value
        self._lock.acquire()
        try:
            histogram.counts[slot] += 1
            histogram.sum += value
        finally:
            self._lock.release()

    def ended(self, kind: str, queue: str, state: str, ran_s: float | None = None) -> None:
        by_state = _cell(self._completed, kind, queue, dict)
        cell = by_state.get(state) or by_state.setdefault(state, _Count())
        if ran_s is None:
            self._lock.acquire()
            try:
                cell.value += 1
            finally:
                self._lock.release()
            return
        histogram = _cell(self._duration, kind, queue, _Histogram)
        slot = bisect.bisect_left(DURATION_BUCKETS, ran_s)
        self._lock.acquire()
        try:
            cell.value += 1
            histogram.counts[slot] += 1
            histogram.sum += ran_s
        finally:
            self._lock.release()

    def delivered(self, channel: str, outcome: str) -> None:
        cell = _cell(self._deliveries, channel, outcome, _Count)
        self._lock.acquire()
        try:
            cell.value += 1
        finally:
            self._lock.release()

    def answered(self, method: str, route: str, status: int, took_s: float) -> None:
        if method not in HTTP_METHODS and method != "WS":
            method = "other"
        by_status = _cell(self._requests, route, method, dict)
        cell = by_status.get(status) or by_status.setdefault(status, _Count())
        histogram = _cell(self._answers, route, method, _http_histogram)
        slot = bisect.bisect_left(HTTP_BUCKETS, took_s)
        self._lock.acquire()
        try:
            cell.value += 1
            histogram.counts[slot] += 1
            histogram.sum += took_s
        finally:
            self._lock.release()

    def watch_slots(self, read: Callable[[], tuple[int, int]]) -> Callable[[], None]:
        """Report `read()` = (busy, total) slots of a worker as `offload_worker_slots` at
        scrape time (nothing is written per job); returns the function that stops it."""
        self._slots.append(read)
        return lambda: self._slots.remove(read)

    def watch_wal(self, read: Callable[[], WalReading | None]) -> Callable[[], None]:
        """Report `read()`, a SQLite backend's WAL, as `offload_sqlite_*` at scrape time
        (`SQLITE_METRIC_NAMES`, registered with the first one watched); returns the function
        that stops it."""
        with self._lock:
            if self._wal is None:
                self._wal = _WalCollector()
                self.registry.register(self._wal)
            reads = self._wal.reads
        reads.append(read)
        return lambda: reads.remove(read)

    def render(self) -> bytes:
        """Every metric in the Prometheus text format (`CONTENT_TYPE`)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _Count:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0


class _Histogram:
    """Counts per bucket (the last: above them all) and the sum; `DURATION_BUCKETS` unless
    told other bounds."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[str, ...] = _JOB_BOUNDS) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative counts by upper bound, as the text format has them (`le`)."""
        out, total = [], 0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            total += count
            out.append((bound, float(total)))
        return out


def _http_histogram() -> _Histogram:
    return _Histogram(_HTTP_BOUNDS)


T = TypeVar("T")


def _cell(cache: dict[str, dict[str, T]], first: str, second: str, make: Callable[[], T]) -> T:
    """The value under two label values, made on first use (setdefault: a race between
    two threads keeps one)."""
    inner = cache.get(first)
    if inner is None:
        inner = cache.setdefault(first, {})
    cell = inner.get(second)
    if cell is None:
        cell = inner.setdefault(second, make())
    return cell


class _Collector:
    """The counters and histograms of one `Metrics`, read at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        m = self.metrics
        enqueued = CounterMetricFamily(
            "offload_jobs_enqueued", "Jobs stored by enqueue (a replayed key not)",
            labels=("kind", "queue"),
        )  # fmt: skip
        completed = CounterMetricFamily(
            "offload_jobs_completed",
            "Attempts ended, by the state they left the job in (retrying: it runs again)",
            labels=("kind", "queue", "state"),
        )  # fmt: skip
        duration = HistogramMetricFamily(
            "offload_job_duration_seconds", "How long an attempt ran, from its start to its end",
            labels=("kind", "queue"),
        )  # fmt: skip
        wait = HistogramMetricFamily(
            "offload_job_wait_seconds",
            "From when a job was due (enqueued, or its run_at) until a worker started it",
            labels=("queue",),
        )  # fmt: skip
        deliveries = CounterMetricFamily(
            "offload_deliveries", "Webhook and email delivery attempts, by outcome",
            labels=("channel", "outcome"),
        )  # fmt: skip
        requests = CounterMetricFamily(
            "offload_http_requests", "Requests the web tier answered, by route and status",
            labels=("method", "route", "status"),
        )  # fmt: skip
        answers = HistogramMetricFamily(
            "offload_http_request_duration_seconds",
            "How long the web tier took to answer (an event stream: its whole life)",
            labels=("method", "route"),
        )  # fmt: skip
        with m._lock:  # one consistent reading
            for (kind, queue), count in _pairs(m._enqueued):
                enqueued.add_metric((kind, queue), count.value)
            for (kind, queue), states in _pairs(m._completed):
                for state, count in sorted(states.items()):
                    completed.add_metric((kind, queue, state), count.value)
            for (kind, queue), hist in _pairs(m._duration):
                duration.add_metric((kind, queue), hist.buckets(), hist.sum)
            for queue, hist in sorted(m._wait.items()):
                wait.add_metric((queue,), hist.buckets(), hist.sum)
            for (channel, outcome), count in _pairs(m._deliveries):
                deliveries.add_metric((channel, outcome), count.value)
            for (route, method), statuses in _pairs(m._requests):
                for status, count in sorted(statuses.items()):
                    requests.add_metric((method, route, str(status)), count.value)
            for (route, method), hist in _pairs(m._answers):
                answers.add_metric((method, route), hist.buckets(), hist.sum)
        yield from (enqueued, completed, duration, wait, deliveries, requests, answers)

    def describe(self) -> list[Metric]:
        return []  # collected at scrape time only (never while registering)


def _pairs(nested: dict[str, dict[str, T]]) -> list[tuple[tuple[str, str], T]]:
    return sorted(((a, b), v) for a, inner in nested.items() for b, v in inner.items())


class _SlotsCollector:
    """`offload_worker_slots{state}`: busy and idle slots of the workers watched, summed."""

    def __init__(self, reads: list[Callable[[], tuple[int, int]]]) -> None:
        self.reads = reads

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(
            "offload_worker_slots", "Handler slots of this process's workers", labels=("state",)
        )
        busy = total = 0
        for read in list(self.reads):
            b, t = read()
            busy, total = busy + b, total + t
        if self.reads:
            family.add_metric(("busy",), busy)
            family.add_metric(("idle",), total - busy)
        yield family

    def describe(self) -> list[Metric]:
        return []  # collected at scrape time only (never while registering)


class _WalCollector:
    """`offload_sqlite_*`: the WAL of each SQLite file watched. Backends of one file (an
    App and the twin its blocking calls use) share its counts: it counts once."""

    def __init__(self) -> None:
        self.reads: list[Callable[[], WalReading | None]] = []

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        wal = GaugeMetricFamily(
            "offload_sqlite_wal_bytes", "Size of the SQLite write-ahead log's file"
        )
        bound = GaugeMetricFamily(
            "offload_sqlite_wal_bound_bytes",
            "The most the write-ahead log may take: twice the database, or its cap",
        )
        pauses = CounterMetricFamily(
            "offload_sqlite_write_pauses",
            "Times writes waited for the write-ahead log's rewind (past half its bound)",
        )
        spent = CounterMetricFamily(
            "offload_sqlite_write_pauses_spent",
            "Write pauses that ran out with the log not rewound (a reader held on to it)",
        )
        seconds = CounterMetricFamily(
            "offload_sqlite_write_pause_seconds", "Seconds writes waited for the log's rewind"
        )
        files: dict[str, WalReading] = {}
        for read in list(self.reads):
            reading = read()
            if reading is not None:
                files.setdefault(reading.path, reading)
        if files:
            readings = files.values()
            wal.add_metric((), max(r.wal_bytes for r in readings))
            bound.add_metric((), max(r.bound_bytes for r in readings))
            pauses.add_metric((), sum(r.pauses for r in readings))
            spent.add_metric((), sum(r.spent_pauses for r in readings))
            seconds.add_metric((), sum(r.paused_s for r in readings))
        yield from (wal, bound, pauses, spent, seconds)

    def describe(self) -> list[Metric]:
        return []  # collected at scrape time only (never while registering)


class QueueGauges:
    """`offload_queue_depth{queue,state}`, `offload_queue_oldest_age_seconds{queue}` and
    `offload_queue_paused{queue}`, from the backend's stats as last read by `refresh`
    (nothing before the first), and `offload_queue_stats_up`: 1 when the last scrape got
    them, 0 when the backend did not answer it in time (the queue gauges are left out; a
    frozen depth would read as a queue that stopped moving)."""

    def __init__(self, wait_s: float = QUEUE_STATS_WAIT_S) -> None:
        self.stats: Mapping[str, Mapping[str, Any]] = {}
        #: When the stats were read (the reader's clock), None before the first reading.
        self.read_at: float | None = None
        #: Whether the last scrape got the stats; None where none asked (a worker's own).
        self.up: bool | None = None
        #: Longest a scrape waits for a reading (seconds).
        self.wait_s = wait_s
        self._reading: asyncio.Future[None] | None = None

    async def refresh(
        self,
        read: Callable[[], Awaitable[Mapping[str, Mapping[str, Any]]]],
        now: Callable[[], float],
        ttl_s: float = QUEUE_STATS_TTL_S,
    ) -> None:
        """Read the stats unless the last reading is under `ttl_s` old; scrapes that come
        while a reading is under way wait for it and share it (one query for all).

        A reading the backend has not answered within `self.wait_s`, or that it could not answer
        (`BackendError`), leaves the stats out of this scrape (`up` False): the process's
        own counters are still served, where a scrape that failed lost them too. A reading
        still under way goes on; the scrapes within its time-to-live after it ends get it.
        """
        if self._fresh(now(), ttl_s):
            self.up = True
            return
        if self._reading is None:
            self._reading = asyncio.ensure_future(self._read(read, now))
            self._reading.add_done_callback(self._ended)
        reading = self._reading
        done, _ = await asyncio.wait((reading,), timeout=self.wait_s)
        if not done or reading.cancelled():
            self.up = False
            return
        try:
            reading.result()
        except (BackendError, TimeoutError):
            self.up = False
        else:
            self.up = True

    async def _read(
        self,
        read: Callable[[], Awaitable[Mapping[str, Mapping[str, Any]]]],
        now: Callable[[], float],
    ) -> None:
        # Bounded: a reading stuck on a connection that never answers (no reply, no reset)
        # would keep every later scrape waiting on it after the backend is back.
        async with asyncio.timeout(STUCK_READING_S):
            self.stats = await read()
        self.read_at = now()

    def _ended(self, reading: asyncio.Future[None]) -> None:
        """A reading ended (answered, failed, timed out or cancelled): the next scrape
        starts a new one; its error is taken here, as no scrape may have waited for it."""
        if self._reading is reading:
            self._reading = None
        if not reading.cancelled():
            reading.exception()

    def _fresh(self, now: float, ttl_s: float) -> bool:
        return self.read_at is not None and 0 <= now - self.read_at < ttl_s

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        depth = GaugeMetricFamily(
            "offload_queue_depth", "Jobs per queue and state", labels=("queue", "state")
        )
        age = GaugeMetricFamily(
            "offload_queue_oldest_age_seconds",
            "Age of each queue's oldest job ready to run",
            labels=("queue",),
        )
        paused = GaugeMetricFamily(
            "offload_queue_paused",
            "1 while a queue is paused (no worker claims from it), else 0",
            labels=("queue",),
        )
        if self.up is not False:
            for queue, stats in sorted(self.stats.items()):
                for state in DEPTH_STATES:
                    depth.add_metric((queue, state), float(stats.get(state, 0)))
                age.add_metric((queue,), float(stats.get("oldest_age_s", 0.0)))
                paused.add_metric((queue,), 1.0 if stats.get("paused") else 0.0)
        yield depth
        yield age
        yield paused
        up = GaugeMetricFamily(
            "offload_queue_stats_up",
            "1 when this scrape read the queue gauges from the backend, 0 when the backend "
            "did not answer in time (the queue gauges are left out)",
        )
        if self.up is not None:  # no sample where no scrape reads the stats (a worker's)
            up.add_metric((), 1.0 if self.up else 0.0)
        yield up

    def describe(self) -> list[Metric]:
        return []


def serve(
    metrics: Metrics,
    port: int,
    host: str = "127.0.0.1",
    health: Callable[[], str | None] | None = None,
) -> Callable[[], None]:
    """Serve `metrics` over HTTP on `host:port` from a thread (a worker's endpoint); returns
    the function that stops the server. It answers `GET /metrics`, `GET /healthz` where a
    `health` check is given (`200`, or `503` with what it said is wrong), and anything else
    with a problem document (404, 405). Bound to loopback, it answers only requests sent to a
    loopback name (`Host`): it asks no credentials, and a page whose name was rebound to
    127.0.0.1 would otherwise read it (421 for those).

    Raises:
        ConfigurationError: the port cannot be bound.
    """
    from ._metrics_endpoint import serve_registry  # the HTTP server, loaded when served

    return serve_registry(metrics.registry, port, host, health)


__all__ = [
    "CONTENT_TYPE",
    "METRIC_NAMES",
    "NO_METRICS",
    "SQLITE_METRIC_NAMES",
    "Metrics",
    "NoMetrics",
    "available",
    "serve",
]
