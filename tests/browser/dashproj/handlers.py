"""The handlers: an invoice fails (and goes dead: one attempt) while the file named by
DASHPROJ_FAIL_FLAG exists, as if the payment provider were down."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from offload import Context

from .contracts import Invoice, Ping, app


class ProviderDown(RuntimeError):
    """The payment provider did not answer."""


@app.handles(Invoice, max_attempts=1)
async def invoice(msg: Invoice, ctx: Context) -> dict[str, Any]:
    await ctx.progress(0.5, "charging")
    if await asyncio.to_thread(Path(os.environ["DASHPROJ_FAIL_FLAG"]).exists):
        raise ProviderDown(f"payment provider down while billing {msg.customer}")
    return {"charged": msg.amount}


@app.handles(Ping)
async def ping(msg: Ping, ctx: Context) -> int:
    return msg.n
