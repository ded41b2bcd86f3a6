"""The options of one enqueue, checked at run time as their annotations promise."""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta

#: The latest time a job may be set to run (RFC 3339 has four-digit years).
LATEST_RUN_AT = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()

#: The priorities a job may have (lower runs first), over HTTP and from code alike.
MAX_PRIORITY = 1000
#: The principal that owns jobs enqueued from Python without an `owner`.
DEFAULT_OWNER = "local"

#: What each option accepts, as its annotation says (an int where a float is allowed).
_ACCEPTS: dict[str, tuple[tuple[type, ...], str]] = {
    "priority": ((int,), "an int"),
    "delay": ((int, float, timedelta, type(None)), "seconds (a float) or a timedelta"),
    "run_at": ((datetime, type(None)), "a datetime"),
    "idempotency_key": ((str, type(None)), "a str"),
    "callback_url": ((str, type(None)), "a str"),
    "notify_email": ((str, type(None)), "a str"),
    "owner": ((str,), "a str"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class JobOptions:
    """How to run one job, as `App.enqueue` takes them (see `App.envelope` for meanings).

    Raises:
        TypeError: an option of the wrong type, named (`priority="high"` would otherwise be
            stored as it is and sort as no number does).
    """

    priority: int = 0
    delay: float | timedelta | None = None
    run_at: datetime | None = None
    idempotency_key: str | None = None
    callback_url: str | None = None
    notify_email: str | None = None
    owner: str = DEFAULT_OWNER

    def __post_init__(self) -> None:
        if (
            type(self.priority) is int  # the usual call: defaults and plain values
            and self.delay is None
            and self.run_at is None
            and self.callback_url is None
            and self.notify_email is None
            and type(self.owner) is str
            and (self.idempotency_key is None or type(self.idempotency_key) is str)
        ):
            if self.owner is not DEFAULT_OWNER and (fault := owner_fault(self.owner)):
                raise ValueError(fault)
            if not -MAX_PRIORITY <= self.priority <= MAX_PRIORITY:
                raise ValueError(_PRIORITY)
            if self.idempotency_key is not None and (fault := key_fault(self.idempotency_key)):
                raise ValueError(fault)
            return
        for f in fields(self):
            value = getattr(self, f.name)
            accepted, what = _ACCEPTS[f.name]
            # bool is an int to Python, but `priority=True` is a mistake, not a priority.
            if isinstance(value, bool) or not isinstance(value, accepted):
                shown = f"{type(value).__name__} {reprlib.repr(value)}"
                raise TypeError(f"{f.name} must be {what}, not {shown}")
        if fault := owner_fault(self.owner):
            raise ValueError(fault)
        if not -MAX_PRIORITY <= self.priority <= MAX_PRIORITY:
            raise ValueError(_PRIORITY)
        if self.idempotency_key is not None and (fault := key_fault(self.idempotency_key)):
            raise ValueError(fault)
        delay = self.delay.total_seconds() if isinstance(self.delay, timedelta) else self.delay
        if delay is not None and not math.isfinite(delay):
            raise ValueError(f"delay must be a finite number of seconds, not {delay!r}")


def owner_fault(owner: str, what: str = "owner") -> str | None:
    """Why `owner` names no caller, or None. An empty one names no one (its jobs would be
    no one's); one with a control character or white space around it is a mistake that
    would own jobs apart from the caller it was meant for (`"user:1\\n"`); one past
    `MAX_OWNER_LENGTH` PostgreSQL cannot index (with an idempotency key beside it)."""
    if not owner:
        return _EMPTY_OWNER
    if len(owner) > MAX_OWNER_LENGTH:
        return f"{what} is {len(owner)} characters: it may have at most {MAX_OWNER_LENGTH}"
    if not owner.isprintable() or owner.strip() != owner:
        return f"{what} must be printable text with no white space around it, not {owner!r}"
    return None


_EMPTY_OWNER = "owner must not be empty"
#: The longest owner (characters): a thousand failed the enqueue on PostgreSQL alone (as
#: the backend's error: its index of owners takes at most 2,704 bytes a row).
MAX_OWNER_LENGTH = 255
#: The longest idempotency key (characters), as over HTTP (`Idempotency-Key`).
MAX_KEY_LENGTH = 255


#: What a batch's later jobs' keys put between the batch's key and their index
#: (`App.enqueue_many`): no key given to a call may hold it, so none is taken for theirs.
BATCH_KEY_MARK = "\x1f"


def key_fault(key: str) -> str | None:
    """Why `key` cannot be an idempotency key, or None: PostgreSQL cannot store a NUL, nor
    index a few thousand bytes (each failed the enqueue as the backend's error)."""
    if "\x00" in key:
        return "idempotency_key cannot hold a NUL character"
    if BATCH_KEY_MARK in key:
        return "idempotency_key cannot hold the character U+001F (a batch's keys use it)"
    if len(key) > MAX_KEY_LENGTH:
        return f"idempotency_key has at most {MAX_KEY_LENGTH} characters, not {len(key)}"
    return None


_PRIORITY = f"priority must be from -{MAX_PRIORITY} to {MAX_PRIORITY} (lower runs first)"
