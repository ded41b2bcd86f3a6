"""The demo's contract: its App and message classes, imported by both halves (no handlers).

A report is always the caller's own: over the API its `user_id` is the caller's principal
(`FromPrincipal`), never a field the client chooses. Thumbnails and confirmation emails are
follow-ups the demo's own code starts (after an upload, after a report), so they are off
the HTTP API (`http=False`).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from offload import App, FromPrincipal, Message

app = App("offload-demo")

#: Thumbnail edge lengths (pixels) made for every upload.
DEFAULT_THUMBNAIL_SIZES = (64, 160, 320)


@app.message("demo.report", version=1, queue="reports", timeout=300)
class ExportReport(Message):
    """Render a shop's sales report for a year or a quarter as a PDF."""

    user_id: Annotated[str, FromPrincipal(), Field(min_length=1, max_length=64)]
    period: str = Field(pattern=r"^\d{4}(-Q[1-4])?$")


@app.message("demo.thumbnails", version=1, queue="images", timeout=120, http=False)
class MakeThumbnails(Message):
    """Resize an uploaded image (already in the blob store) into thumbnails."""

    image_key: str = Field(min_length=1, max_length=512)
    filename: str = Field(max_length=255)
    sizes: list[Annotated[int, Field(ge=16, le=1024)]] = Field(
        default_factory=lambda: list(DEFAULT_THUMBNAIL_SIZES), min_length=1, max_length=8
    )


@app.message("demo.confirm", version=1, queue="mail", max_attempts=8, timeout=60, http=False)
class SendConfirmation(Message):
    """Email a user that their report is ready."""

    user_id: str = Field(min_length=1, max_length=64)
    report_job_id: str = Field(min_length=1, max_length=64)
    period: str = Field(pattern=r"^\d{4}(-Q[1-4])?$")
    pages: int = Field(ge=1)
    revenue_cents: int
    orders: int = Field(ge=0)
