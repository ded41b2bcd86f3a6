"""Unique keys: made of kind, owner and the chosen fields only, whatever their order."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from typing import Annotated, Any

from pydantic import ConfigDict, PlainSerializer, field_serializer, model_serializer

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


class Tagged(Message):
    tags: frozenset[str]
    groups: list[set[int]] = []
    at: datetime | None = None


TAGS = [f"tag-{n}" for n in range(12)]


def _key(message: Message) -> str | None:
    app = App("keys", url="memory://")
    app.message("t.tagged", unique="queued")(Tagged)
    return app.envelope(message, owner="alice").unique_key


def test_a_set_makes_one_key_whatever_its_order() -> None:
    # (JSON writes a set in its iteration order: permutations of one set wrote it apart)
    orders = itertools.islice(itertools.permutations(TAGS), 0, 4000, 100)
    assert len({_key(Tagged(tags=frozenset(order))) for order in orders}) == 1
    # a set within a list, too; and another set is another key
    first = _key(Tagged(tags=frozenset(TAGS), groups=[set(range(40))]))
    assert _key(Tagged(tags=frozenset(TAGS), groups=[set(range(39, -1, -1))])) == first
    assert _key(Tagged(tags=frozenset(TAGS[:-1]))) != _key(Tagged(tags=frozenset(TAGS)))


def test_a_set_makes_one_key_in_every_process() -> None:
    # (the iteration order of a set of strings follows the process's hash seed)
    script = (
        "from tests.unit.test_unique_keys import Tagged, TAGS, _key; "
        "print(_key(Tagged(tags=frozenset(TAGS))))"
    )
    keys = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2", "3")
    }
    assert keys == {_key(Tagged(tags=frozenset(TAGS)))}


def test_one_instant_makes_one_key_whatever_its_offset() -> None:
    utc = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
    paris = utc.astimezone(timezone(timedelta(hours=1)))
    assert _key(Tagged(tags=frozenset(), at=utc)) == _key(Tagged(tags=frozenset(), at=paris))
    assert _key(Tagged(tags=frozenset(), at=utc)) != _key(
        Tagged(tags=frozenset(), at=utc + timedelta(seconds=1))
    )
    # and a time in UTC keeps the key it had (one stored before holds it still)
    payload = {"tags": [], "groups": [], "at": "2026-12-01T00:00:00Z"}
    assert _key(Tagged(tags=frozenset(), at=utc)) == unique_key("t.tagged", "alice", payload, ())


class Odd(Message):
    nested: frozenset[frozenset[str]] = frozenset()
    by_id: dict[int, set[str]] = {}
    times: frozenset[datetime] = frozenset()
    day: Annotated[datetime, PlainSerializer(lambda d: d.date().isoformat(), when_used="json")]


def _odd_key(message: Odd) -> str | None:
    app = App("keys", url="memory://")
    app.message("t.odd", unique="queued")(Odd)
    return app.envelope(message, owner="alice").unique_key


def test_sets_within_sets_and_dicts_and_times_within_sets_make_one_key() -> None:
    day = datetime(2026, 1, 1, 9, tzinfo=UTC)
    key = _odd_key(
        Odd(
            nested=frozenset({frozenset(TAGS), frozenset(TAGS[:3])}),
            by_id={1: set(TAGS)},
            times=frozenset({day}),
            day=day,
        )
    )
    other = _odd_key(
        Odd(
            nested=frozenset({frozenset(reversed(TAGS[:3])), frozenset(reversed(TAGS))}),
            by_id={1: set(reversed(TAGS))},
            times=frozenset({day.astimezone(timezone(timedelta(hours=1)))}),
            day=day,
        )
    )
    assert key == other


def test_a_serializer_of_the_class_s_own_stands() -> None:
    # (a time written as its date: two times of one day are one payload, and one key)
    morning = datetime(2026, 1, 1, 9, tzinfo=timezone(timedelta(hours=1)))
    assert _odd_key(Odd(day=morning)) == _odd_key(Odd(day=morning + timedelta(hours=5)))


class Tag:
    """A type only the message's own serializer writes."""

    def __init__(self, v: str) -> None:
        self.v = v

    def __hash__(self) -> int:
        return hash(self.v)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tag) and other.v == self.v


class Labelled(Message):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    tags: set[Tag]

    @field_serializer("tags", when_used="json")
    def _written(self, tags: set[Tag]) -> list[str]:
        return sorted(t.v for t in tags)


class Chunks(Message):
    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")
    chunks: set[bytes]


DayOnly = Annotated[datetime, PlainSerializer(lambda d: d.date().isoformat(), when_used="json")]


class Days(Message):
    days: frozenset[DayOnly]


class Sorted(Message):
    sizes: set[int]
    qty: list[int]

    @model_serializer(mode="wrap", when_used="json")
    def _keys_sorted(self, handler: Any) -> dict[str, Any]:
        return dict(sorted(handler(self).items()))


def _key_of(kind: str, cls: type[Message], message: Message) -> str | None:
    app = App("keys", url="memory://")
    app.message(kind, unique="queued")(cls)
    return app.envelope(message, owner="alice").unique_key


def test_a_set_its_own_serializer_writes_makes_a_key_and_equal_payloads_one() -> None:
    # (each crashed the enqueue, or keyed one payload twice, as its items were rebuilt)
    assert _key_of("t.l", Labelled, Labelled(tags={Tag("a"), Tag("b")})) == _key_of(
        "t.l", Labelled, Labelled(tags={Tag("b"), Tag("a")})
    )
    assert _key_of("t.c", Chunks, Chunks(chunks={b"\xff\x00"}))
    nine, two = (datetime(2026, 1, 1, h, tzinfo=UTC) for h in (9, 14))
    assert _key_of("t.d", Days, Days(days=frozenset({nine}))) == _key_of(
        "t.d", Days, Days(days=frozenset({two}))
    )


def test_fields_are_paired_by_name_whatever_order_json_writes_them_in() -> None:
    # (paired by place, a set's items stood in for another field: two orders, one key)
    assert _key_of("t.s", Sorted, Sorted(sizes={1, 2}, qty=[5])) != _key_of(
        "t.s", Sorted, Sorted(sizes={1, 2}, qty=[6])
    )
