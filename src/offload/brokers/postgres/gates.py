"""PostgreSQL: the limits per kind, read and obeyed inside a claim's transaction."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row, tuple_row

from ...contract import KindLimits
from ...limits import Gate, gate, in_turn, round_robin, take
from .._sql import queries

Q = queries(__package__)


async def declare(conn: psycopg.AsyncConnection[Any], limits: Sequence[KindLimits]) -> None:
    async with conn.cursor() as cur:
        for lim in limits:
            params = {
                "kind": lim.kind,
                "queue": lim.queue,
                "max_running": lim.max_running,
                "rate": lim.rate,
                "per_s": lim.per_s,
            }
            await cur.execute(Q["declare_limit" if lim.limited else "drop_limit"], params)


@dataclass(frozen=True, slots=True)
class Usage:
    """The stored limits of some kinds, their usage, and `now` (epoch seconds) it is of."""

    limits: list[KindLimits]
    running: dict[str, int]
    #: Per kind: its starts within the window, and the rate-th newest (see `limits.gate`).
    starts: dict[str, tuple[int, float | None]]
    now_s: float

    def gate(self, started: Sequence[str] = ()) -> Gate:
        """What may start now; with `started`, once jobs of these kinds started now. (A
        window filled by these starts says the next start is due now, or at the rate-th
        newest start read before, if not later: a claim then finds none and reads the
        window again, so a wait never outlasts the true due time.)"""
        running, starts = dict(self.running), dict(self.starts)
        per = {x.kind: x.per_s or 0.0 for x in self.limits}
        for kind in started:
            running[kind] = running.get(kind, 0) + 1
            count, nth = starts.get(kind, (0, None))
            starts[kind] = (count + 1, self.now_s - per.get(kind, 0.0) if nth is None else nth)
        return gate(self.limits, running=running, starts=starts, now=self.now_s)


async def read(
    conn: psycopg.AsyncConnection[Any], queues: Sequence[str] | None, now: datetime | None
) -> Usage:
    """The stored limits of the kinds in `queues` (every queue when None), their rows
    locked until the transaction ends, with their usage at `now` (None: the server's
    clock)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            Q["lock_limits"], {"queues": list(queues or ()), "all": queues is None, "now": now}
        )
        stored = await cur.fetchall()
        if not stored:  # nothing limited: no start to log, so `now` is not needed
            return Usage([], {}, {}, 0.0)
        now_s: float = stored[0]["now"]
        await cur.execute(Q["limits_usage"], {"kinds": [r["kind"] for r in stored], "now_s": now_s})
        usage = {r["kind"]: r for r in await cur.fetchall()}
    limits = [
        KindLimits(
            kind=r["kind"],
            queue=r["queue"],
            max_running=r["max_running"],
            rate=r["rate"],
            per_s=r["per_s"],
            running=usage[r["kind"]]["running"],
            recent_starts=usage[r["kind"]]["starts"],
        )
        for r in stored
    ]
    running = {k: u["running"] for k, u in usage.items()}
    starts = {k: (u["starts"], u["nth"]) for k, u in usage.items()}
    return Usage(limits, running, starts, now_s)


def claim_params(u: Usage) -> dict[str, Any]:
    """The limits' parameters of the `claim_picked` query."""
    rated = {x.kind: x.per_s for x in u.limits if x.per_s is not None}
    return {"rated": orjson.dumps(rated).decode(), "now_s": u.now_s}


Candidate = tuple[str, str, str | None, str | None]


async def _plain(
    cur: psycopg.AsyncCursor[Any], queues: Sequence[str], params: dict[str, Any]
) -> list[Candidate]:
    await cur.execute(Q["gated_pick"], {**params, "queues": list(queues)})
    return [(i, k, None, None) for i, k in await cur.fetchall()]


async def _fair(
    cur: psycopg.AsyncCursor[Any], queues: Sequence[str], params: dict[str, Any]
) -> list[list[Candidate]]:
    """Per fair queue, its candidates: one job of each owner in turn, the least recently
    served first (a fair share of the claim from each, then the rest from those that had
    theirs, as in SQLite)."""
    limit = params["limit"]
    await cur.execute(Q["fair_owners"], {"queues": list(queues)})
    per_queue: dict[str, list[str]] = {}
    for queue, owner in await cur.fetchall():
        if len(per_queue.setdefault(queue, [])) < limit:
            per_queue[queue].append(owner)
    pairs = [(q, o) for q, owners in per_queue.items() for o in owners]
    if not pairs:
        return []
    lists: dict[tuple[str, str], list[Candidate]] = {pair: [] for pair in pairs}

    async def jobs(wanted: Sequence[tuple[str, str]], share: int, taken: list[str]) -> None:
        await cur.execute(
            Q["fair_jobs"],
            {
                **params,
                "queues": [q for q, _ in wanted],
                "owners": [o for _, o in wanted],
                "share": share,
                "taken": taken,
            },
        )
        for i, k, q, o in await cur.fetchall():
            lists[(q, o)].append((i, k, q, o))

    share = -(-limit // max(len(owners) for owners in per_queue.values()))
    await jobs(pairs, share, [])
    got = [c[0] for x in lists.values() for c in x]
    short = limit - min(sum(len(lists[(q, o)]) for o in per_queue[q]) for q in per_queue)
    rich = [pair for pair in pairs if len(lists[pair]) == share]
    if short > 0 and rich:
        await jobs(rich, short, got)
    return [round_robin([lists[(q, o)] for o in owners]) for q, owners in per_queue.items()]


async def pick(
    conn: psycopg.AsyncConnection[Any],
    queues: Sequence[str],
    fair: Collection[str],
    g: Gate,
    params: dict[str, Any],
    turn: int = 0,
) -> tuple[list[str], list[tuple[str, str]]]:
    """The job ids a gated claim takes (locked), in claim order, and the (queue, owner) of
    each fair queue's owner it served, in the order of their last job taken. The plain
    queues (as one) and each fair queue take turns, from the one whose `turn` it is."""
    params = {**params, "blocked": g.blocked}
    plain = [q for q in queues if q not in fair]
    sources: list[list[Candidate]] = []
    async with conn.cursor(row_factory=tuple_row) as cur:
        if plain:
            sources.append(await _plain(cur, plain, params))
        if any(q in fair for q in queues):
            sources += await _fair(cur, [q for q in queues if q in fair], params)
    candidates = in_turn(sources, turn)
    chosen = [candidates[i] for i in take(g.allow, [c[1] for c in candidates], params["limit"])]
    served = [(q, o) for _, _, q, o in chosen if q is not None and o is not None]
    return [c[0] for c in chosen], list(dict.fromkeys(reversed(served)))[::-1]


async def take_turns(conn: psycopg.AsyncConnection[Any], served: Sequence[tuple[str, str]]) -> None:
    if served:
        await conn.execute(
            Q["fair_turns"], {"queues": [q for q, _ in served], "owners": [o for _, o in served]}
        )
