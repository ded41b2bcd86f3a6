"""The chaos app's handler: only worker processes import it; it records every execution."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from offload import Backoff, Context

from .contracts import Work, app, expected_value

__all__ = ["app"]

_LOG_DIR = Path(os.environ.get("CHAOS_LOG_DIR", "."))
_fd: int | None = None


def record(*fields: object) -> None:
    """Append one line to this process's execution log and fsync it: the line survives a
    SIGKILL the moment after."""
    global _fd
    if _fd is None:
        path = _LOG_DIR / f"exec-{os.getpid()}.log"
        _fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(_fd, (" ".join(map(str, fields)) + "\n").encode())
    os.fsync(_fd)


@app.handles(Work, backoff=Backoff(base_s=0.05, cap_s=0.5))
async def work(msg: Work, ctx: Context) -> dict[str, int]:
    pid = os.getpid()
    record("start", ctx.job_id, ctx.attempt, pid, f"{time.time():.6f}")
    await asyncio.sleep(msg.sleep_ms / 1000)
    if msg.flaky and ctx.attempt == 1:
        record("fail", ctx.job_id, ctx.attempt, pid, f"{time.time():.6f}")
        raise RuntimeError("flaky on its first attempt, by design")
    record("end", ctx.job_id, ctx.attempt, pid, f"{time.time():.6f}")
    return {"value": expected_value(msg.n), "attempt": ctx.attempt, "pid": pid}
