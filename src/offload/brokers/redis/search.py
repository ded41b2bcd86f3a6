"""The operators' view of many jobs on Redis: which index a filter walks, script arguments,
and the per-minute counters of `history`."""

from __future__ import annotations

from collections.abc import Collection

from ...contract import JobFilter
from .rows import num, opt

#: The minutes of counters `history` can read (its keys expire after HISTORY_KEEP_S in Lua).
HISTORY_KEEP_MINUTES = 1500


def indexes(f: JobFilter) -> list[str]:
    """The id indexes (key names under the prefix) that hold every job `f` can match: one
    per exact filter given, else the index of all jobs."""
    found = [
        name + value
        for name, value in (
            ("own:", f.owner),
            ("kind:", f.kind),
            ("qids:", f.queue),
            ("st:", f.state),
        )
        if value is not None
    ]
    return found or ["ids"]


def only_index(f: JobFilter, states: Collection[str] | None) -> bool:
    """Whether the index walked decides the match alone (with the id range): then its size
    (ZLEXCOUNT) is the count, with no job read."""
    exact = sum(v is not None for v in (f.owner, f.kind, f.queue, f.state))
    rest = (f.created_after, f.created_before, f.text, states)
    return exact <= 1 and all(v is None for v in rest)


def args(f: JobFilter, states: Collection[str] | None, before: str | None) -> list[str]:
    """The search script's filter arguments, in its order (state … before)."""
    low, high = _narrowest(f)
    after, until = f.after_s, f.before_s
    return [
        opt(f.state), opt(f.kind), opt(f.queue), opt(f.owner),
        opt(None if after is None else num(after)), opt(None if until is None else num(until)),
        opt(low), opt(high), opt(f.text),
        opt(None if states is None else " ".join(sorted(states))), opt(before),
    ]  # fmt: skip


def _narrowest(f: JobFilter) -> tuple[str | None, str | None]:
    """The id range to walk: the prefix's, within the created range's ids."""
    span = f.id_range()
    lows = [v for v in (span and span[0], f.id_bounds()[0]) if v is not None]
    highs = [v for v in (span and span[1], f.id_bounds()[1]) if v is not None]
    return (max(lows) if lows else None), (min(highs) if highs else None)


def lex_range(f: JobFilter) -> tuple[str, str]:
    """ZLEXCOUNT's bounds for the id prefix of `f` (the whole index without one)."""
    span = f.id_range()
    return ("-", "+") if span is None else ("[" + span[0], "(" + span[1])


def history_counts(minute: int, fields: dict[str, str]) -> list[tuple[float, str, str, int]]:
    """One minute's counters (`state:queue` -> count) as `history` facts."""
    out: list[tuple[float, str, str, int]] = []
    for field, n in fields.items():
        state, _, queue = field.partition(":")
        out.append((float(minute), queue, state, int(n)))
    return out
