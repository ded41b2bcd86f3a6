"""Periodic jobs: a schedule's declaration, its ticks, and which ticks to enqueue when.

Time here is float epoch seconds (the `Clock`'s); a cron schedule reads the wall clock of its
time zone (zoneinfo), so "0 7 * * *" in Europe/Paris is 07:00 there across DST changes: a
tick that falls in the hour skipped in spring runs when it ends (03:00), a fixed time in the
hour repeated in autumn runs once (its first occurrence), and an expression whose hour is a
wildcard runs in both passes of that hour, as Debian cron does (cronsim's rules).
An `every` schedule ticks at the multiples of its interval since the epoch, so every process
agrees on its ticks without talking to another.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from .clock import iso
from .contract import Message, ScheduleState
from .errors import ConfigurationError

log = logging.getLogger("offload.periodic")

#: The owner of the jobs schedules enqueue (and the scope of their idempotency keys).
PERIODIC_OWNER = "offload.periodic"
#: Time zone of a cron schedule that names none.
DEFAULT_TZ = "UTC"
#: Seconds a tick may be late and still count as on time (a stalled loop, a busy machine);
#: an older tick that no scheduler enqueued counts as missed (see `catch_up`).
DEFAULT_LATE_S = 30.0
#: Seconds after a tick that a listing says the schedule is missed when no scheduler has
#: enqueued it (`missed_since`): well past a scheduler's poll (5 s) and a late tick.
MISSED_AFTER_S = 60.0
#: The shortest `every` interval, seconds.
MIN_EVERY_S = 1.0
#: The most missed ticks a schedule may catch up at once (one transaction stores them).
MAX_CATCH_UP = 1000
#: The longest name a schedule should be given (a longer one is warned of when declared).
MAX_NAME_LENGTH = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    """One periodic job: its message, enqueued at each tick of `cron` (in `tz`) or `every`.

    Attributes:
        name: stable across processes and deployments: the key of its stored state and of
            its jobs' idempotency keys.
        catch_up: after downtime (no scheduler running at a tick), how many of the most
            recent missed ticks to enqueue: 0 skips them all.
    """

    name: str
    message: Message
    kind: str
    cron: str | None
    tz: str
    every_s: float | None
    catch_up: int

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    def spec(self) -> dict[str, Any]:
        """How it ticks, as stored with its state (for listings made without the code)."""
        return {
            "kind": self.kind,
            "cron": self.cron,
            "tz": self.tz,
            "every_s": self.every_s,
            "catch_up": self.catch_up,
        }

    def next_after(self, t: float) -> float | None:
        """The first tick strictly after `t` (None: a cron that never matches again)."""
        return next_tick(self.spec(), t)

    def ticks_back(self, t: float) -> Iterator[float]:
        """The ticks at or before `t`, newest first."""
        if self.every_s is not None:
            k = t // self.every_s
            while True:
                yield k * self.every_s
                k -= 1
        # cronsim's reverse iteration starts strictly before its start: one second on.
        start = datetime.fromtimestamp(int(t // 1) + 1, self.zone)
        for dt in CronSim(self.cron or "", start, reverse=True):
            yield dt.timestamp()

    def key(self, tick: float) -> str:
        """The idempotency key of the job of one tick (owner `PERIODIC_OWNER`)."""
        return f"{self.name}@{iso(tick)}"


def next_tick(spec: Mapping[str, Any], t: float) -> float | None:
    """The first tick strictly after `t` of a schedule that ticks as `spec` says
    (`Schedule.spec`); None for a cron that never matches again."""
    every_s = spec.get("every_s")
    if every_s:
        return float((t // every_s + 1) * every_s)
    zone = ZoneInfo(spec.get("tz") or DEFAULT_TZ)
    try:
        return next(CronSim(spec["cron"], datetime.fromtimestamp(t, zone))).timestamp()
    except StopIteration:
        return None


def listing(
    declared: Mapping[str, Schedule],
    states: Sequence[ScheduleState],
    now: float,
    live: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Every schedule declared here, stored, or declared by a live worker (`live`, by name:
    its spec), by name: how it ticks, its next run, its last run and that run's job id, and
    since which tick it is missed (`missed_since`; no next run then: no scheduler runs it). A
    schedule not declared here (declared in a worker module this process did not import, or
    removed) shows the spec stored with its state, else the one a live worker declares (a
    new schedule before its first tick)."""
    live = live or {}
    stored = {s.name: s for s in states}
    entries = []
    for name in sorted({*declared, *stored, *live}):
        state = stored.get(name)
        schedule = declared.get(name)
        if schedule is not None:
            spec = schedule.spec()
        else:
            spec = dict(state.spec if state else live[name])
        missed = missed_since(spec, state.last_tick, now) if spec and state else None
        entries.append(
            {
                "name": name,
                **spec,
                "declared": schedule is not None,
                "next_run": iso(next_tick(spec, now)) if spec and missed is None else None,
                "last_run": iso(state.last_tick) if state else None,
                "last_job_id": state.last_job_id if state else None,
                "missed_since": iso(missed) if missed is not None else None,
            }
        )
    return entries


