"""An injectable clock, so tests can move time instead of sleeping."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta
from typing import ClassVar


class Clock:
    """Wall-clock time as float epoch seconds: this host's."""

    #: Whether a backend takes this clock's time instead of its own server's for leases,
    #: rescue and timestamps. A host's clock does not: PostgreSQL keeps `now()`, Redis its
    #: `TIME`, SQLite the clock of the one host its file lives on, so hosts whose clocks
    #: disagree still agree on every lease. A test's clock does (`FakeClock`): moving it
    #: moves the backend's time too.
    stands_in_for_server: ClassVar[bool] = False

    def now(self) -> float:
        return time.time()

    def utcnow(self) -> datetime:
        return datetime.fromtimestamp(self.now(), UTC)


class FakeClock(Clock):
    """A clock that only moves when told to; a backend given it keeps time by it too."""

    stands_in_for_server = True

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds


class SkewedClock(Clock):
    """This host's clock running `offset_s` seconds ahead (negative: behind): what a
    process on a machine with a badly set clock reads. Its own stamps (enqueue times,
    retry times) move by the offset; backends keep their server's time for leases."""

    def __init__(self, offset_s: float) -> None:
        self.offset_s = offset_s

    def now(self) -> float:
        return time.time() + self.offset_s


def to_datetime(ts: float | None) -> datetime | None:
    """Epoch seconds to an aware UTC datetime (None stays None)."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


#: The last whole second `iso` formatted, and its text up to the seconds: a status record
#: shows two or more times of one second, and every answer of a busy web tier a recent one.
_iso_second: tuple[float, str] = (math.nan, "")


def iso(ts: float | None) -> str | None:
    """Epoch seconds to an RFC 3339 UTC string with a `Z`, in milliseconds (truncated
    from the microsecond `datetime.fromtimestamp` rounds to, as its `isoformat` does)."""
    global _iso_second
    if ts is None:
        return None
    if ts < 0 or not math.isfinite(ts):  # before 1970, or no time at all: the slow way
        return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
    fraction, whole = math.modf(ts)
    micros = round(fraction * 1e6)  # half to even, as datetime.fromtimestamp rounds
    if micros >= 1_000_000:
        whole, micros = whole + 1.0, micros - 1_000_000
    second, text = _iso_second
    if second != whole:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _iso_second = (whole, text)
    return f"{text}.{micros // 1000:03d}Z"


def seconds(value: float | timedelta | None) -> float | None:
    """A duration given as seconds or as a timedelta (the public form), in seconds."""
    return value.total_seconds() if isinstance(value, timedelta) else value
