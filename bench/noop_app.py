"""A handler that does nothing but count, in the worker's own memory: what the worker itself
costs per job (bench/worker_cost.py). The last completion writes the first and last
completion times to BENCH_DONE_FILE (written whole, then renamed into place)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from offload import App, Context, Message

TARGET = int(os.environ.get("BENCH_TARGET", "0") or 0)
DONE_FILE = os.environ.get("BENCH_DONE_FILE", "")
app = App("noop")
_done = 0
_first = 0.0


@app.message("bench.noop", queue="noop")
class Noop(Message):
    i: int


@app.handles(Noop)
async def noop(msg: Noop, ctx: Context) -> None:
    global _done, _first
    _done += 1
    if _done == 1:
        _first = time.time()
    if _done == TARGET and DONE_FILE:
        part = Path(DONE_FILE + ".part")
        part.write_text(f"{_first!r} {time.time()!r}")  # once, at the end
        part.replace(DONE_FILE)
