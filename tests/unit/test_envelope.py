"""The wire contract: Envelope JSON round trip, UUIDv7 ids, and the status record shape."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import orjson
import pytest

from offload._ids import uuid7
from offload.contract import ENVELOPE_VERSION, Envelope, JobRow, nested_deeper, status_record

RFC3339_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


def _full_envelope() -> Envelope:
    return Envelope(
        id=uuid7(),
        kind="reports.export",
        version=3,
        payload={"user_id": "u1", "period": "2026-10", "nested": {"a": [1, 2.5, None]}},
        queue="reports",
        priority=-2,
        attempt=1,
        max_attempts=7,
        run_at=1_800_000_060.25,
        enqueued_at=1_800_000_000.5,
        idempotency_key="export-u1-2026-10",
        owner="alice",
        trace={
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "tracestate": "vendor=1",
        },
        timeout=120.0,
        options={"callback_url": "https://example.com/hook", "notify_email": "a@example.com"},
    )


def test_envelope_json_round_trip_keeps_every_field() -> None:
    env = _full_envelope()
    assert Envelope.from_json(env.to_json()) == env
    assert Envelope.from_json(env.to_json().decode()) == env


def test_envelope_json_round_trip_with_defaults() -> None:
    env = Envelope(
        id=uuid7(),
        kind="k",
        version=1,
        payload={},
        queue="default",
        run_at=1_800_000_000.0,
        enqueued_at=1_800_000_000.0,
    )
    back = Envelope.from_json(env.to_json())
    assert back == env
    assert back.options == {} and back.trace is None and back.idempotency_key is None


def test_envelope_json_carries_version_and_rfc3339_z_timestamps() -> None:
    data = orjson.loads(_full_envelope().to_json())
    assert data["v"] == ENVELOPE_VERSION == 1
    for name in ("run_at", "enqueued_at"):
        assert RFC3339_Z.match(data[name]), data[name]
    assert data["run_at"] == "2027-01-15T08:01:00.250Z"
    assert data["enqueued_at"] == "2027-01-15T08:00:00.500Z"
    assert data["options"]["callback_url"] == "https://example.com/hook"
    assert data["trace"]["tracestate"] == "vendor=1"
    assert data["idempotency_key"] == "export-u1-2026-10"


def test_envelope_round_trip_keeps_timestamps_to_the_millisecond() -> None:
    env = Envelope(
        id=uuid7(),
        kind="k",
        version=1,
        payload={},
        queue="q",
        run_at=1_800_000_000.123456,
        enqueued_at=1_800_000_000.987654,
    )
    back = Envelope.from_json(env.to_json())
    assert back.run_at == pytest.approx(env.run_at, abs=1e-3)
    assert back.enqueued_at == pytest.approx(env.enqueued_at, abs=1e-3)


def test_envelope_accepts_offset_timestamps_and_ignores_unknown_fields() -> None:
    data = orjson.loads(_full_envelope().to_json())
    data["run_at"] = "2027-01-15T10:01:00.250+02:00"
    data["future_field"] = "ignored"
    assert Envelope.from_dict(data).run_at == 1_800_000_060.25


@pytest.mark.parametrize("version", [0, 2, None])
def test_unknown_envelope_version_raises_value_error(version: object) -> None:
    data = orjson.loads(_full_envelope().to_json())
    data["v"] = version
    with pytest.raises(ValueError, match="envelope version"):
        Envelope.from_dict(data)
    with pytest.raises(ValueError, match="envelope version"):
        Envelope.from_json(orjson.dumps(data))


def test_uuid7_ids_are_unique_and_sort_in_creation_order() -> None:
    ids = [uuid7() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert sorted(ids) == ids


def test_uuid7_has_version_7_and_rfc_variant() -> None:
    for raw in (uuid7() for _ in range(100)):
        u = uuid.UUID(raw)
        assert u.version == 7
        assert u.variant == uuid.RFC_4122
        assert raw[14] == "7"
        assert str(u) == raw  # canonical lower-case form


def test_uuid7_embeds_the_creation_millisecond() -> None:
    before = int(time.time() * 1000)
    ms = uuid.UUID(uuid7()).int >> 80
    after = int(time.time() * 1000)
    assert before - 1 <= ms <= after + 1


DESIGN_FIELDS = {
    "id",
    "kind",
    "queue",
    "state",
    "attempt",
    "max_attempts",
    "progress",
    "result",
    "error",
    "created_at",
    "started_at",
    "finished_at",
    "links",
}


def _row(**changes: object) -> JobRow:
    row: dict[str, object] = {
        "id": "0193a1c2-0000-7000-8000-000000000000",
        "kind": "reports.export",
        "version": 1,
        "queue": "reports",
        "state": "running",
        "priority": 0,
        "attempt": 1,
        "max_attempts": 5,
        "progress_fraction": 0.4,
        "progress_message": "rendering charts",
        "result": None,
        "error": None,
        "enqueued_at": 1_800_000_000.0,
        "run_at": 1_800_000_000.0,
        "started_at": 1_800_000_001.0,
        "finished_at": None,
        "worker": "host:1:ab",
        "owner": "alice",
    }
    row.update(changes)
    return JobRow.of(row)


def test_status_record_has_the_design_fields() -> None:
    record = status_record(_row())
    assert DESIGN_FIELDS <= set(record)
    assert record["id"] == "0193a1c2-0000-7000-8000-000000000000"
    assert record["state"] == "running"
    assert (record["attempt"], record["max_attempts"]) == (1, 5)
    assert record["progress"] == {"fraction": 0.4, "message": "rendering charts"}
    assert record["result"] is None and record["error"] is None
    assert record["created_at"] == "2027-01-15T08:00:00.000Z"
    assert record["started_at"] == "2027-01-15T08:00:01.000Z"
    assert record["finished_at"] is None
    job = "/v1/jobs/0193a1c2-0000-7000-8000-000000000000"
    assert record["links"] == {"self": job, "events": f"{job}/events", "result": f"{job}/result"}
    orjson.dumps(record)  # JSON-ready as is


def test_status_record_progress_is_null_until_reported() -> None:
    record = status_record(_row(progress_fraction=None, progress_message=None, state="queued"))
    assert record["progress"] is None


def test_status_record_progress_with_message_only() -> None:
    record = status_record(_row(progress_fraction=None, progress_message="starting"))
    assert record["progress"] == {"fraction": None, "message": "starting"}


def test_status_record_timestamps_are_rfc3339_z() -> None:
    record = status_record(
        _row(state="succeeded", finished_at=1_800_000_002.5, result={"pdf": "blob:reports/x.pdf"})
    )
    for name in ("created_at", "started_at", "finished_at"):
        assert RFC3339_Z.match(record[name]), record[name]
    assert record["result"] == {"pdf": "blob:reports/x.pdf"}


def test_status_record_links_follow_the_prefix() -> None:
    record = status_record(_row(id="j1"), prefix="/api/v1/jobs")
    assert record["links"]["self"] == "/api/v1/jobs/j1"
    assert record["links"]["events"] == "/api/v1/jobs/j1/events"


@pytest.mark.parametrize(
    ("value", "limit", "deeper"),
    [
        (1, 0, False),
        ("text", 0, False),
        ({}, 1, False),
        ({}, 0, True),
        ({"a": [1]}, 2, False),
        ({"a": [1]}, 1, True),
        ([[], {"b": {"c": ()}}], 4, False),  # the deepest branch counts: 4 levels
        ([[], {"b": {"c": ()}}], 3, True),
        ([{"a": 1}] * 1000, 2, False),  # wide is not deep
    ],
)
def test_nesting_counts_levels_of_objects_and_arrays(value: Any, limit: int, deeper: bool) -> None:
    assert nested_deeper(value, limit) is deeper
