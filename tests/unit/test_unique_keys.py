"""Unique keys: made of kind, owner and the chosen fields only, whatever their order."""

from __future__ import annotations

from offload import App, Message
from offload._unique import unique_key


class Export(Message):
    user_id: str
    period: str
    format: str = "pdf"


PAYLOAD = {"user_id": "u1", "period": "2026-10", "format": "pdf"}


def test_the_chosen_fields_make_the_key_and_the_others_do_not() -> None:
    key = unique_key("t.export", "alice", PAYLOAD, ("user_id", "period"))
    assert key == unique_key(
        "t.export", "alice", {**PAYLOAD, "format": "csv"}, ("user_id", "period")
    )
    assert key != unique_key(
        "t.export", "alice", {**PAYLOAD, "period": "2026-11"}, ("user_id", "period")
    )


def test_kind_and_owner_are_part_of_the_key() -> None:
    fields = ("user_id", "period")
    key = unique_key("t.export", "alice", PAYLOAD, fields)
    assert key != unique_key("t.export", "bob", PAYLOAD, fields)
    assert key != unique_key("t.other", "alice", PAYLOAD, fields)


def test_the_whole_payload_is_the_key_by_default_in_any_order() -> None:
    key = unique_key("t.export", "alice", PAYLOAD, ())
    assert key == unique_key("t.export", "alice", dict(reversed(PAYLOAD.items())), ())
    assert key != unique_key("t.export", "alice", {**PAYLOAD, "format": "csv"}, ())


def test_the_key_names_none_of_its_values() -> None:
    key = unique_key("t.export", "alice", PAYLOAD, ())
    assert len(key) == 40 and all(c in "0123456789abcdef" for c in key)
    assert "u1" not in key


def test_an_envelope_of_a_unique_kind_carries_its_key_and_mode() -> None:
    app = App("keys", url="memory://")
    app.message("t.export", unique="active", unique_key=("user_id", "period"))(Export)
    e = app.envelope(Export(user_id="u1", period="2026-10"), owner="alice")
    assert e.unique == "active"
    assert e.unique_key == unique_key("t.export", "alice", PAYLOAD, ("user_id", "period"))
    plain = App("plain", url="memory://")
    plain.message("t.export")(Export)
    assert plain.envelope(Export(user_id="u1", period="2026-10")).unique_key is None
