"""The delivery record of a job: every notification of it and every attempt, kept in the
JobStore beside the job (`remember`/`recall`), one entry per channel.

One key per channel means one writer per key: a job's webhook and email deliveries run as
separate jobs, possibly at once on two workers, and never overwrite each other's record.
This is the writer; the keys and the reader are in `base` (the App shows the record).
"""

from __future__ import annotations

from typing import Any

from ..brokers.base import JobStore
from ..clock import iso
from .base import CHANNELS as CHANNELS  # re-exported (older home)
from .base import deliveries as deliveries  # re-exported (older home)
from .base import delivery_key

#: Attempts kept per notification (the newest); older ones are dropped from the record.
DEFAULT_KEEP_ATTEMPTS = 50
#: Notifications kept per channel (a re-queued job can end, and notify, again).
DEFAULT_KEEP_NOTIFICATIONS = 10


async def record_attempt(
    store: JobStore,
    job_id: str,
    *,
    channel: str,
    notification: str,
    target: str,
    state: str,
    at: float,
    attempt: int,
    code: int | None = None,
    error: str | None = None,
    duration_s: float | None = None,
) -> dict[str, Any]:
    """Append one attempt to the job's record of `notification` and set its state.

    Args:
        target: the target as it may be shown (credentials stripped).
        state: `retrying`, `delivered`, `failed` (no attempts left), `refused` or
            `superseded` (the job moved on before delivery).
    """
    found, value = await store.recall(job_id, delivery_key(channel))
    entries: list[dict[str, Any]] = value if found and isinstance(value, list) else []
    entry = next((e for e in entries if e.get("id") == notification), None)
    if entry is None:
        entry = {"id": notification, "channel": channel, "target": target, "attempts": []}
        entries.append(entry)
    entry["state"] = state
    entry["attempts"].append(
        {
            "attempt": attempt,
            "at": iso(at),
            "code": code,
            "error": error,
            "duration_ms": None if duration_s is None else round(duration_s * 1000, 1),
        }
    )
    entry["attempts"] = entry["attempts"][-DEFAULT_KEEP_ATTEMPTS:]
    await store.remember(job_id, delivery_key(channel), entries[-DEFAULT_KEEP_NOTIFICATIONS:])
    return entry