def missed_since(spec: Mapping[str, Any], last: float, now: float) -> float | None:
    """The first tick after `last` (the newest tick enqueued) when it came more than
    `MISSED_AFTER_S` before `now`: no scheduler enqueued it, so no worker that declares the
    schedule runs (it was retired, or every worker is down). None while it is kept."""
    first = next_tick(spec, last)
    if first is None or first > now - MISSED_AFTER_S:
        return None
    return first


def declare(
    message: Message,
    kind: str,
    *,
    cron: str | None,
    tz: str | ZoneInfo | None,
    every: timedelta | None,
    catch_up: int,
    name: str | None,
) -> Schedule:
    """A checked schedule.

    Raises:
        ConfigurationError: both or neither of `cron` and `every`, a bad cron expression,
            an unknown time zone, `tz` with `every`, an interval under `MIN_EVERY_S`, or a
            `catch_up` outside 0 to `MAX_CATCH_UP`.
    """
    if (cron is None) == (every is None):
        raise ConfigurationError(f"periodic {kind!r}: give exactly one of cron= and every=")
    if isinstance(catch_up, bool) or not isinstance(catch_up, int):
        raise ConfigurationError(f"periodic {kind!r}: catch_up must be an int")
    if not 0 <= catch_up <= MAX_CATCH_UP:
        raise ConfigurationError(f"periodic {kind!r}: catch_up must be 0 to {MAX_CATCH_UP}")
    if name is not None and not isinstance(name, str):
        raise ConfigurationError(
            f"periodic {kind!r}: name= must be a str, not {type(name).__name__}"
        )
    if name is not None and (why := _name_fault(name)):
        # Warned of, not refused: a schedule that ran under such a name keeps its state
        # (and the workers of a deploy start); a new name would start a new schedule.
        log.warning(
            "periodic %r: name= %s; a name keys the schedule's state, so renaming it starts "
            "a new schedule",
            kind,
            why,
            extra={"action": "schedule_name"},
        )
    if isinstance(tz, ZoneInfo):
        tz = tz.key
    every_s = None
    if every is not None:
        every_s = _interval(kind, every, tz)
        # `%g` as ever: a schedule's name keys its state, and renaming every one whose
        # interval `%g` rounds (1234567 s) would double its ticks beside older workers.
        derived = f"{kind}@every {every_s:g}s"
    else:
        tz = tz or DEFAULT_TZ
        _check_cron(kind, cron or "", tz)
        derived = f"{kind}@{cron} {tz}"
    return Schedule(
        name=name if name is not None else derived,
        message=message,
        kind=kind,
        cron=cron,
        tz=tz or DEFAULT_TZ,
        every_s=every_s,
        catch_up=catch_up,
    )


def _name_fault(name: str) -> str | None:
    """Why `name` names a schedule badly, or None."""
    if not name.strip():
        return "must not be empty"
    if name != name.strip() or not name.isprintable():
        return f"{name!r} has white space around it or a control character"
    if len(name) > MAX_NAME_LENGTH:
        return f"is longer than {MAX_NAME_LENGTH} characters"
    return None


def _interval(kind: str, every: timedelta, tz: str | None) -> float:
    if not isinstance(every, timedelta):
        raise ConfigurationError(f"periodic {kind!r}: every= must be a timedelta")
    if tz is not None:
        raise ConfigurationError(
            f"periodic {kind!r}: tz= applies to cron= only (every= ticks from the epoch)"
        )
    seconds = every.total_seconds()
    if seconds < MIN_EVERY_S:
        raise ConfigurationError(
            f"periodic {kind!r}: every= must be at least {MIN_EVERY_S:g} second"
        )
    return seconds


def _check_cron(kind: str, cron: str, tz: str) -> None:
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(f"periodic {kind!r}: unknown time zone {tz!r}") from None
    try:
        CronSim(cron, datetime.now(UTC).astimezone(zone))
    except CronSimError as exc:
        raise ConfigurationError(f"periodic {kind!r}: bad cron {cron!r}: {exc}") from None


def due(schedule: Schedule, *, last: float | None, now: float, since: float) -> list[float]:
    """The ticks to enqueue at `now`, oldest first.

    Args:
        last: the newest tick enqueued by any process (stored), or None when none ever was.
        since: when this process's scheduler started.

    A tick after `last` and at or before `now` is on time when this scheduler was running
    at it (`since` or later) and it is the current tick or at most `DEFAULT_LATE_S` old;
    every other such tick fell due while no scheduler ran (or was suspended) and is missed:
    only the `catch_up` newest of those are enqueued. A schedule never enqueued before
    misses nothing.
    """
    on_time: list[float] = []
    missed: list[float] = []
    current = True
    for tick in schedule.ticks_back(now):
        if last is not None and tick <= last:
            break
        if tick >= since and (current or now - tick <= DEFAULT_LATE_S):
            on_time.append(tick)
        elif last is None or len(missed) >= schedule.catch_up:
            break
        else:
            missed.append(tick)
        current = False
    return sorted(missed + on_time)
