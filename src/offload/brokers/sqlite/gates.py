"""SQLite: the limits per kind, read and obeyed inside a claim's write transaction."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Collection, Sequence
from typing import Any

import orjson

from ...contract import KindLimits
from ...limits import Gate, gate, in_turn, round_robin, take
from .._sql import queries

Q = queries(__package__)


def _limits_of(rows: Sequence[tuple[Any, ...]]) -> list[KindLimits]:
    return [KindLimits(kind=k, queue=q, max_running=m, rate=r, per_s=p) for k, q, m, r, p in rows]


def declare(conn: sqlite3.Connection, limits: Sequence[KindLimits]) -> None:
    for lim in limits:
        if lim.limited:
            conn.execute(
                Q["declare_limit"], (lim.kind, lim.queue, lim.max_running, lim.rate, lim.per_s)
            )
        else:
            conn.execute(Q["drop_limit"], (lim.kind,))


def _starts(conn: sqlite3.Connection, lim: KindLimits, now: float) -> tuple[int, float | None]:
    if lim.per_s is None or lim.rate is None:
        return 0, None
    args = {"kind": lim.kind, "since": now - lim.per_s, "rate": lim.rate}
    count, nth = conn.execute(Q["starts_of_kind"], args).fetchone()
    return count, nth


def read(
    conn: sqlite3.Connection, queues: Sequence[str] | None, now: float
) -> tuple[list[KindLimits], Gate]:
    """The stored limits of the kinds in `queues` (every queue when None) with their usage
    at `now`, and the gate they make."""
    if queues is None:
        limits = _limits_of(conn.execute(Q["limits"]).fetchall())
    else:
        rows = conn.execute(Q["limits_of_queues"], (orjson.dumps(list(queues)).decode(),))
        limits = _limits_of(rows.fetchall())
    kinds = orjson.dumps([lim.kind for lim in limits]).decode()
    running = dict(conn.execute(Q["running_of_kinds"], (kinds,)).fetchall()) if limits else {}
    starts = {lim.kind: _starts(conn, lim, now) for lim in limits}
    usage = [
        KindLimits(
            kind=lim.kind,
            queue=lim.queue,
            max_running=lim.max_running,
            rate=lim.rate,
            per_s=lim.per_s,
            running=running.get(lim.kind, 0),
            recent_starts=starts[lim.kind][0],
        )
        for lim in limits
    ]
    return usage, gate(limits, running=running, starts=starts, now=now)


#: Queues one claim query unions at most: SQLite refuses a query of more than 500 parts
#: (SQLITE_MAX_COMPOUND_SELECT); a claim over more runs one query per this many.
QUEUES_A_QUERY = 200


def in_chunks(queues: Sequence[str]) -> list[Sequence[str]]:
    """`queues` in runs of at most `QUEUES_A_QUERY`, in order."""
    return [queues[at : at + QUEUES_A_QUERY] for at in range(0, len(queues), QUEUES_A_QUERY)]


@functools.cache
def _gated_sql(n_queues: int) -> str:
    union = " UNION ALL ".join([Q["gated_ids_one"]] * n_queues)
    return f"SELECT id, kind, priority, run_at FROM ({union}) ORDER BY priority, run_at, id LIMIT ?"


def _gated_rows(
    conn: sqlite3.Connection, queues: Sequence[str], head: list[Any], want: int
) -> list[tuple[str, str]]:
    """Ready (id, kind) of `queues` in claim order, at most `want`: a query per
    `QUEUES_A_QUERY` queues (SQLite refuses one of more than 500 parts), their answers in
    claim order. `head`: each queue's arguments after its name and `now`."""
    rows: list[Any] = []
    for chunk in in_chunks(queues):
        args: list[Any] = []
        for queue in chunk:
            args += [queue, *head[:1], queue, *head[1:]]
        rows += conn.execute(_gated_sql(len(chunk)), [*args, want]).fetchall()
    if len(queues) > QUEUES_A_QUERY:
        rows = sorted(rows, key=lambda r: (r[2], r[3], r[0]))[:want]
    return [(r[0], r[1]) for r in rows]


