"""The worker half: handlers for the quickstart's message kinds."""

from __future__ import annotations

import asyncio

from examples.quickstart.contracts import ExportReport, Shout, app
from offload import Context

__all__ = ["app"]


@app.handles(ExportReport, max_attempts=5, timeout=120)
async def export_report(msg: ExportReport, ctx: Context) -> dict[str, str]:
    lines = [f"Report for {msg.user_id}, {msg.period}"]
    for page in range(1, msg.pages + 1):
        await ctx.progress(page / msg.pages, f"rendering page {page} of {msg.pages}")
        await asyncio.sleep(0.2)
        lines.append(f"page {page}: all good")
    ref = await ctx.blobs.put(f"reports/{ctx.job_id}.txt", "\n".join(lines).encode())
    return {"report": ref}


@app.handles(Shout)
def shout(msg: Shout, ctx: Context) -> dict[str, str]:
    return {"text": msg.text.upper()}
