"""The RFC 3339 times every status record shows (`iso`): the same text `datetime` gives."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

from offload.clock import iso


def _by_datetime(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def test_iso_writes_what_datetime_writes_to_the_millisecond() -> None:
    rng = random.Random(7)
    times = [rng.uniform(0, 4e9) for _ in range(20_000)]
    # Halves of a microsecond and of a millisecond, where rounding and truncating differ,
    # and the last microsecond of a second, which rounds into the next.
    times += [math.floor(t) + k / 1e6 for t in times[:500] for k in (0.5, 999.5, 999_999.5)]
    times += [1_800_000_000.9999996, 1_800_000_000.0, 0.0, 253_402_300_799.999]
    for ts in times:
        assert iso(ts) == _by_datetime(ts), ts


def test_iso_of_no_time_and_of_times_before_1970() -> None:
    assert iso(None) is None
    assert iso(-1.5) == "1969-12-31T23:59:58.500Z"
    assert iso(1_800_000_000.25) == "2027-01-15T08:00:00.250Z"
