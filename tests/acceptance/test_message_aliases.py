"""A message field renamed in Python but kept on the wire (`Field(alias=...)`): its jobs are
stored as the wire names them, so the worker reads them back, from Python and over HTTP; a
unique key of such a field holds; an alias that would not read back is refused."""

from __future__ import annotations

from typing import Annotated

import httpx
import pytest
from pydantic import AliasChoices, ConfigDict, Field

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

    class WriteOnlyAlias(Message):
        customer_name: Annotated[str, Field(serialization_alias="customer")]

    class Choices(Message):
        customer_name: Annotated[
            str, Field(validation_alias=AliasChoices("customer", "customer_name"))
        ]

    for cls in (ReadOnlyAlias, WriteOnlyAlias):
        with pytest.raises(ConfigurationError, match="customer_name is stored as"):
            app.message(f"t.{cls.__name__.lower()}")(cls)
    app.message("t.choices")(Choices)  # its stored name is one of the names it reads
