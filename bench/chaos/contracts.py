"""The chaos app's message: what the web process imports (no handler)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field

from offload import App, Message

from .skew import SkewedClock

#: Attempts per job: enough that no job runs out of them under the faults of a run, so every
#: accepted job is expected to succeed.
DEFAULT_MAX_ATTEMPTS = 25

_skew_file = os.environ.get("CHAOS_SKEW_FILE")
app = App("chaos", clock=SkewedClock(Path(_skew_file)) if _skew_file else None)


@app.message("chaos.work", queue="chaos", max_attempts=DEFAULT_MAX_ATTEMPTS)
class Work(Message):
    """One unit of chaos work: sleep `sleep_ms`, fail the first attempt when `flaky`."""

    n: int
    sleep_ms: int = Field(ge=0, le=2000)
    flaky: bool = False


def expected_value(n: int) -> int:
    """The result a handler derives from its input (the driver checks it)."""
    return (n * 7919 + 13) % 1_000_003
