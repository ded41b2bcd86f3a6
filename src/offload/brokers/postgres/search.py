"""The operators' view of many jobs on PostgreSQL: the WHERE clause of a JobFilter."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from typing import Any

from ...contract import JobFilter, uuid_prefix


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def where(
    f: JobFilter, states: Collection[str] | None, before: str | None
) -> tuple[str, dict[str, Any]] | None:
    """The WHERE clause (with its keyword, or empty) and parameters of a filter; None when
    nothing can match (an id prefix or cursor that no UUID has)."""
    terms: list[str] = []
    params: dict[str, Any] = {}
    for column, value in (
        ("state", f.state), ("kind", f.kind), ("queue", f.queue), ("owner", f.owner),
    ):  # fmt: skip
        if value is not None:
            terms.append(f"{column} = %({column})s")
            params[column] = value
    if states is not None:
        terms.append("state = ANY(%(states)s)")
        params["states"] = sorted(states)
    _created(f, terms, params)
    if not _ids(f, before, terms, params):
        return None
    if f.text is not None:
        # A plain substring of the lowered JSON text: about twice as fast as ILIKE (which
        # folds case character by character), and no pattern characters to escape.
        terms.append("strpos(lower(payload::text), lower(%(text)s)) > 0")
        params["text"] = f.text
    return (" WHERE " + " AND ".join(terms) if terms else ""), params


def _created(f: JobFilter, terms: list[str], params: dict[str, Any]) -> None:
    """The created range: exact on enqueued_at, narrowed to its stretch of the primary key."""
    if f.after_s is not None:
        terms.append("enqueued_at >= to_timestamp(%(after)s)")
        params["after"] = f.after_s
    if f.before_s is not None:
        terms.append("enqueued_at < to_timestamp(%(until)s)")
        params["until"] = f.before_s
    low, high = f.id_bounds()
    if low is not None:
        terms.append("id >= %(created_low)s")
        params["created_low"] = uuid.UUID(low)
    if high is not None:
        terms.append("id < %(created_high)s")
        params["created_high"] = uuid.UUID(high)


def _ids(f: JobFilter, before: str | None, terms: list[str], params: dict[str, Any]) -> bool:
    """The id prefix and the cursor; False when no UUID can match them."""
    if f.id_prefix is not None:
        prefix = uuid_prefix(f.id_prefix)
        if prefix is None:
            return False
        digits = prefix.replace("-", "")
        # The prefix as the range of UUIDs that start with it (the primary key serves it).
        terms.append("id BETWEEN %(id_low)s AND %(id_high)s")
        params["id_low"] = uuid.UUID(digits.ljust(32, "0"))
        params["id_high"] = uuid.UUID(digits.ljust(32, "f"))
    if before is not None:
        cursor = _uuid(before)
        if cursor is None:
            return False
        terms.append("id < %(before)s")
        params["before"] = cursor
    return True


def search_sql(
    f: JobFilter, states: Collection[str] | None, before: str | None, limit: int
) -> tuple[str, dict[str, Any]] | None:
    each = f.kind_states(states)
    found = where(f, None if each else states, before)
    if found is None:
        return None
    clause, params = found
    # The page's ids first (an index-only scan where an index covers the filter; a date range
    # reads its stretch of the primary key backwards), then only those rows.
    if not each:
        page = f"SELECT id FROM offload_jobs{clause} ORDER BY id DESC LIMIT %(limit)s"
    else:  # a kind (so `clause` has its WHERE): each state's newest, then the newest of those
        parts = []
        for i, state in enumerate(each):
            params[f"state_{i}"] = state
            parts.append(
                f"(SELECT id FROM offload_jobs{clause} AND state = %(state_{i})s"
                " ORDER BY id DESC LIMIT %(limit)s)"
            )
        page = f"SELECT id FROM ({' UNION ALL '.join(parts)}) AS e ORDER BY id DESC LIMIT %(limit)s"
    sql = f"SELECT * FROM offload_jobs WHERE id IN ({page}) ORDER BY id DESC"
    return sql, {**params, "limit": limit}


def count_sql(f: JobFilter, cap: int | None) -> tuple[str, dict[str, Any]] | None:
    # A kind is counted off offload_jobs_state_kind_id: one range per state.
    found = where(f, f.kind_states(), None)
    if found is None:
        return None
    clause, params = found
    if cap is None:
        return f"SELECT count(*) AS n FROM offload_jobs{clause}", params
    inner = f"SELECT 1 FROM offload_jobs{clause} LIMIT %(cap)s"
    return f"SELECT count(*) AS n FROM ({inner}) AS capped", {**params, "cap": cap}
