"""Conversions shared by backends: stored row to envelope, old feed entries to row fields."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..contract import Envelope


def fields_of_record(record: dict[str, Any]) -> dict[str, Any]:
    """The row fields of a feed entry written as a whole status record (PostgreSQL schema 1,
    SQLite schema 1): the form feed entries carry now."""
    progress = record.get("progress") or {}
    return {
        **{name: record.get(name) for name in _FEED_FIELDS},
        "progress_fraction": progress.get("fraction"),
        "progress_message": progress.get("message"),
        "enqueued_at": _epoch(record.get("created_at")),
        "run_at": _epoch(record.get("run_at")),
        "started_at": _epoch(record.get("started_at")),
        "finished_at": _epoch(record.get("finished_at")),
    }


_FEED_FIELDS = (
    "id", "kind", "version", "queue", "state", "priority", "attempt", "max_attempts",
    "result", "error", "worker",
)  # fmt: skip
#: The row fields a feed entry carries (those `fields_of_record` makes).
RECORD_FIELDS = (
    *_FEED_FIELDS, "progress_fraction", "progress_message", "enqueued_at", "run_at",
    "started_at", "finished_at",
)  # fmt: skip


def _epoch(value: str | None) -> float | None:
    if value is None:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def envelope_of(row: dict[str, Any]) -> Envelope:
    return Envelope(
        id=row["id"],
        kind=row["kind"],
        version=row["version"],
        payload=row["payload"],
        queue=row["queue"],
        priority=row["priority"],
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
        run_at=row["run_at"],
        enqueued_at=row["enqueued_at"],
        idempotency_key=row["idempotency_key"],
        owner=row["owner"],
        trace=row["trace"],
        timeout=row["timeout"],
        options=row["options"] or {},
    )
