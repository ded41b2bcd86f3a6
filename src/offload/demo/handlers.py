"""The worker half of the demo: handlers for reports, thumbnails and confirmation emails.

Run it with `offload worker --app offload.demo.handlers:app`; the web half never imports
this module.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, cast

from offload import Cancel, Context, SyncContext

from . import images, mail
from .config import DemoConfig
from .contracts import ExportReport, MakeThumbnails, SendConfirmation, app
from .data import USERS
from .report import Stopped, render_report, report_result
from .sales import load_sales

__all__ = ["app"]


@functools.cache
def config() -> DemoConfig:
    """The demo's settings, from the environment the launcher gave this process."""
    return DemoConfig.from_env()


def _for_owner(user_id: str, ctx: Context) -> None:
    """A job acts for the user who owns it only (over the API, `user_id` is the caller's
    own; this holds Python callers to the same rule).

    Raises:
        Cancel: the message names another user, or no demo user.
    """
    if user_id != ctx.owner:
        raise Cancel(f"job of {ctx.owner!r} names another user")
    if user_id not in USERS:
        raise Cancel(f"no demo user {user_id!r}")


@app.handles(ExportReport, max_attempts=3, timeout=300)
async def export_report(msg: ExportReport, ctx: Context) -> dict[str, Any]:
    """Render the PDF, store it, and enqueue the confirmation email."""
    _for_owner(msg.user_id, ctx)
    await ctx.progress(0.02, "loading orders")
    figures = await asyncio.to_thread(load_sales, config().data_path, msg.user_id, msg.period)

    in_thread = cast(SyncContext, ctx)  # (from a thread, its calls block: no awaitables)

    def progress(fraction: float, message: str) -> None:  # runs in the rendering thread
        if ctx.cancelled.is_set():
            raise Stopped
        in_thread.progress(fraction, message)

    rendered = await asyncio.to_thread(render_report, figures, progress, pace_s=config().pace_s)
    await ctx.progress(0.98, "saving the PDF")
    pdf = await ctx.blobs.put(f"reports/{ctx.job_id}/{rendered.filename}", rendered.pdf)
    totals = figures.totals
    # The idempotency key makes a re-run of this job (after a crash) find the same email job.
    await app.enqueue(
        SendConfirmation(
            user_id=msg.user_id,
            report_job_id=ctx.job_id,
            period=msg.period,
            pages=rendered.pages,
            revenue_cents=totals.revenue_cents,
            orders=totals.orders,
        ),
        owner=ctx.owner,
        idempotency_key=f"confirm:{ctx.job_id}",
    )
    await ctx.progress(1.0, "done")
    return report_result(pdf, rendered, figures)


@app.handles(MakeThumbnails, max_attempts=3, timeout=120)
async def make_thumbnails(msg: MakeThumbnails, ctx: Context) -> dict[str, Any]:
    """Resize the uploaded original into each size and store the thumbnails."""
    if not msg.image_key.startswith(f"uploads/{ctx.owner}/"):  # the owner's own uploads only
        raise Cancel(f"the upload {msg.image_key} is not one of {ctx.owner!r}")
    await ctx.progress(0.1, "reading the upload")
    try:
        original = await ctx.blobs.get(msg.image_key)
    except FileNotFoundError:
        raise Cancel(f"the upload {msg.image_key} is gone") from None
    try:
        info = images.inspect_image(original)
    except images.NotAnImage as exc:  # the web tier checked it; retrying cannot help
        raise Cancel(str(exc)) from None
    await ctx.progress(0.3, "resizing")
    thumbnails = await asyncio.to_thread(images.make_thumbnails, original, msg.sizes)
    refs = []
    for i, thumb in enumerate(thumbnails, 1):
        refs.append(await ctx.blobs.put(f"thumbnails/{ctx.job_id}/{thumb.size}.webp", thumb.data))
        await ctx.progress(0.3 + 0.7 * i / len(thumbnails), f"stored {thumb.size} px")
    copy = await ctx.blobs.put(images.original_key(ctx.job_id, msg.image_key), original)
    return images.thumbnails_result(copy, msg.filename, info, thumbnails, refs)


@app.handles(SendConfirmation, max_attempts=8, timeout=60)
async def send_confirmation(msg: SendConfirmation, ctx: Context) -> dict[str, Any]:
    """Email the user that the report is ready (retried with backoff while SMTP is down)."""
    _for_owner(msg.user_id, ctx)
    user = USERS[msg.user_id]
    summary = mail.ReportSummary(
        msg.report_job_id, msg.period, msg.pages, msg.revenue_cents, msg.orders
    )
    smtp, message = mail.confirmation_for(config(), user, summary)
    # Once sent, a re-delivered job (a lost ack) does not send the email twice.
    await ctx.once("smtp-send", lambda: mail.send(message, smtp))
    return {"to": str(message["To"]), "subject": str(message["Subject"])}
