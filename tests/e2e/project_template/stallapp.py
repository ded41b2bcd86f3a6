"""A worker app for stall tests: each handler writes a line as it starts, so a test counts
the runs of every job (and which process ran it)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from offload import App, Backoff, Cancel, Context, Message

app = App("stallapp")
LOG = Path(os.environ["E2E_LOG_DIR"])
#: Rescued jobs run again soon: a test waits for them, not for a backoff.
QUICK = Backoff(base_s=0.05, cap_s=0.2)


@app.message("stall.gate", queue="stall")
class Gate(Message):
    """Runs until its flag file exists, then ends cancelled: holds the worker's one slot
    while jobs wait ahead. (A cancelled run does not count in the prefetch's mean run time,
    so the worker keeps the jobs it holds ahead when the gate ends after a stall.)"""

    flag: str


@app.message("stall.step", queue="stall")
class Step(Message):
    n: int


@app.message("stall.endless", queue="stall")
class Endless(Message):
    """Runs until a flag file names the process running it, or until cancelled."""


def _record(line: str, name: str = "starts.log") -> None:
    with open(LOG / name, "a") as f:  # O_APPEND: one short write per line is atomic
        f.write(line + "\n")


@app.handles(Gate, backoff=QUICK)
async def gate(msg: Gate, ctx: Context) -> None:
    _record(f"{ctx.job_id} {os.getpid()}")
    while True:
        if (LOG / msg.flag).exists():
            raise Cancel("the gate opened")
        await asyncio.sleep(0.02)


@app.handles(Step, backoff=QUICK)
async def step(msg: Step, ctx: Context) -> int:
    _record(f"{ctx.job_id} {os.getpid()}")
    return msg.n


@app.handles(Endless, backoff=QUICK)
async def endless(msg: Endless, ctx: Context) -> None:
    _record(f"{ctx.job_id} {os.getpid()}")
    try:
        while True:
            if (LOG / f"stop-{os.getpid()}").exists():
                return
            await asyncio.sleep(0.02)
    except asyncio.CancelledError:
        _record(f"{ctx.job_id} {os.getpid()}", "cancelled.log")
        raise