def _plain(
    conn: sqlite3.Connection, queues: Sequence[str], now: float, limit: int, g: Gate
) -> list[tuple[str, str]]:
    """Ready (id, kind) of plain queues in claim order, at most `limit`, each limited kind
    within its allowance. A kind that fills its allowance is left out of the next read, so a
    claim reads past a held-back kind's backlog at most once per limited kind."""
    blocked = set(g.blocked)
    left = dict(g.allow)
    chosen: list[tuple[str, str]] = []
    while len(chosen) < limit:
        want = limit - len(chosen)
        skip = orjson.dumps(sorted(blocked)).decode()
        taken = orjson.dumps([i for i, _ in chosen]).decode()
        rows = _gated_rows(conn, queues, [now, skip, taken, want], want)
        for i in take(left, [kind for _, kind in rows], want):
            chosen.append(rows[i])
            if rows[i][1] in left:
                left[rows[i][1]] -= 1
        full = {k for k, n in left.items() if n <= 0} - blocked
        if len(rows) < want or not full:
            break  # nothing more to read, or what was read was taken
        blocked |= full
    return chosen


def _fair(
    conn: sqlite3.Connection, queue: str, now: float, limit: int, g: Gate
) -> list[tuple[str, str, str]]:
    """Ready (id, kind, owner) of a fair queue: one job of each owner in turn, the least
    recently served owner first, each owner's jobs in claim order."""
    owners = [o for (o,) in conn.execute(Q["fair_owners"], {"queue": queue, "limit": limit})]
    if not owners:
        return []
    args = {"queue": queue, "now": now, "blocked": orjson.dumps(g.blocked).decode()}
    lists: dict[str, list[tuple[str, str, str]]] = {owner: [] for owner in owners}

    def read(who: Sequence[str], n: int, skip_n: int) -> None:
        rows = conn.execute(
            Q["fair_jobs"], {**args, "owners": orjson.dumps(who).decode(), "n": n, "skip_n": skip_n}
        )
        for i, k, owner in rows:
            lists[owner].append((i, k, owner))

    # A fair share of the claim from each owner; then, if some had fewer, the rest from
    # those that had their share (any one of them can fill it).
    share = -(-limit // len(owners))
    read(owners, share, 0)
    short = limit - sum(len(x) for x in lists.values())
    rich = [owner for owner in owners if len(lists[owner]) == share]
    if short > 0 and rich:
        read(rich, short, share)
    return round_robin([lists[owner] for owner in owners])


def pick(
    conn: sqlite3.Connection,
    queues: Sequence[str],
    now: float,
    limit: int,
    g: Gate,
    fair: Collection[str],
    turn: int = 0,
) -> tuple[list[str], list[tuple[str, str]]]:
    """The job ids a gated claim takes, in claim order, and the (queue, owner) of each fair
    queue's owner it served, in the order served. Fair queues and the plain ones (as one)
    take turns, from the one whose `turn` it is."""
    plain = [q for q in queues if q not in fair]
    sources: list[list[tuple[str, str, str | None, str | None]]] = []
    if plain:
        sources.append([(i, k, None, None) for i, k in _plain(conn, plain, now, limit, g)])
    for queue in (q for q in queues if q in fair):
        sources.append([(i, k, queue, o) for i, k, o in _fair(conn, queue, now, limit, g)])
    candidates = in_turn(sources, turn)
    chosen = [candidates[i] for i in take(g.allow, [c[1] for c in candidates], limit)]
    served = [(q, o) for _, _, q, o in chosen if q is not None and o is not None]
    # In the order of each owner's last job taken: the owner served last goes last.
    return [c[0] for c in chosen], list(dict.fromkeys(reversed(served)))[::-1]


def take_turns(conn: sqlite3.Connection, served: Sequence[tuple[str, str]]) -> None:
    """Each served owner's turn is now the newest of its queue, in the order served."""
    for queue in dict.fromkeys(q for q, _ in served):
        owners = [o for q, o in served if q == queue]
        conn.execute(Q["fair_turn"], {"queue": queue, "owners": orjson.dumps(owners).decode()})


def record_starts(
    conn: sqlite3.Connection, limits: Sequence[KindLimits], kinds: Sequence[str], now: float
) -> None:
    """Log a start at `now` of each claimed job of a rate-limited kind, and forget the
    starts that left the kinds' windows."""
    rated = {lim.kind: lim.per_s for lim in limits if lim.per_s is not None}
    for kind in kinds:
        if kind in rated:
            conn.execute(Q["record_start"], (kind, now))
    for kind, per_s in rated.items():
        assert per_s is not None
        conn.execute(Q["forget_starts"], (kind, now - per_s))


def held_back(
    conn: sqlite3.Connection, queues: Sequence[str], now: float
) -> tuple[bool, float | None]:
    """After a claim: whether a limit holds back a kind of `queues` now, and when a start
    is next due by a rate (None: a settle frees the slot)."""
    g = read(conn, queues, now)[1]
    return bool(g.blocked), g.next_start_at
