# myproj/worker.py: the worker half
from datetime import datetime

from offload import Context

from myproj.contracts import ExportReport, app


def render(msg: ExportReport) -> bytes:
    """Your report: made with a PDF library or a template engine (plain text here)."""
    month = datetime.strptime(msg.period, "%Y-%m")  # a period that is no month: ValueError
    return f"Sales report of {msg.user_id} for {month:%B %Y}\n".encode()


@app.handles(ExportReport, max_attempts=5, timeout=120)
async def export_report(msg: ExportReport, ctx: Context) -> dict[str, str]:
    await ctx.progress(0.5, "rendering")
    ref = await ctx.blobs.put(f"reports/{ctx.job_id}.txt", render(msg))
    return {"report": ref}  # a blob reference: the API hands out a signed link
