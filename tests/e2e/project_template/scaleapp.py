"""A worker app for the autoscaler test: each job waits for the test's start flag (a file),
then sleeps 50 ms and writes one line (its id and the process that ran it), so a test holds
a burst until the workers have grown and then counts the runs of every job."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from offload import App, Context, Message

app = App("scaleapp")
LOG = Path(os.environ["E2E_LOG_DIR"])


@app.message("scale.work", queue="scale")
class Work(Message):
    n: int


def _record(line: str) -> None:
    with open(LOG / "runs.log", "a") as f:  # O_APPEND: one short write per line is atomic
        f.write(line + "\n")


@app.handles(Work)
async def work(msg: Work, ctx: Context) -> None:
    while True:
        if (LOG / "go").exists():
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.05)
    _record(f"{ctx.job_id} {os.getpid()}")
