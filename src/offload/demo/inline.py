"""Inline mode: the same work done inside the request, the problem the pattern solves.

`offload demo --inline` serves the same pages, but "Export my report" renders the PDF and
sends the email before it answers, and an upload is resized before the page returns. It is
there to compare (see the burst benchmark): one slow request ties up the server for everyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import orjson

from .._ids import uuid7
from ..clock import iso
from ..stores.blobs import BlobStore
from ..web.present import Presenter
from . import images, mail
from .config import DemoConfig
from .contracts import DEFAULT_THUMBNAIL_SIZES
from .data import DemoUser
from .exports import REPORT_KIND, THUMBNAILS_KIND, JobView, job_view
from .report import render_report, report_result
from .sales import load_sales

log = logging.getLogger("offload.demo")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS exports (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, kind TEXT NOT NULL,
    payload TEXT NOT NULL, record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS exports_owner ON exports (owner, kind, id);
"""


class InlineExports:
    """Exports done in the request; their records are kept in `inline.db` of the folder."""

    inline = True

    def __init__(self, config: DemoConfig, blobs: BlobStore, present: Presenter) -> None:
        self.config = config
        self.blobs = blobs
        self.present = present
        self.path = config.folder / "inline.db"
        with self._connect() as conn:
            conn.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=10)
        try:
            with conn:
                yield conn
        finally:
            conn.close()

    def _view(self, record: str, payload: str) -> JobView:
        return job_view(
            self.present.record(orjson.loads(record)), orjson.loads(payload), inline=True
        )

    def _select(self, sql: str, args: tuple[Any, ...]) -> list[JobView]:
        with self._connect() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [self._view(r[0], r[1]) for r in rows]

    async def list(self, owner: str, kind: str, limit: int = 25) -> list[JobView]:
        sql = (
            "SELECT record, payload FROM exports WHERE owner = ? AND kind = ?"
            " ORDER BY id DESC LIMIT ?"
        )
        return await asyncio.to_thread(self._select, sql, (owner, kind, limit))

    async def get(self, owner: str, job_id: str) -> JobView | None:
        sql = "SELECT record, payload FROM exports WHERE owner = ? AND id = ?"
        views = await asyncio.to_thread(self._select, sql, (owner, job_id))
        return views[0] if views else None

    def _save(self, owner: str, record: dict[str, Any], payload: dict[str, Any]) -> None:
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO exports VALUES (?, ?, ?, ?, ?)",
                (
                    record["id"],
                    owner,
                    record["kind"],
                    orjson.dumps(payload).decode(),
                    orjson.dumps(record).decode(),
                ),
            )

    async def _finish(
        self, owner: str, kind: str, payload: dict[str, Any], started: float, work: Any
    ) -> JobView:
        """Run `work` (returning the result) and record the outcome like a finished job."""
        job_id = uuid7()
        record: dict[str, Any] = {"id": job_id, "kind": kind, "created_at": iso(started)}
        try:
            result = await work(job_id)
            record.update(state="succeeded", progress={"fraction": 1.0, "message": "done"})
            record.update(result=result, error=None)
        except Exception as exc:
            log.exception("inline %s failed", kind, extra={"action": "inline_failed"})
            record.update(state="failed", progress=None, result=None)
            record.update(error={"type": type(exc).__name__, "message": str(exc)[:500]})
        record["finished_at"] = iso(time.time())
        await asyncio.to_thread(self._save, owner, record, payload)
        return job_view(self.present.record(record), payload, inline=True)

    async def export_report(self, user: DemoUser, period: str) -> JobView:
        async def work(job_id: str) -> dict[str, Any]:
            figures = await asyncio.to_thread(load_sales, self.config.data_path, user.id, period)
            rendered = await asyncio.to_thread(
                render_report, figures, None, pace_s=self.config.pace_s
            )
            key = f"reports/{job_id}/{rendered.filename}"
            result = report_result(await self.blobs.put(key, rendered.pdf), rendered, figures)
            totals = figures.totals
            summary = mail.ReportSummary(
                job_id, period, rendered.pages, totals.revenue_cents, totals.orders
            )
            smtp, message = mail.confirmation_for(self.config, user, summary)
            await mail.send(message, smtp)  # the request waits for the mail server too
            return result

        payload = {"user_id": user.id, "period": period}
        return await self._finish(user.id, REPORT_KIND, payload, time.time(), work)

    async def make_thumbnails(self, user: DemoUser, image_key: str, filename: str) -> JobView:
        async def work(job_id: str) -> dict[str, Any]:
            original = await self.blobs.get(image_key)
            info = images.inspect_image(original)
            thumbnails = await asyncio.to_thread(
                images.make_thumbnails, original, DEFAULT_THUMBNAIL_SIZES
            )
            refs = [
                await self.blobs.put(f"thumbnails/{job_id}/{t.size}.webp", t.data)
                for t in thumbnails
            ]
            copy = await self.blobs.put(images.original_key(job_id, image_key), original)
            return images.thumbnails_result(copy, filename, info, thumbnails, refs)

        payload = {"image_key": image_key, "filename": filename}
        return await self._finish(user.id, THUMBNAILS_KIND, payload, time.time(), work)
