"""The typed Python API: enqueue options are checked."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from offload import App, Message

pytestmark = pytest.mark.anyio


class Export(Message):
    period: str


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("priority", "high"),
        ("priority", 1.5),
        ("priority", True),
        ("delay", "5s"),
        ("run_at", "2030-01-01T00:00:00Z"),
        ("idempotency_key", 7),
        ("callback_url", b"https://example.com"),
        ("notify_email", ["a@example.com"]),
        ("owner", None),
    ],
)
async def test_a_wrongly_typed_option_is_a_type_error_naming_it(
    app: App, option: str, value: Any
) -> None:
    app.message("t.export")(Export)
    with pytest.raises(TypeError, match=f"^{option} must be"):
        await app.enqueue(Export(period="p"), **{option: value})
    with pytest.raises(TypeError, match=f"^{option} must be"):
        await app.enqueue_many([Export(period="p")], **{option: value})
    with pytest.raises(TypeError, match=f"^{option} must be"):
        await asyncio.to_thread(app.enqueue_sync, Export(period="p"), **{option: value})
    assert await app.list_jobs(owner=None) == []
    await app.close()


async def test_well_typed_options_are_applied(app: App) -> None:
    app.message("t.export")(Export)
    when = datetime.now(UTC) + timedelta(hours=2)
    job = await app.enqueue(
        Export(period="p"), priority=-3, run_at=when, idempotency_key="k", owner="bob"
    )
    row = await app.get(job.id)
    assert row is not None and row.priority == -3 and row.owner == "bob"
    assert row.idempotency_key == "k" and abs(row.run_at - when.timestamp()) < 0.01
    delayed = await app.enqueue(Export(period="q"), delay=2)  # an int is a number of seconds
    row = await app.get(delayed.id)
    assert row is not None and row.run_at > row.enqueued_at + 1
    await app.close()
