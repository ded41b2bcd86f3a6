"""Message classes only: what the web process imports."""

from __future__ import annotations

from offload import App, Message

app = App("tracedapp")


@app.message("traced.report", queue="reports")
class Report(Message):
    user_id: str
    pages: int = 2
