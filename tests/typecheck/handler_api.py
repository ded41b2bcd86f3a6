"""Checked by mypy (see `files` in pyproject.toml), never run: a plain handler's context
(`SyncContext`) is typed for calls without `await`, an async handler's for awaits, and
`@app.handles` leaves the handler's own type alone (a test calls it by keyword, with its
options, or reads a decorator's attributes)."""

from __future__ import annotations

from typing import assert_type

from offload import App, Context, Message, SyncContext
from offload.context import JSONValue

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
    # a model reads back as its JSON (a dict), not as the model
    assert_type(ctx.once("receipt", lambda: Other(size=1)), JSONValue)
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

    assert_type(await ctx.once("charge", charge), str)
    assert_type(await ctx.progress(0.9), bool)
    assert_type(await ctx.put_stream(f"sizes/{ctx.job_id}.csv", "/dev/null"), str)
    # a call left unawaited does nothing (no progress stored, a step never run): reported
    ctx.progress(1.0)  # type: ignore[unused-coroutine]
    ctx.once("charge", charge)  # type: ignore[unused-coroutine]
    return msg.size


def export_direct_call_keeps_its_type(ctx: SyncContext) -> None:
    # A test that calls the handler itself reads what it returns
    assert_type(export_plain(Export(period="2026-10"), ctx), dict[str, str])


@app.message("typecheck.count")
class Count(Message):
    pass


@app.handles(Other)
@app.handles(Export)
def either(msg: Export | Other, ctx: SyncContext, dry_run: bool = False) -> bool:
    return dry_run


class Counting:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, msg: Count, ctx: SyncContext) -> None:
        self.calls += 1


counting = app.handles(Count)(Counting())


def handlers_keep_their_own_type(ctx: SyncContext) -> None:
    assert_type(either(msg=Other(size=1), ctx=ctx, dry_run=True), bool)
    assert_type(counting.calls, int)
    either(Export(period="2026-10"), ctx, "yes")  # type: ignore[arg-type]


def notifiers_are_typed(body: bytes, headers: dict[str, str]) -> None:
    # (loaded on first use: they were Any to type checkers)
    from offload.notify import verify

    assert_type(verify("whsec_x", headers, body), bool)
    verify(body, "whsec_x")  # type: ignore[arg-type,call-arg]
