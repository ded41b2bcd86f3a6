"""Bulk actions over a filter: walk the matching jobs newest first in batches, each applied
in its own transaction, so no action holds one over a million rows."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime

from .brokers.base import JobSearch
from .contract import HISTORY_STATES, JobFilter, JobRow, JobState, Throughput

#: Jobs one bulk action reads and changes per transaction (per script call on Redis): large
#: enough that a million rows take a thousand round trips, small enough that no batch holds
#: locks (or blocks Redis) for more than milliseconds.
DEFAULT_BULK_BATCH = 1000
#: A cap for counting matches where an exact count would read too many rows: `count_jobs`
#: returning it means "this many or more" (the dashboard shows "10,000+").
DEFAULT_COUNT_CAP = 10_000

Apply = Callable[[list[JobRow]], Awaitable[int]]


async def walk(
    store: JobSearch,
    f: JobFilter,
    states: Collection[JobState],
    apply: Apply,
    *,
    batch: int = DEFAULT_BULK_BATCH,
) -> int:
    """Apply `apply` to every job matching `f` in one of `states`, batch by batch, newest
    first by the id cursor (jobs created meanwhile, with greater ids, are not reached).
    Returns the sum of what each batch changed."""
    wanted = {s.value for s in states}
    if f.state is not None and f.state not in wanted:
        return 0
    total, cursor = 0, None
    while True:
        rows = await store.search_jobs(f, states=wanted, before=cursor, limit=batch)
        if rows:
            total += await apply(rows)
        if len(rows) < batch:
            return total
        cursor = rows[-1].id


def minutes_since(now: float, minutes: int) -> float:
    """The start of the first of the last `minutes` whole minutes (the current one last)."""
    if minutes < 1:
        raise ValueError("minutes must be at least 1")
    return float((int(now // 60) - minutes + 1) * 60)


def throughput(
    facts: list[tuple[float, str, str, int]], *, since: float, minutes: int, queues: Collection[str]
) -> list[Throughput]:
    """Every minute from `since` for every queue (those given and those in `facts`), oldest
    first, with the counts a backend's `history` reported (zero elsewhere)."""
    counts: dict[tuple[int, str], dict[str, int]] = {}
    for minute, queue, state, n in facts:
        if state in {s.value for s in HISTORY_STATES}:
            cell = counts.setdefault((int(minute), queue), {})
            cell[state] = cell.get(state, 0) + n
    names = sorted(set(queues) | {q for _, q, _, _ in facts})
    first = int(since)
    return [
        Throughput(minute=datetime.fromtimestamp(m, UTC), queue=q, **counts.get((m, q), {}))
        for m in range(first, first + minutes * 60, 60)
        for q in names
    ]
