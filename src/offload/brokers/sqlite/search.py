"""The operators' view of many jobs on SQLite: filtered pages, counts, bulk transitions."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Sequence
from typing import Any

import orjson

from ...contract import JobFilter
from .._sql import queries

Q = queries(__package__)


def like_pattern(text: str) -> str:
    """A LIKE pattern matching `text` anywhere (its own `%`, `_` and `\\` taken literally)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def where(
    f: JobFilter, states: Collection[str] | None, before: str | None
) -> tuple[str, list[Any]]:
    """The WHERE clause (with its leading keyword, or empty) and arguments of a filter."""
    terms: list[str] = []
    args: list[Any] = []
    for column, value in (("state", f.state), ("kind", f.kind), ("queue", f.queue)):
        if value is not None:
            terms.append(f"{column} = ?")
            args.append(value)
    if f.owner is not None:
        terms.append("owner = ?")
        args.append(f.owner)
    if states is not None:
        terms.append(f"state IN ({', '.join('?' * len(states))})")
        args += sorted(states)
    for term, moment in (("enqueued_at >= ?", f.after_s), ("enqueued_at < ?", f.before_s)):
        if moment is not None:
            terms.append(term)
            args.append(moment)
    span = f.id_range()
    if span is not None:
        terms.append("id >= ? AND id < ?")
        args += span
    low, high = f.id_bounds()  # the created range's ids: its stretch of the primary key
    if low is not None:
        terms.append("id >= ?")
        args.append(low)
    if high is not None:
        terms.append("id < ?")
        args.append(high)
    if before is not None:
        terms.append("id < ?")
        args.append(before)
    if f.text is not None:
        # LIKE ignores the case of ASCII letters (SQLite has no Unicode case folding).
        terms.append("payload LIKE ? ESCAPE '\\'")
        args.append(like_pattern(f.text))
    return (" WHERE " + " AND ".join(terms) if terms else ""), args


def search_sql(
    f: JobFilter, states: Collection[str] | None, before: str | None, limit: int
) -> tuple[str, list[Any]]:
    # The page's ids first, read off an index alone where one covers the filter (state, kind,
    # queue, owner with id), then only those rows; a date range reads the primary key
    # backwards from its newest id (`id_bounds`), each row's enqueued_at checked exactly.
    each = f.kind_states(states)
    if not each:
        clause, args = where(f, states, before)
        page = f"SELECT id FROM offload_jobs{clause} ORDER BY id DESC LIMIT ?"
        args.append(limit)
    else:  # a kind (so `clause` has its WHERE): each state's newest, then the newest of those
        clause, common = where(f, None, before)
        parts, args = [], []
        for state in each:
            parts.append(
                f"SELECT * FROM (SELECT id FROM offload_jobs{clause} AND state = ?"
                " ORDER BY id DESC LIMIT ?)"
            )
            args += [*common, state, limit]
        page = f"SELECT id FROM ({' UNION ALL '.join(parts)}) ORDER BY id DESC LIMIT ?"
        args.append(limit)
    sql = f"SELECT * FROM offload_jobs WHERE id IN ({page}) ORDER BY id DESC"
    return sql, args


def count(conn: sqlite3.Connection, f: JobFilter, cap: int | None) -> int:
    each = f.kind_states()
    # A kind is counted off offload_jobs_state_kind_id: one range per state.
    clause, args = where(f, each, None)
    if cap is None:
        sql = f"SELECT count(*) FROM offload_jobs{clause}"
    else:  # stop reading at the cap
        sql = f"SELECT count(*) FROM (SELECT 1 FROM offload_jobs{clause} LIMIT ?)"
        args.append(cap)
    return int(conn.execute(sql, args).fetchone()[0])


def _ids(values: Sequence[str]) -> str:
    return orjson.dumps(list(values)).decode()


def requeue(conn: sqlite3.Connection, ids: Sequence[str], now: float) -> list[str]:
    """Re-queue those of `ids` that are dead, failed or cancelled; the ids changed."""
    return [r[0] for r in conn.execute(Q["requeue_many"], (now, _ids(ids))).fetchall()]


def cancel_waiting(conn: sqlite3.Connection, ids: Sequence[str], now: float) -> list[str]:
    return [r[0] for r in conn.execute(Q["cancel_many_waiting"], (now, _ids(ids))).fetchall()]


def flag_running(conn: sqlite3.Connection, ids: Sequence[str]) -> int:
    return conn.execute(Q["cancel_many_running"], (_ids(ids),)).rowcount


def delete(conn: sqlite3.Connection, ids: Sequence[str]) -> int:
    """Delete those of `ids` in a final state, with their feed entries and effects."""
    gone = [r[0] for r in conn.execute(Q["delete_many"], (_ids(ids),)).fetchall()]
    forget(conn, gone)
    return len(gone)


def forget(conn: sqlite3.Connection, gone: Sequence[str]) -> None:
    """Delete the feed entries and effects of the jobs `gone` (deleted: by `delete`, a
    purge or a prune)."""
    if gone:
        conn.execute(Q["prune_events"], (_ids(gone),))
        conn.execute(Q["delete_effects"], (_ids(gone),))


def history(conn: sqlite3.Connection, since: float) -> list[tuple[float, str, str, int]]:
    return [
        (float(m), q, s, int(n)) for m, q, s, n in conn.execute(Q["history"], (since,)).fetchall()
    ]
