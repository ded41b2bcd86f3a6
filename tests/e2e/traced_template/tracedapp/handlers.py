"""The worker process's entry (`offload worker --app tracedapp.handlers:app`): tracing
configured, then handlers that make spans of their own."""

from __future__ import annotations

from opentelemetry import trace

from tracedapp.otel import configure

configure("worker")

from offload import Context  # noqa: E402
from tracedapp.contracts import Report, app  # noqa: E402

__all__ = ["app"]
tracer = trace.get_tracer("tracedapp")


@app.handles(Report)
async def report(msg: Report, ctx: Context) -> dict[str, int]:
    with tracer.start_as_current_span("render report") as span:
        span.set_attribute("report.pages", msg.pages)
        for page in range(1, msg.pages + 1):
            with tracer.start_as_current_span("render page") as page_span:
                page_span.set_attribute("report.page", page)
            await ctx.progress(page / msg.pages, f"page {page}")
    return {"pages": msg.pages}
