"""How rows and arguments cross into Redis: hashes of strings, floats as exact reprs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson

from ...contract import EnqueueResult, Envelope, Lease

#: The columns of a stored row, as the SQL backends name them.
COLUMNS = (
    "id", "kind", "version", "queue", "priority", "payload", "state", "attempt",
    "max_attempts", "run_at", "enqueued_at", "idempotency_key", "owner", "trace", "timeout",
    "options", "lease_token", "lease_expires", "worker", "cancel_requested",
    "progress_fraction", "progress_message", "result", "error", "started_at", "finished_at",
)  # fmt: skip
_INT = frozenset({"version", "priority", "attempt", "max_attempts", "cancel_requested"})
_FLOAT = frozenset(
    {"run_at", "enqueued_at", "timeout", "lease_expires", "progress_fraction", "started_at",
     "finished_at"}
)  # fmt: skip
_JSON = frozenset({"payload", "trace", "options", "result", "error"})


#: Per column, how its stored string becomes the row's value (None: kept as it is).
_DECODERS: dict[str, Callable[[str], Any] | None] = {
    column: int
    if column in _INT
    else float
    if column in _FLOAT
    else orjson.loads
    if column in _JSON
    else None
    for column in COLUMNS
}
_ABSENT: dict[str, Any] = dict.fromkeys(COLUMNS)


def decode(raw: dict[str, str]) -> dict[str, Any]:
    """A stored hash (all strings, nulls absent) as the row an SQL backend returns."""
    return _decoded(raw.items())


def decode_flat(flat: Sequence[str]) -> dict[str, Any]:
    """`decode` of a flat [field, value, …] reply (HGETALL inside a script)."""
    return _decoded(zip(flat[::2], flat[1::2], strict=True))


def _decoded(items: Iterable[tuple[str, str]]) -> dict[str, Any]:
    # Only the fields a hash has are read (a claim's row has about half of the columns);
    # fields that are not columns (unique_key, unique_mode) stay out of the row.
    row = _ABSENT.copy()
    for name, value in items:
        if name in _DECODERS:
            convert = _DECODERS[name]
            row[name] = value if convert is None else convert(value)
    return row


#: The fields a claim answers per job, in order (`LEASE_FIELDS` in lua/_lib.lua).
LEASE_FIELDS = (
    "id", "kind", "version", "payload", "queue", "priority", "attempt", "max_attempts",
    "run_at", "enqueued_at", "idempotency_key", "owner", "trace", "timeout", "options",
    "lease_expires",
)  # fmt: skip


def lease_of(values: Sequence[Any], token: str, worker: str) -> Lease:
    """The lease of a claimed job from the claim's reply for it (`LEASE_FIELDS`, None where
    the hash has no such field)."""
    (id_, kind, version, payload, queue, priority, attempt, max_attempts, run_at,
     enqueued_at, idempotency_key, owner, trace, timeout, options, expires) = values  # fmt: skip
    envelope = Envelope(
        id=id_,
        kind=kind,
        version=int(version),
        payload=orjson.loads(payload),
        queue=queue,
        priority=int(priority),
        attempt=int(attempt),
        max_attempts=int(max_attempts),
        run_at=float(run_at),
        enqueued_at=float(enqueued_at),
        idempotency_key=idempotency_key,
        owner=owner,
        trace=None if trace is None else orjson.loads(trace),
        timeout=None if timeout is None else float(timeout),
        options=(orjson.loads(options) if options is not None else None) or {},
    )
    return Lease(envelope=envelope, token=token, expires_at=float(expires), worker=worker)


def pairs(flat: Sequence[str]) -> dict[str, str]:
    """A flat [field, value, …] reply (HGETALL inside a script) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def num(value: float) -> str:
    """Floats travel as their repr, which Redis and Lua's strtod read back exactly."""
    return repr(float(value))


def opt(value: str | None) -> str:
    """An optional script argument: '' is None; a value carries a one-character marker."""
    return "" if value is None else "=" + value


def dumps(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def envelope_args(envelopes: Iterable[Envelope]) -> list[str]:
    """The script arguments of envelopes: 17 per envelope, in `_lib.lua`'s order."""
    return [arg for e in envelopes for arg in _envelope_fields(e)]


def _envelope_fields(e: Envelope) -> list[str]:
    return [
        e.id, e.kind, str(e.version), e.queue, str(e.priority),
        orjson.dumps(e.payload).decode(), str(e.attempt), str(e.max_attempts),
        num(e.run_at), num(e.enqueued_at), opt(e.idempotency_key), e.owner,
        opt(dumps(e.trace)), opt(None if e.timeout is None else num(e.timeout)),
        opt(dumps(e.options or None)), opt(e.unique_key), opt(e.unique),
    ]  # fmt: skip


def enqueue_result(job_id: str, code: int) -> EnqueueResult:
    """What a script's {id, code} pair says of one envelope: 1 created, 0 an idempotent
    repeat, 2 a unique repeat (`_lib.lua`'s `store_envelopes`)."""
    return EnqueueResult(id=job_id, created=code == 1, unique_repeat=code == 2)


def enqueue_results(out: Sequence[Any]) -> list[EnqueueResult]:
    """The enqueue script's answer, {id, code} pairs in one flat list, one per envelope."""
    return [enqueue_result(out[i], int(out[i + 1])) for i in range(0, len(out), 2)]
