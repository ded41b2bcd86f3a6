"""The jobs of the scale-out benchmark: one that waits on I/O (a 20 ms asyncio sleep) and
one that does nothing (the claim-only run). Workers in the hosts' namespaces run this app."""

from __future__ import annotations

import asyncio

from offload import App, Context, Message

#: Seconds a `Wait` job waits: I/O, not CPU, so hosts add capacity on a 2-core machine.
WAIT_S = 0.020
#: The queue both kinds use.
QUEUE = "scaleout"

app = App("scaleout")


@app.message("bench.scaleout.wait", queue=QUEUE)
class Wait(Message):
    i: int


@app.message("bench.scaleout.noop", queue=QUEUE)
class Noop(Message):
    i: int


@app.handles(Wait)
async def wait(msg: Wait, ctx: Context) -> None:
    await asyncio.sleep(WAIT_S)


@app.handles(Noop)
async def noop(msg: Noop, ctx: Context) -> None:
    return None
