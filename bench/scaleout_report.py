"""The scale-out benchmark's figures: ratios per doubling of hosts, where an engine
saturates, the Markdown table and the chart. Pure functions of the measured points."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: A doubling of hosts "helps" while it multiplies throughput by at least this.
DEFAULT_HELPS = 1.5


@dataclass(frozen=True)
class Point:
    """One drain: `jobs` jobs of `kind` (wait, noop) run by `hosts` hosts on `engine`."""

    engine: str
    kind: str
    hosts: int
    jobs: int
    seconds: float
    #: CPU seconds the hosts' worker processes, and the engine's processes, spent in it.
    worker_cpu_s: float = 0.0
    engine_cpu_s: float = 0.0
    #: The machine's 1-minute load average as the drain ended (runnable processes).
    load: float = 0.0

    @property
    def rate(self) -> float:
        """Jobs settled per second (each job is claimed once: also claims per second)."""
        return self.jobs / self.seconds if self.seconds > 0 else 0.0

    @property
    def worker_ms(self) -> float:
        """Worker CPU milliseconds per job."""
        return 1000 * self.worker_cpu_s / self.jobs if self.jobs else 0.0

    @property
    def engine_ms(self) -> float:
        """Engine CPU milliseconds per job (its claim, its settle, and the bench's polls)."""
        return 1000 * self.engine_cpu_s / self.jobs if self.jobs else 0.0

    @property
    def core_limit(self) -> float | None:
        """Jobs (claims) per second at which the engine would fill one core of its own, at
        this CPU cost per job; None when no engine CPU was measured."""
        return 1000 / self.engine_ms if self.engine_ms > 0 else None


def ideal(hosts: int, concurrency: int, wait_s: float) -> float:
    """Jobs/s of `hosts` hosts with `concurrency` slots each, if claiming cost nothing."""
    return hosts * concurrency / wait_s


def ratios(rates: dict[int, float]) -> dict[int, float | None]:
    """Per host count, its rate over the rate of half as many hosts (None: no such point,
    or a zero rate to compare with)."""
    out: dict[int, float | None] = {}
    for hosts, rate in sorted(rates.items()):
        half = rates.get(hosts // 2) if hosts % 2 == 0 else None
        out[hosts] = rate / half if half else None
    return out


@dataclass(frozen=True)
class Saturation:
    """Where adding hosts stopped helping: the first doubling to `hosts` that multiplied the
    rate by less than the threshold (None: every doubling helped), and the highest rate
    seen (jobs, so claims, per second) with the host count it was seen at."""

    hosts: int | None
    peak_rate: float
    peak_hosts: int


def saturation(rates: dict[int, float], helps: float = DEFAULT_HELPS) -> Saturation:
    """The saturation of one engine's drain `rates` (host count -> jobs/s).

    Raises:
        ValueError: no rates.
    """
    if not rates:
        raise ValueError("no rates")
    stopped = next(
        (h for h, r in sorted(ratios(rates).items()) if r is not None and r < helps), None
    )
    peak_hosts = max(rates, key=lambda h: rates[h])
    return Saturation(hosts=stopped, peak_rate=rates[peak_hosts], peak_hosts=peak_hosts)


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def table(points: Sequence[Point], *, concurrency: int, wait_s: float) -> list[str]:
    """The Markdown rows of the drain points (kind `wait`), one engine after the other."""
    lines = [
        "| engine | hosts | jobs | seconds | jobs/s | per doubling | per host | of ideal "
        "| worker CPU ms/job | engine CPU ms/job | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for engine in dict.fromkeys(p.engine for p in points):
        mine = [p for p in points if p.engine == engine and p.kind == "wait"]
        step = ratios({p.hosts: p.rate for p in mine})
        for p in sorted(mine, key=lambda p: p.hosts):
            lines.append(
                f"| {engine} | {p.hosts} | {p.jobs:,} | {p.seconds:.2f} | {p.rate:,.0f} | "
                f"{_ratio(step[p.hosts])} | {p.rate / p.hosts:,.0f} | "
                f"{p.rate / ideal(p.hosts, concurrency, wait_s):.0%} | "
                f"{p.worker_ms:.2f} | {p.engine_ms:.3f} | {p.load:.1f} |"
            )
    return lines


def saturation_lines(points: Sequence[Point], helps: float = DEFAULT_HELPS) -> list[str]:
    """One line per engine: where it saturated, its peak rate and its claim-only rate."""
    lines = []
    for engine in dict.fromkeys(p.engine for p in points):
        rates = {p.hosts: p.rate for p in points if p.engine == engine and p.kind == "wait"}
        if not rates:
            continue
        sat = saturation(rates, helps)
        where = (
            f"adding hosts stopped helping at {sat.hosts} hosts (less than {helps:g}x for "
            "the doubling)"
            if sat.hosts is not None
            else f"every doubling up to {max(rates)} hosts helped (at least {helps:g}x)"
        )
        lines.append(
            f"- **{engine}**: {where}; peak {sat.peak_rate:,.0f} claims/s at "
            f"{sat.peak_hosts} hosts{_claim_only(points, engine)}."
        )
    return lines


def machine_note(points: Sequence[Point], cores: int) -> str:
    """What the machine was doing: the load averages seen, and whether it was busy (a load
    above its cores: processes of others waited for a core too)."""
    if not points:
        return ""
    low, high = min(p.load for p in points), max(p.load for p in points)
    seen = f"1-minute load average {low:.1f} to {high:.1f} on {cores} cores"
    if high > cores:
        return (
            f"**Run on a busy machine** ({seen}: other work ran at the same time, and our "
            "processes had only a share of the cores): compare within this run only, and "
            "read the CPU per job rather than the rates."
        )
    return f"Run on a quiet machine ({seen})."


def _claim_only(points: Sequence[Point], engine: str) -> str:
    """The claim-only run's figures for `engine`, as a clause ('' when there is none)."""
    noop = [p for p in points if p.engine == engine and p.kind == "noop"]
    if not noop:
        return ""
    p = noop[0]
    limit = f"{p.core_limit:,.0f}" if p.core_limit is not None else "n/a"
    return (
        f"; claim-only run ({p.hosts} hosts, jobs that do nothing): {p.rate:,.0f} claims/s, "
        f"the engine spending {p.engine_ms:.3f} ms of CPU per job (claim and settle), so one "
        f"core of its own would saturate at about {limit} claims/s"
    )


def chart(path: Path, points: Sequence[Point], *, concurrency: int, wait_s: float) -> None:
    """Throughput against hosts, one line per engine and the ideal line, as a PNG."""
    from offload.bench.chart import line_chart

    series: dict[str, list[tuple[float, float]]] = {}
    for p in sorted(points, key=lambda p: p.hosts):
        if p.kind == "wait":
            series.setdefault(p.engine, []).append((p.hosts, p.rate))
    hosts = sorted({p.hosts for p in points if p.kind == "wait"})
    reference = f"ideal: hosts x {concurrency} slots / {wait_s * 1000:g} ms"
    series[reference] = [(h, ideal(h, concurrency, wait_s)) for h in hosts]
    line_chart(
        path,
        series,
        title="Drain throughput against worker hosts (jobs/s; each host a network namespace)",
        x_label="hosts",
        y_label="jobs/s",
        x_ticks=[float(h) for h in hosts],
        dashed=[reference],
    )
