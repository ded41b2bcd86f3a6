"""Checked by mypy (see `files` in pyproject.toml), never run: a plain handler's context
(`SyncContext`) is typed for calls without `await`, an async handler's for awaits, and
`@app.handles` refuses a handler of another message class or without the context (each
`# type: ignore[...]` marks a mistake mypy must report)."""

from __future__ import annotations

from typing import Any, assert_type

from offload import App, Context, Message, SyncContext

app = App("typecheck")


@app.message("typecheck.export")
class Export(Message):
    period: str


@app.message("typecheck.other")
class Other(Message):
    size: int


@app.handles(Export)
def export_plain(msg: Export, ctx: SyncContext) -> dict[str, str]:
    assert_type(ctx.progress(0.5, "rendering"), bool)
    ref = ctx.blobs.put(f"reports/{ctx.job_id}.txt", msg.period.encode())
    assert_type(ref, str)
    assert_type(ctx.blobs.get(f"reports/{ctx.job_id}.txt"), bytes)
    assert_type(ctx.once("charge", lambda: 42), int)
    assert_type(ctx.put_stream(f"reports/{ctx.job_id}.csv", "/dev/null"), str)
    assert_type(ctx.cancelled.is_set(), bool)
    return {"report": ref}


@app.handles(Other)
async def other_async(msg: Other, ctx: Context) -> int:
    await ctx.progress(0.5)
    ref = await ctx.blobs.put(f"sizes/{ctx.job_id}", b"x" * msg.size)
    assert_type(ref, str)

    async def charge() -> str:
        return ctx.idempotency_key("charge")

    assert_type(await ctx.once("charge", charge), Any)
    return msg.size


def export_direct_call_keeps_its_type(ctx: SyncContext) -> None:
    # A test that calls the handler itself reads what it returns
    assert_type(export_plain(Export(period="2026-10"), ctx), dict[str, str])


@app.handles(Export)  # type: ignore[arg-type]
def wrong_message(msg: Other, ctx: Context) -> None: ...


@app.handles(Other)  # type: ignore[arg-type]
def without_context(msg: Other) -> None: ...
