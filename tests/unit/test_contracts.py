"""Contracts as data: the snapshot `offload contracts export` writes, and the breaking changes
`offload contracts check` finds between a snapshot and the code, case by case."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field

from offload import App, FromPrincipal, Message
from offload.contracts import (
    BreakingChange,
    advisories,
    breaking_changes,
    client_changes,
    client_schema,
    dumps,
    enqueue_options_schema,
    loads,
    snapshot,
)
from offload.errors import ConfigurationError

KIND = "shop.export"


def contract(
    cls: type[Message],
    *,
    version: int = 1,
    queue: str = "reports",
    http: bool = True,
    upgrades_from: tuple[int, ...] = (),
    kind: str = KIND,
) -> dict[str, Any]:
    """The snapshot of an app declaring `cls` alone, as JSON would carry it."""
    app = App("contracts")
    app.message(kind, version=version, queue=queue, http=http)(cls)
    for step in upgrades_from:
        app.upgrade(kind, step)(lambda payload: payload)
    doc: dict[str, Any] = json.loads(dumps(snapshot(app)))
    return doc


def lines(old: dict[str, Any], new: dict[str, Any], **kw: Any) -> list[str]:
    return [str(change) for change in breaking_changes(old, new, **kw)]


# -- the message classes the cases compare ---------------------------------------------------


class Base(Message):
    name: str
    amount: float


class NameRemoved(Message):
    amount: float


class NameRenamed(Message):
    title: str
    amount: float


class NameInt(Message):
    name: int
    amount: float


class AmountInt(Message):
    name: str
    amount: int


class NameShort(Message):
    name: str = Field(max_length=10)
    amount: float


class NameShorter(Message):
    name: str = Field(max_length=5)
    amount: float


class NamePattern(Message):
    name: str = Field(pattern=r"^[a-z]+$")
    amount: float


class AmountPositive(Message):
    name: str
    amount: float = Field(gt=0)


class AmountAtLeastOne(Message):
    name: str
    amount: float = Field(ge=1)


class AmountAtLeastZero(Message):
    name: str
    amount: float = Field(ge=0)


class NewRequired(Message):
    name: str
    amount: float
    currency: str


class NewOptional(Message):
    name: str
    amount: float
    currency: str = "EUR"
    note: str | None = None


class NameOptional(Message):
    name: str | None
    amount: float


class NameOrInt(Message):
    name: str | int
    amount: float


class NameDefaulted(Message):
    name: str = "anonymous"
    amount: float


class Documented(Message):
    """Export a report (the docs may change freely)."""

    name: str = Field(description="who the report is for", title="Customer")
    amount: float


class WithPeriod(Message):
    period: Literal["year", "quarter", "month"]


class WithFewerPeriods(Message):
    period: Literal["year", "quarter"]


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"


class WithColour(Message):
    colour: Colour


class FewerColour(enum.Enum):
    RED = "red"
    GREEN = "green"


class WithFewerColours(Message):
    colour: FewerColour


class MoreColour(enum.Enum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"
    BLACK = "black"


class WithMoreColours(Message):
    colour: MoreColour


class Address(BaseModel):
    street: str
    city: str


class CityGone(BaseModel):
    street: str


class WithAddress(Message):
    address: Address
    sizes: list[float] = []
    tags: dict[str, float] = {}


class WithAddressNoCity(Message):
    address: CityGone
    sizes: list[float] = []
    tags: dict[str, float] = {}


class WithIntSizes(Message):
    address: Address
    sizes: list[int] = []
    tags: dict[str, float] = {}


class WithIntTags(Message):
    address: Address
    sizes: list[float] = []
    tags: dict[str, int] = {}


class Node(BaseModel):
    label: str
    children: list[Node] = []


class WithTree(Message):
    tree: Node


class Circle(BaseModel):
    shape: Literal["circle"]
    radius: float


class Square(BaseModel):
    shape: Literal["square"]
    side: float


class IntSquare(BaseModel):
    shape: Literal["square"]
    side: int


class WithShape(Message):
    figure: Annotated[Circle | Square, Field(discriminator="shape")]
    point: tuple[float, float] = (0, 0)


class WithIntSquare(Message):
    figure: Annotated[Circle | IntSquare, Field(discriminator="shape")]
    point: tuple[float, float] = (0, 0)


class WithPointList(Message):
    figure: Annotated[Circle | Square, Field(discriminator="shape")]
    point: list[float] = [0, 0]


class Owned(Message):
    user_id: Annotated[str, FromPrincipal()]
    name: str
    amount: float


class OwnedNameToo(Message):
    user_id: Annotated[str, FromPrincipal()]
    name: Annotated[str, FromPrincipal()]
    amount: float


class NotOwned(Message):
    user_id: str
    name: str
    amount: float


# -- the schema changes made in place (one version) ------------------------------------------

BREAKING = [
    ("removed field", Base, NameRemoved, ["v1, field name: removed (or renamed)"]),
    (
        "renamed field",
        Base,
        NameRenamed,
        [
            "v1, field name: removed (or renamed)",
            "v1, field title: new required field without a default",
        ],
    ),
    ("str to int", Base, NameInt, ["v1, field name: type changed from string to integer"]),
    (
        "number to integer",
        Base,
        AmountInt,
        ["v1, field amount: type narrowed from number to integer"],
    ),
    (
        "literal losing a value",
        WithPeriod,
        WithFewerPeriods,
        ["v1, field period: enum lost values ['month']"],
    ),
    (
        "enum class losing a value",
        WithColour,
        WithFewerColours,
        ["v1, field colour: enum lost values ['blue']"],
    ),
    ("maxLength added", Base, NameShort, ["v1, field name: maxLength 10 added"]),
    (
        "maxLength tightened",
        NameShort,
        NameShorter,
        ["v1, field name: maxLength tightened from 10 to 5"],
    ),
    ("pattern added", Base, NamePattern, ["v1, field name: pattern added '^[a-z]+$'"]),
    ("lower bound added", Base, AmountPositive, ["v1, field amount: lower bound > 0 added"]),
    (
        "lower bound raised",
        AmountAtLeastZero,
        AmountAtLeastOne,
        ["v1, field amount: lower bound tightened from >= 0 to >= 1"],
    ),
    (
        "inclusive bound made exclusive",
        AmountAtLeastZero,
        AmountPositive,
        ["v1, field amount: lower bound tightened from >= 0 to > 0"],
    ),
    (
        "new required field without a default",
        Base,
        NewRequired,
        ["v1, field currency: new required field without a default"],
    ),
    ("optional made required", NameDefaulted, Base, ["v1, field name: became required"]),
    ("null refused", NameOptional, Base, ["v1, field name: no longer accepts null"]),
    (
        "union losing a type",
        NameOrInt,
        Base,
        ["v1, field name: type changed from integer to string"],
    ),
    (
        "nested model losing a field",
        WithAddress,
        WithAddressNoCity,
        ["v1, field address.city: removed (or renamed)"],
    ),
    (
        "list items narrowed",
        WithAddress,
        WithIntSizes,
        ["v1, field sizes[]: type narrowed from number to integer"],
    ),
    (
        "map values narrowed",
        WithAddress,
        WithIntTags,
        ["v1, field tags.*: type narrowed from number to integer"],
    ),
    (
        "tagged union variant narrowed",
        WithShape,
        WithIntSquare,
        ["v1, field figure.side: type narrowed from number to integer"],
    ),
]

SAFE = [
    ("new optional fields", Base, NewOptional),
    ("integer to number", AmountInt, Base),
    ("union gaining a type", Base, NameOrInt),
    ("null accepted", Base, NameOptional),
    ("literal gaining a value", WithFewerPeriods, WithPeriod),
    ("enum class gaining values", WithColour, WithMoreColours),
    ("maxLength loosened", NameShorter, NameShort),
    ("maxLength dropped", NameShort, Base),
    ("lower bound lowered", AmountAtLeastOne, AmountAtLeastZero),
    ("exclusive bound made inclusive", AmountPositive, AmountAtLeastZero),
    ("pattern dropped", NamePattern, Base),
    ("required made optional", Base, NameDefaulted),
    ("docs changed", Base, Documented),
    ("nested model unchanged", WithAddress, WithAddress),
    ("recursive model unchanged", WithTree, WithTree),
    ("tuple made a list", WithShape, WithPointList),
]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [pytest.param(old, new, expected, id=name) for name, old, new, expected in BREAKING],
)
def test_a_narrowing_in_place_is_breaking(
    old: type[Message], new: type[Message], expected: list[str]
) -> None:
    assert lines(contract(old), contract(new)) == [f"{KIND} {e}" for e in expected]


@pytest.mark.parametrize(
    ("old", "new"), [pytest.param(old, new, id=name) for name, old, new in SAFE]
)
def test_a_widening_in_place_is_safe(old: type[Message], new: type[Message]) -> None:
    assert lines(contract(old), contract(new)) == []


# -- kinds, versions, queues and the HTTP API --------------------------------------------------


def test_a_new_kind_is_safe() -> None:
    old = contract(Base)
    new = contract(Base)
    new["kinds"]["shop.other"] = contract(NameInt, kind="shop.other")["kinds"]["shop.other"]
    assert lines(old, new) == []


def test_a_removed_kind_is_breaking_unless_allowed() -> None:
    old = contract(Base)
    old["kinds"]["shop.old"] = contract(NameInt, kind="shop.old", version=2)["kinds"]["shop.old"]
    new = contract(Base)
    assert lines(old, new) == [
        "shop.old v2: kind removed: its queued jobs would never run (drain them, then pass "
        "--allow-removed shop.old)"
    ]
    assert lines(old, new, allow_removed={"shop.old"}) == []


def test_check_warns_of_a_stale_or_misspelt_allow_removed_and_of_a_kind_made_unique() -> None:
    old = contract(Base)
    old["kinds"]["shop.old"] = contract(NameInt, kind="shop.old")["kinds"]["shop.old"]
    new = contract(Base)
    new["kinds"][KIND]["unique"] = "queued"
    allowed = {"shop.old", "shop.olb", KIND}
    assert lines(old, new, allow_removed=allowed) == []
    assert advisories(old, new, allow_removed=allowed) == [
        f"--allow-removed {KIND}: the kind is still declared (drop the option, or it lets a "
        "later removal pass unseen)",
        "--allow-removed shop.olb: the snapshot has no such kind (misspelt?)",
        f"{KIND}: made unique: jobs stored before carry no key, so a repeat of one of them is "
        "a second job until they have run",
    ]
    assert advisories(old, contract(Base), allow_removed={"shop.old"}) == []


def test_a_changed_queue_is_breaking_even_with_a_new_version() -> None:
    expected = [
        f"{KIND} v1: queue changed from reports to exports: jobs waiting in reports would be "
        "left there"
    ]
    assert lines(contract(Base), contract(Base, queue="exports")) == expected
    moved = contract(Base, queue="exports", version=2, upgrades_from=(1,))
    assert lines(contract(Base), moved) == expected


def test_a_new_version_needs_an_upgrader_from_the_previous_one() -> None:
    assert lines(contract(Base), contract(NameInt, version=2)) == [
        f"{KIND} v2: no upgrader from v1 (the snapshot has v1)"
    ]


def test_a_version_two_steps_on_needs_both_upgraders() -> None:
    assert lines(contract(Base), contract(NameInt, version=3, upgrades_from=(2,))) == [
        f"{KIND} v3: no upgrader from v1 (the snapshot has v1)"
    ]
    assert lines(contract(Base), contract(NameInt, version=3)) == [
        f"{KIND} v3: no upgrader from v1 (the snapshot has v1)",
        f"{KIND} v3: no upgrader from v2 (the snapshot has v1)",
    ]


def test_a_new_version_with_its_upgraders_may_change_anything_but_the_queue() -> None:
    old = contract(Owned)
    new = contract(NameInt, version=3, upgrades_from=(1, 2), http=False)
    assert lines(old, new) == []


def test_a_new_version_says_what_its_http_clients_would_meet() -> None:
    # No breaking change (stored jobs are upgraded), but the API takes v3 bodies only:
    old, new = contract(Base), contract(NameInt, version=3, upgrades_from=(1, 2))
    assert lines(old, new) == []
    assert [str(c) for c in client_changes(old, new)] == [
        f"{KIND} v3, field name: type changed from string to integer: clients that post "
        "the v1 body get 422"
    ]
    # a kind that leaves the API under a new version is gone for them,
    off = contract(Base, version=2, upgrades_from=(1,), http=False)
    assert [str(c) for c in client_changes(old, off)] == [
        f"{KIND} v2: no longer posted over HTTP: clients get 404"
    ]
    # and a widening, a kind never on the API, or one unchanged in version says nothing.
    assert client_changes(old, contract(Base, version=2, upgrades_from=(1,))) == []
    internal = contract(Base, http=False)
    assert client_changes(internal, contract(NameInt, version=2, upgrades_from=(1,))) == []
    assert client_changes(old, contract(NameInt)) == []


def test_a_version_that_goes_down_is_breaking() -> None:
    old = contract(Base, version=2, upgrades_from=(1,))
    assert lines(old, contract(Base, upgrades_from=(1,))) == [
        f"{KIND} v1: version went down from 2 to 1: jobs stored at v2 could not be read"
    ]


def test_a_removed_upgrader_is_breaking() -> None:
    old = contract(Base, version=3, upgrades_from=(1, 2))
    assert lines(old, contract(Base, version=3, upgrades_from=(2,))) == [
        f"{KIND} v1: upgrader from v1 removed: jobs stored at v1 could no longer be read"
    ]


def test_taking_a_kind_off_the_http_api_in_place_is_breaking() -> None:
    assert lines(contract(Base), contract(Base, http=False)) == [
        f"{KIND} v1: no longer posted over HTTP: clients get 404"
    ]
    assert lines(contract(Base, http=False), contract(Base)) == []


def test_filling_a_field_from_the_caller_in_place_is_breaking_both_ways() -> None:
    assert lines(contract(Owned), contract(OwnedNameToo)) == [
        f"{KIND} v1, field name: now filled from the caller: clients that send it get 422"
    ]
    assert lines(contract(Owned), contract(NotOwned)) == [
        f"{KIND} v1, field user_id: no longer filled from the caller: clients must send it"
    ]
    # Off the API, the web tier fills nothing: the payload is all that counts.
    assert lines(contract(Owned, http=False), contract(NotOwned, http=False)) == []


def test_a_breaking_change_names_kind_version_and_field() -> None:
    change = BreakingChange("a.b", 2, "address.city", "removed (or renamed)")
    assert str(change) == "a.b v2, field address.city: removed (or renamed)"
    assert str(BreakingChange("a.b", 2, None, "kind removed")) == "a.b v2: kind removed"


def test_a_malformed_kind_entry_is_a_configuration_error() -> None:
    old = contract(Base)
    del old["kinds"][KIND]["queue"]
    with pytest.raises(ConfigurationError, match=f"the contract of {KIND} is malformed"):
        breaking_changes(old, contract(Base))


# -- the snapshot itself ------------------------------------------------------------------------


def test_a_snapshot_holds_each_kind_with_its_routing_and_upgraders() -> None:
    entry = contract(Owned, version=2, upgrades_from=(1,))["kinds"][KIND]
    assert entry == {
        "fair": False,
        "from_principal": ["user_id"],
        "http": True,
        "queue": "reports",
        "schema": Owned.model_json_schema(),
        "unique": None,
        "unique_key": [],
        "upgrades_from": [1],
        "version": 2,
    }


def _declared(fair: bool = False, unique: str | None = None, key: tuple[str, ...] = ()) -> Any:
    app = App("contracts")
    app.message(KIND, queue="reports", fair=fair, unique=unique, unique_key=key or None)(Base)
    return json.loads(dumps(snapshot(app)))


def test_a_kind_made_fair_or_unique_otherwise_is_breaking_and_an_old_snapshot_is_not() -> None:
    plain = _declared()
    assert lines(plain, _declared(fair=True)) == [
        f"{KIND} v1: fair changed from false to true: the queue reports is claimed "
        "otherwise, and on Redis every worker of it must run one declaration (deploy them "
        "together)"
    ]
    queued = _declared(unique="queued", key=("name",))
    assert lines(queued, _declared(unique="active", key=("name",))) == [
        f"{KIND} v1: unique changed from 'queued' to 'active': a job that runs now holds its "
        "key, so a repeat meanwhile is answered otherwise (200 with it, or a new job)"
    ]
    assert lines(queued, _declared(unique="queued", key=("name", "amount"))) == [
        f"{KIND} v1: unique key changed from name to amount, name: a job stored under the "
        "old key and a new one no longer match (drain, or expect a repeat)"
    ]
    # The key's fields in another order make the same key; made unique, or no longer,
    # strands no stored job.
    both = _declared(unique="queued", key=("name", "amount"))
    assert lines(both, _declared(unique="queued", key=("amount", "name"))) == []
    assert lines(plain, queued) == lines(queued, plain) == lines(queued, queued) == []
    # A snapshot exported before fair and unique were recorded says nothing of them.
    old = json.loads(json.dumps(plain))
    for name in ("fair", "unique", "unique_key"):
        del old["kinds"][KIND][name]
    assert lines(old, _declared(fair=True, unique="queued")) == []


def test_the_enqueue_options_are_the_typed_options_of_enqueue() -> None:
    schema = enqueue_options_schema()
    assert set(schema["properties"]) == {
        "priority",
        "delay",
        "run_at",
        "idempotency_key",
        "callback_url",
        "notify_email",
    }
    assert schema["properties"]["priority"]["type"] == "integer"
    assert schema["additionalProperties"] is False


def test_the_same_code_gives_the_same_bytes() -> None:
    app = App("contracts")
    app.message("b.second", queue="q")(NameInt)
    app.message("a.first", queue="q")(Base)
    text = dumps(snapshot(app))
    assert text == dumps(snapshot(app))
    assert text.endswith("}\n")
    assert list(json.loads(text)["kinds"]) == ["a.first", "b.second"]
    assert loads(text) == json.loads(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "is not JSON"),
        ("[]", "is not an offload contracts snapshot"),
        ('{"kinds": {}}', "is not an offload contracts snapshot"),
        ('{"kinds": {}, "format": 99}', "has snapshot format 99"),
    ],
)
def test_a_file_that_is_no_snapshot_is_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        loads(text, source="contracts.json")


def test_the_client_schema_leaves_out_fields_filled_from_the_caller() -> None:
    app = App("contracts")
    app.message(KIND)(Owned)
    schema = client_schema(app.kinds[KIND])
    assert set(schema["properties"]) == {"name", "amount"}
    assert schema["required"] == ["name", "amount"]
    assert "user_id" in Owned.model_json_schema()["properties"]  # the class is left alone


# -- the demo's committed snapshot -----------------------------------------------------------


def test_the_demo_snapshot_is_current() -> None:
    from offload.demo import contracts as demo

    committed = Path(demo.__file__).with_name("contracts.json")
    assert committed.read_text(encoding="utf-8") == dumps(snapshot(demo.app)), (
        "the demo's contracts changed: check them (make contracts), then record them with "
        "offload contracts export --app offload.demo.contracts:app "
        "> src/offload/demo/contracts.json"
    )
