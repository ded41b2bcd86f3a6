"""The contract both halves import: message classes only, no handlers."""

from __future__ import annotations

from pydantic import Field

from offload import App, Message

app = App("quickstart")


@app.message("reports.export", version=1, queue="reports")
class ExportReport(Message):
    """Render a user's report for one month."""

    user_id: str = Field(min_length=1, max_length=64)
    period: str = Field(pattern=r"^\d{4}-\d{2}$")
    pages: int = Field(default=5, ge=1, le=100)


@app.message("text.shout", version=1)
class Shout(Message):
    """Upper-case a text (a fast job for trying things out)."""

    text: str = Field(max_length=10_000)
