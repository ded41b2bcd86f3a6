"""Message classes only: what the web process imports."""

from __future__ import annotations

from pydantic import Field

from offload import App, Message

app = App("e2eapp")


@app.message("e2e.export", queue="reports")
class Export(Message):
    user_id: str = Field(min_length=1)
    steps: int = Field(default=3, ge=1, le=50)


@app.message("e2e.slow", queue="slow", max_attempts=4)
class Slow(Message):
    seconds: float = Field(ge=0, le=60)


@app.message("e2e.flaky", max_attempts=3)
class Flaky(Message):
    flag: str


@app.message("e2e.noop", queue="bulk")
class Noop(Message):
    n: int


@app.message("e2e.stuck", queue="stuck", max_attempts=1)
class Stuck(Message):
    pass
