"""A message field renamed in Python but kept on the wire (`Field(alias=...)`): its jobs are
stored as the wire names them, so the worker reads them back, from Python and over HTTP; a
unique key of such a field holds; an alias that would not read back is refused."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import httpx
import pytest
import typing_extensions
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, computed_field
from pydantic.dataclasses import dataclass as pydantic_dataclass

from offload import App, ConfigurationError, Context, JobState, Message
from offload.testing import run_jobs

pytestmark = pytest.mark.anyio


class Invoice(Message):
    model_config = ConfigDict(populate_by_name=True)

    order_id: int
    customer_name: Annotated[str, Field(alias="customer")]


async def test_a_field_with_an_alias_is_stored_as_sent_and_read_back(
    app: App, web: httpx.AsyncClient
) -> None:
    app.message("t.invoice", unique="queued", unique_key=("customer_name",))(Invoice)
    seen: list[tuple[int, str]] = []

    @app.handles(Invoice)
    async def bill(msg: Invoice, ctx: Context) -> None:
        seen.append((msg.order_id, msg.customer_name))

    # When one job is enqueued from Python (by the field's name) and one over HTTP (by
    # its alias, as the kind's schema says)
    first = await app.enqueue(Invoice(order_id=1, customer_name="acme"))
    sent = await web.post("/v1/jobs/t.invoice", json={"order_id": 2, "customer": "globex"})
    assert sent.status_code == 202, sent.text

    # Then both are stored as the wire names them, and both run
    row = await app.get(first.id)
    assert row is not None and row.payload == {"order_id": 1, "customer": "acme"}
    rows = await run_jobs(app)
    assert [row.state for row in rows] == [JobState.SUCCEEDED] * 2
    assert sorted(seen) == [(1, "acme"), (2, "globex")]

    # and a unique key of the aliased field tells customers apart (it read no value, and
    # every job of the kind shared one key)
    one = await app.enqueue(Invoice(order_id=3, customer_name="acme"))
    again = await app.enqueue(Invoice(order_id=4, customer_name="acme"))
    other = await app.enqueue(Invoice(order_id=5, customer_name="initech"))
    assert again.id == one.id and other.id != one.id


async def test_a_field_whose_stored_name_would_not_read_back_is_refused(app: App) -> None:
    class ReadOnlyAlias(Message):
        customer_name: Annotated[str, Field(validation_alias="customer")]

    class Street(BaseModel):
        name: Annotated[str, Field(validation_alias="streetName")]

    class NestedReadOnly(Message):
        streets: list[Street]

    class Choices(Message):
        customer_name: Annotated[
            str, Field(validation_alias=AliasChoices("customer", "customer_name"))
        ]

    for cls, where in (
        (ReadOnlyAlias, "ReadOnlyAlias.customer_name"),
        (NestedReadOnly, "Street.name"),
    ):
        with pytest.raises(ConfigurationError, match=rf"{where} is stored as"):
            app.message(f"t.{cls.__name__.lower()}")(cls)
    app.message("t.choices")(Choices)  # its stored name is one of the names it reads


class Address(BaseModel):  # an alias for output only, at depth: stored by name
    street_name: Annotated[str, Field("UNSET", serialization_alias="streetName")]


class Shipment(Message):
    address: Address
    note: Annotated[str, Field(serialization_alias="Note")] = ""


class Renamed(Message):  # aliases that its class does not read: stored by name
    model_config = ConfigDict(validate_by_alias=False, validate_by_name=True)

    customer_name: Annotated[str, Field(alias="customer")]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def shouted(self) -> str:
        return self.customer_name.upper()


class Line(BaseModel):  # forbids keys it does not declare, and computes one
    model_config = ConfigDict(extra="forbid")

    qty: int
    price: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total(self) -> int:
        return self.qty * self.price


@pydantic_dataclass
class Point:
    x_val: Annotated[int, Field(validation_alias="xVal")]


class Plot(Message):
    point: Point


class Order(Message):
    lines: list[Line]


async def test_nested_computed_fields_are_left_out_and_nested_dataclasses_checked(
    app: App,
) -> None:
    # A nested model's computed field was stored and refused as it was read (extra keys
    # forbidden); a nested dataclass whose stored name it would not read back was accepted
    with pytest.raises(ConfigurationError, match=r"Point\.x_val is stored as 'x_val'"):
        app.message("t.plot")(Plot)
    app.message("t.order")(Order)
    totals: list[int] = []

    @app.handles(Order)
    async def order(msg: Order, ctx: Context) -> None:
        totals.extend(line.total for line in msg.lines)

    job = await app.enqueue(Order(lines=[Line(qty=2, price=3)]))
    (row,) = await run_jobs(app)
    assert (row.id, row.state, row.payload) == (
        job.id, JobState.SUCCEEDED, {"lines": [{"qty": 2, "price": 3}]}
    )  # fmt: skip
    assert totals == [6]


async def test_a_message_whose_aliases_are_for_output_only_is_stored_by_name(
    app: App,
) -> None:
    # A nested model's serialization alias made its value the default, silently
    app.message("t.ship")(Shipment)
    app.message("t.renamed")(Renamed)
    seen: list[object] = []

    @app.handles(Shipment)
    async def ship(msg: Shipment, ctx: Context) -> None:
        seen.append(msg.address.street_name)

    @app.handles(Renamed)
    async def rename(msg: Renamed, ctx: Context) -> None:
        seen.append(msg.shouted)

    shipped = await app.enqueue(Shipment(address=Address(street_name="real"), note="n"))
    renamed = await app.enqueue(Renamed(customer_name="acme"))
    rows = {row.id: row for row in await run_jobs(app)}
    assert rows[shipped.id].payload == {"address": {"street_name": "real"}, "note": "n"}
    assert rows[renamed.id].payload == {"customer_name": "acme"}  # (no computed field)
    assert sorted(map(str, seen)) == ["ACME", "real"]


async def test_a_message_declared_before_its_forward_references_resolve_is_decided_later(
    app: App,
) -> None:
    # Decided (and kept) as it was declared, its unresolved nested model unseen: stored by
    # alias, which that model does not read
    class Fwd(Message):
        x: Later

    app.message("t.fwd")(Fwd)

    class Later(BaseModel):
        q: Annotated[int, Field(serialization_alias="Q")]

    Fwd.model_rebuild()
    seen: list[int] = []

    @app.handles(Fwd)
    async def fwd(msg: Fwd, ctx: Context) -> None:
        seen.append(msg.x.q)

    await app.enqueue(Fwd(x=Later(q=1)))
    (row,) = await run_jobs(app)
    assert (row.state, row.payload, seen) == (JobState.SUCCEEDED, {"x": {"q": 1}}, [1])


@dataclasses.dataclass
class Addr:  # a standard dataclass (its annotations text, under future annotations)
    street: Annotated[str, Field(validation_alias="streetName")]


@dataclasses.dataclass
class Box:  # its Field as the default, which pydantic reads as well
    v: str = Field(validation_alias="V")  # type: ignore[assignment]


class Crate(Message):
    box: Box


class Colours(typing_extensions.TypedDict):
    colour: Annotated[str, Field(validation_alias="Colour")]


class Ship(Message):
    to: Addr


class Paint(Message):
    opts: Colours


async def test_nested_standard_dataclasses_and_typeddicts_are_checked(app: App) -> None:
    # Accepted, then every job failed for good (`to.streetName Field required`)
    for cls, where in ((Ship, "Addr.street"), (Paint, "Colours.colour"), (Crate, "Box.v")):
        with pytest.raises(ConfigurationError, match=rf"{where} is stored as"):
            app.message(f"t.{cls.__name__.lower()}")(cls)


async def test_a_forward_reference_local_to_a_function_resolves_at_the_first_job(
    app: App,
) -> None:
    # The App's open resolved it in its own frame, failed, and refused an app that ran
    class Order(Message):
        line: LineItem

    class LineItem(BaseModel):
        sku: str

    app.message("t.order")(Order)
    async with app:
        job = await app.enqueue(Order(line=LineItem(sku="a1")))
    row = await app.get(job.id)
    assert row is not None and row.payload == {"line": {"sku": "a1"}}
