"""A message field renamed in Python but kept on the wire (`Field(alias=...)`): its jobs are
stored as the wire names them, so the worker reads them back, from Python and over HTTP; a
unique key of such a field holds; an alias that would not read back is refused."""

from __future__ import annotations

from typing import Annotated

import httpx
import pytest
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, computed_field

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
