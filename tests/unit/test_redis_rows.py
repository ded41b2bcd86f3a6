"""Stored Redis hashes read back as rows: a script's flat reply and redis-py's dict agree."""

from __future__ import annotations

import pytest

pytest.importorskip("redis")

from offload.brokers.redis.rows import COLUMNS, decode, decode_flat

STORED = {
    "id": "0192f0a0-0000-7000-8000-000000000001",
    "kind": "report.export",
    "version": "2",
    "queue": "default",
    "priority": "-3",
    "payload": '{"month":"2026-11","pages":[1,2]}',
    "state": "running",
    "attempt": "1",
    "max_attempts": "5",
    "run_at": "1764806400.123456",
    "enqueued_at": "1764806399.5",
    "owner": "alice",
    "cancel_requested": "0",
    "lease_token": "abc",
    "lease_expires": "1764806430.25",
    "error": '{"type":"ValueError","message":"x"}',
    "unique_key": "k",  # stored, but not a column of the row
    "unique_mode": "active",
}


def test_flat_reply_and_dict_give_the_same_row() -> None:
    flat = [v for pair in STORED.items() for v in pair]
    assert decode_flat(flat) == decode(STORED)


def test_row_has_every_column_typed_and_nothing_else() -> None:
    row = decode_flat([v for pair in STORED.items() for v in pair])
    assert list(row) == list(COLUMNS)
    assert row["version"] == 2 and row["priority"] == -3 and row["cancel_requested"] == 0
    assert row["run_at"] == 1764806400.123456 and row["lease_expires"] == 1764806430.25
    assert row["payload"] == {"month": "2026-11", "pages": [1, 2]}
    assert row["error"] == {"type": "ValueError", "message": "x"}
    assert row["result"] is None and row["finished_at"] is None and row["trace"] is None
    assert "unique_key" not in row and "unique_mode" not in row


def test_rows_do_not_share_state() -> None:
    first = decode_flat(["id", "a", "state", "queued"])
    first["result"] = {"mutated": True}
    assert decode_flat(["id", "b"])["result"] is None


def test_odd_reply_is_refused() -> None:
    with pytest.raises(ValueError):
        decode_flat(["id", "a", "state"])


def test_a_claims_lease_row_gives_the_lease_the_whole_row_gives() -> None:
    from offload.brokers._rows import envelope_of
    from offload.brokers.redis.rows import LEASE_FIELDS, lease_of

    stored = {**STORED, "options": '{"callback_url":"https://example.org/hook"}'}
    stored["trace"] = '{"traceparent":"00-abc-def-01"}'
    stored["timeout"] = "2.5"
    row = decode(stored)
    lease = lease_of([stored.get(f) for f in LEASE_FIELDS], "tok", "w1")
    assert lease.envelope == envelope_of(row)
    assert (lease.token, lease.worker, lease.expires_at) == ("tok", "w1", 1764806430.25)
    bare = {k: v for k, v in stored.items() if k not in {"options", "trace", "timeout"}}
    lease = lease_of([bare.get(f) for f in LEASE_FIELDS], "tok", "w1")
    assert lease.envelope == envelope_of(decode(bare))
    assert lease.envelope.options == {} and lease.envelope.trace is None


def test_the_lease_fields_are_the_scripts() -> None:
    from importlib import resources

    from offload.brokers.redis.rows import LEASE_FIELDS

    lib = resources.files("offload.brokers.redis").joinpath("lua/_lib.lua").read_text()
    declared = lib.split("local LEASE_FIELDS = {", 1)[1].split("}", 1)[0]
    assert tuple(f.strip().strip("'") for f in declared.split(",")) == LEASE_FIELDS


def test_a_server_busy_with_another_clients_script_is_tried_again() -> None:
    # `BUSY`: the server ran nothing of the call (another client's long script holds it);
    # it answered the call at once as an error, where a lost connection is tried again.
    pytest.importorskip("redis")
    from redis.exceptions import (
        AuthenticationError,
        BusyLoadingError,
        NoScriptError,
        OutOfMemoryError,
        ResponseError,
    )

    from offload.brokers.redis.backend import _lost_connection

    busy = "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE."
    assert _lost_connection(ResponseError(busy))
    assert _lost_connection(BusyLoadingError("LOADING Redis is loading the dataset in memory"))
    assert _lost_connection(ConnectionError("gone"))
    for refused in (
        ResponseError("ERR unknown command"),
        ResponseError("a script's own error: BUSY in its text"),
        NoScriptError("NOSCRIPT No matching script."),
        OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'."),
        AuthenticationError("invalid password"),
    ):
        assert not _lost_connection(refused), refused
