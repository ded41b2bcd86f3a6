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
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from .contract import EnqueueResult, Envelope

#: The media type of the Prometheus text format `render` writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Seconds one reading of the queue stats serves every scrape (many scrapers, one query).
QUEUE_STATS_TTL_S = 1.0
#: Buckets of the run time and the wait histograms (seconds): 5 ms to an hour.
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0
)  # fmt: skip
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
    "offload_worker_slots",
    "offload_deliveries_total",
)
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

    def watch_slots(self, read: Callable[[], tuple[int, int]]) -> Callable[[], None]:
        """Report a worker's slots at scrape time; returns the function that stops it."""
        return _nothing


def _nothing() -> None:
    pass


#: The hooks of an app whose metrics are off.
NO_METRICS = NoMetrics()


class Metrics(NoMetrics):
    """offload's Prometheus metrics, in one registry.

    Args:
        registry: where the metrics are registered; a new `CollectorRegistry` when None
            (pass `prometheus_client.REGISTRY` to serve them with your own).

    Raises:
        ConfigurationError: prometheus-client is not installed.
    """

    enabled = True

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Histogram
        except ImportError:
            raise ConfigurationError(_MISSING) from None
        self.registry = CollectorRegistry() if registry is None else registry
        r = self.registry
        self._enqueued = Counter(
            "offload_jobs_enqueued", "Jobs stored by enqueue (a replayed key not)",
            ("kind", "queue"), registry=r,
        )  # fmt: skip
        self._completed = Counter(
            "offload_jobs_completed",
            "Attempts ended, by the state they left the job in (retrying: it runs again)",
            ("kind", "queue", "state"), registry=r,
        )  # fmt: skip
        self._duration = Histogram(
            "offload_job_duration_seconds", "How long an attempt ran, from its start to its end",
            ("kind", "queue"), buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self._wait = Histogram(
            "offload_job_wait_seconds",
            "From when a job was due (enqueued, or its run_at) until a worker started it",
            ("queue",), buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self._deliveries = Counter(
            "offload_deliveries", "Webhook and email delivery attempts, by outcome",
            ("channel", "outcome"), registry=r,
        )  # fmt: skip
        # Label children resolved once, in nested dicts keyed by label value: a hook's
        # look-up allocates nothing (a tuple key would, per job).
        self._enqueued_of: dict[str, dict[str, Any]] = {}
        self._duration_of: dict[str, dict[str, Any]] = {}
        self._completed_of: dict[str, dict[str, dict[str, Any]]] = {}
        self._wait_of: dict[str, Any] = {}
        self._deliveries_of: dict[str, dict[str, Any]] = {}
        self._slots: list[Callable[[], tuple[int, int]]] = []
        self.queues = QueueGauges()
        r.register(_SlotsCollector(self._slots))
        r.register(self.queues)

    def enqueued(self, kind: str, queue: str, count: int = 1) -> None:
        _child(self._enqueued_of, self._enqueued, kind, queue).inc(count)

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
        child = self._wait_of.get(queue)
        if child is None:
            child = self._wait_of[queue] = self._wait.labels(queue)
        child.observe(waited_s if waited_s > 0.0 else 0.0)

    def ended(self, kind: str, queue: str, state: str, ran_s: float | None = None) -> None:
        of_kind = self._completed_of.get(kind)
        if of_kind is None:
            of_kind = self._completed_of[kind] = {}
        by_state = of_kind.get(queue)
        if by_state is None:
            by_state = of_kind[queue] = {}
        child = by_state.get(state)
        if child is None:
            child = by_state[state] = self._completed.labels(kind, queue, state)
        child.inc()
        if ran_s is not None:
            _child(self._duration_of, self._duration, kind, queue).observe(ran_s)

    def delivered(self, channel: str, outcome: str) -> None:
        _child(self._deliveries_of, self._deliveries, channel, outcome).inc()

    def watch_slots(self, read: Callable[[], tuple[int, int]]) -> Callable[[], None]:
        """Report `read()` = (busy, total) slots of a worker as `offload_worker_slots` at
        scrape time (nothing is written per job); returns the function that stops it."""
        self._slots.append(read)
        return lambda: self._slots.remove(read)

    def render(self) -> bytes:
        """Every metric in the Prometheus text format (`CONTENT_TYPE`)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def _child(cache: dict[str, dict[str, Any]], metric: Any, first: str, second: str) -> Any:
    """The child of a two-label metric, resolved on first use and kept in `cache`."""
    inner = cache.get(first)
    if inner is None:
        inner = cache[first] = {}
    child = inner.get(second)
    if child is None:
        child = inner[second] = metric.labels(first, second)
    return child


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


class QueueGauges:
    """`offload_queue_depth{queue,state}` and `offload_queue_oldest_age_seconds{queue}`,
    from the backend's stats as last read by `refresh` (nothing before the first)."""

    def __init__(self) -> None:
        self.stats: Mapping[str, Mapping[str, Any]] = {}
        #: When the stats were read (the reader's clock), None before the first reading.
        self.read_at: float | None = None
        self._lock: asyncio.Lock | None = None

    async def refresh(
        self,
        read: Callable[[], Awaitable[Mapping[str, Mapping[str, Any]]]],
        now: Callable[[], float],
        ttl_s: float = QUEUE_STATS_TTL_S,
    ) -> None:
        """Read the stats unless the last reading is under `ttl_s` old; scrapes that come
        while a reading is under way wait for it and share it (one query for all)."""
        if self._fresh(now(), ttl_s):
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._fresh(now(), ttl_s):
                return  # read by the scrape this one waited for
            self.stats = await read()
            self.read_at = now()

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
        for queue, stats in sorted(self.stats.items()):
            for state in DEPTH_STATES:
                depth.add_metric((queue, state), float(stats.get(state, 0)))
            age.add_metric((queue,), float(stats.get("oldest_age_s", 0.0)))
        yield depth
        yield age

    def describe(self) -> list[Metric]:
        return []


def serve(metrics: Metrics, port: int, host: str = "127.0.0.1") -> Callable[[], None]:
    """Serve `metrics` over HTTP on `host:port` from a thread (a worker's endpoint); returns
    the function that stops the server.

    Raises:
        ConfigurationError: the port cannot be bound.
    """
    from prometheus_client import start_http_server

    try:
        server, thread = start_http_server(port, host, registry=metrics.registry)
    except OSError as exc:
        raise ConfigurationError(f"cannot serve metrics on {host}:{port}: {exc}") from None

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join()

    return stop


__all__ = [
    "CONTENT_TYPE",
    "METRIC_NAMES",
    "NO_METRICS",
    "Metrics",
    "NoMetrics",
    "available",
    "serve",
]
