"""A store as the web tier's hub reads it, every call passed through: a test subclasses it
to count or delay one of them."""

from __future__ import annotations

from offload.brokers.base import Change
from offload.contract import JobRow
from offload.web.events import Feed


class Through:
    """`store` seen through the hub's `Feed` calls, unchanged."""

    def __init__(self, store: Feed) -> None:
        self.store = store

    async def changes_since(
        self, seq: int, *, job_id: str | None = None, owner: str | None = None, limit: int = 500
    ) -> list[Change]:
        return await self.store.changes_since(seq, job_id=job_id, owner=owner, limit=limit)

    async def get(self, job_id: str) -> JobRow | None:
        return await self.store.get(job_id)

    async def last_seq(self) -> int:
        return await self.store.last_seq()

    async def feed_head(self, seq: int) -> int:
        return await self.store.feed_head(seq)

    async def wait_changes(self, timeout: float) -> None:
        await self.store.wait_changes(timeout)
