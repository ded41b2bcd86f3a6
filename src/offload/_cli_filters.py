"""The command line's job filters: `--since 2h` style times, the filter, and the count a
bulk action would change (shown before it is confirmed)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from .contract import JobFilter

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def moment(value: str | None, *, now: float) -> datetime | None:
    """A `--since` / `--until` value: an age (`30m`, `6h`, `2d`, `1w`: that long ago) or an
    RFC 3339 / ISO 8601 time (UTC when it names no offset).

    Raises:
        ValueError: neither.
    """
    if value is None:
        return None
    age = _AGE.match(value)
    if age:
        seconds = float(age[1]) * _UNITS[age[2]]
        try:
            return datetime.fromtimestamp(now, UTC) - timedelta(seconds=seconds)
        except OverflowError:  # before year 1
            raise ValueError(f"{value!r} is longer ago than any job") from None
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{value!r} is neither an age (30m, 6h, 2d) nor a time (2026-12-01T09:00)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def described(f: JobFilter) -> str:
    """The filter as `key=value` words, for the confirmation question."""
    words = [
        f"{name}={value.isoformat() if isinstance(value, datetime) else value}"
        for name, value in (
            ("state", f.state), ("kind", f.kind), ("queue", f.queue), ("owner", f.owner),
            ("since", f.created_after), ("until", f.created_before), ("id", f.id_prefix),
            ("search", f.text),
        )
        if value is not None
    ]  # fmt: skip
    return " ".join(words) or "(every job)"
