"""Conversions shared by backends: envelope to stored row, stored row to envelope."""

from __future__ import annotations

from typing import Any

from ..contract import Envelope


def row_of(e: Envelope) -> dict[str, Any]:
    return {
        "id": e.id,
        "kind": e.kind,
        "version": e.version,
        "queue": e.queue,
        "state": "queued",
        "priority": e.priority,
        "attempt": e.attempt,
        "max_attempts": e.max_attempts,
        "run_at": e.run_at,
        "enqueued_at": e.enqueued_at,
        "owner": e.owner,
    }


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
