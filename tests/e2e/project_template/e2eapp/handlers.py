"""Handlers: only worker processes import this module (it records who did)."""

from __future__ import annotations

import asyncio
import atexit
import os
import sys
import time
from pathlib import Path

from e2eapp.contracts import Export, Flaky, Noop, Slow, Stuck, app
from offload import Backoff, Context

__all__ = ["app"]

LOG = Path(os.environ["E2E_LOG_DIR"])
with open(LOG / "imports.log", "a") as _f:
    _f.write(f"{os.getpid()} {' '.join(sys.argv[1:3])}\n")


def _record(name: str, line: str) -> None:
    with open(LOG / name, "a") as f:  # O_APPEND: one short write per line is atomic
        f.write(line + "\n")


# What a process's exit functions see (a tracer's last export would run so): whether they ran.
atexit.register(_record, "exits.log", str(os.getpid()))


@app.handles(Export)
async def export(msg: Export, ctx: Context) -> dict[str, object]:
    for step in range(1, msg.steps + 1):
        await asyncio.sleep(0.15)
        await ctx.progress(step / msg.steps, f"step {step} of {msg.steps}")
    ref = await ctx.blobs.put(f"exports/{ctx.job_id}.txt", f"report for {msg.user_id}".encode())
    return {"file": ref, "steps": msg.steps}


@app.handles(Slow)
async def slow(msg: Slow, ctx: Context) -> dict[str, object]:
    _record("slow.log", f"start {ctx.job_id} {ctx.attempt} {os.getpid()}")
    await asyncio.sleep(msg.seconds)
    _record("slow.log", f"end {ctx.job_id} {ctx.attempt} {os.getpid()}")
    return {"slept": msg.seconds, "attempt": ctx.attempt}


@app.handles(Flaky, backoff=Backoff(base_s=0.05, cap_s=0.2))
def flaky(msg: Flaky, ctx: Context) -> str:
    if not (LOG / msg.flag).exists():
        raise RuntimeError(f"flag {msg.flag} is not set")
    return "fixed"


@app.handles(Noop)
async def noop(msg: Noop, ctx: Context) -> None:
    _record("noop.log", ctx.job_id)


@app.handles(Stuck, timeout=0.5)
def stuck(msg: Stuck, ctx: Context) -> None:
    time.sleep(3600)  # never looks at ctx.cancelled: its thread runs on past the attempt
