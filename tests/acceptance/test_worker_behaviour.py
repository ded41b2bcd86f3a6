"""Worker behaviour in one process: threads, timeouts, signals, cancellation, idempotent steps."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from offload import App, Backoff, Cancel, Context, Job, Message, Retry

pytestmark = pytest.mark.anyio
FAST = Backoff(base_s=0.01, cap_s=0.05)


class Ping(Message):
    text: str = "hi"


async def finished(app: App, job_id: str, timeout: float = 15) -> dict[str, Any]:
    return await Job(job_id, True, app).wait(timeout)


async def test_plain_function_handlers_run_in_threads(
    app: App, start_worker: Callable[..., Any]
) -> None:
    app.message("t.sync")(Ping)
    seen: list[str] = []

    @app.handles(Ping)
    def handle(msg: Ping, ctx: Context) -> dict[str, str]:
        seen.append(threading.current_thread().name)
        ctx.progress(0.5, "half way")  # blocking call from the handler's thread
        return {"echo": msg.text.upper()}

    await start_worker()
    job = await app.enqueue(Ping(text="abc"))
    record = await finished(app, job.id)
    assert record["state"] == "succeeded" and record["result"] == {"echo": "ABC"}
    assert record["progress"] == {"fraction": 0.5, "message": "half way"}
    assert seen and seen[0].startswith("offload-handler")


async def test_timeout_spends_attempts_then_dead(
    app: App, start_worker: Callable[..., Any]
) -> None:
    app.message("t.timeout", max_attempts=2)(Ping)

    @app.handles(Ping, timeout=0.1, backoff=FAST)
    async def handle(msg: Ping, ctx: Context) -> None:
        await asyncio.sleep(5)

    await start_worker()
    job = await app.enqueue(Ping())
    record = await finished(app, job.id)
    assert record["state"] == "dead" and record["attempt"] == 2
    assert record["error"]["type"] == "TimeoutError"


async def test_retry_signal_schedules_the_next_attempt(
    app: App, start_worker: Callable[..., Any]
) -> None:
    app.message("t.retry")(Ping)
    attempts: list[tuple[int, float]] = []

    @app.handles(Ping)
    async def handle(msg: Ping, ctx: Context) -> str:
        attempts.append((ctx.attempt, time.monotonic()))
        if ctx.attempt == 1:
            raise Retry(delay=0.4, reason="rate limited")
        return "done"

    await start_worker()
    job = await app.enqueue(Ping())
    record = await finished(app, job.id)
    assert record["state"] == "succeeded" and record["attempt"] == 2
    assert attempts[1][1] - attempts[0][1] >= 0.35


async def test_cancel_signal_and_permanent_errors(
    app: App, start_worker: Callable[..., Any]
) -> None:
    app.message("t.cancel", max_attempts=2)(Ping)

    @app.handles(Ping, backoff=FAST)
    async def handle(msg: Ping, ctx: Context) -> object:
        if msg.text == "cancel":
            raise Cancel("not wanted any more")
        return object()  # not JSON: a failed attempt, retried, then dead

    await start_worker()
    cancelled = await app.enqueue(Ping(text="cancel"))
    record = await finished(app, cancelled.id)
    assert record["state"] == "cancelled" and record["attempt"] == 1
    assert record["error"]["message"] == "not wanted any more"
    not_json = await app.enqueue(Ping(text="x"))
    record = await finished(app, not_json.id)
    assert record["state"] == "dead" and record["attempt"] == 2
    assert record["error"]["type"] == "TypeError"


async def test_payload_that_no_longer_fits_the_contract_fails_for_good(
    app: App, start_worker: Callable[..., Any]
) -> None:
    app.message("t.contract")(Ping)

    @app.handles(Ping)
    async def handle(msg: Ping, ctx: Context) -> None:
        raise AssertionError("must not run")

    envelope = app.envelope(Ping())
    async with app:  # a raw envelope, past the message class's own validation
        await app.submit(
            type(envelope)(**{**_fields(envelope), "payload": {"text": 3, "extra": 1}})
        )
    await start_worker()
    record = await finished(app, envelope.id)
    assert record["state"] == "failed" and record["attempt"] == 1
    assert record["error"]["type"] == "ValidationError"


def _fields(envelope: Any) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(envelope, f.name) for f in dataclasses.fields(envelope)}


async def test_once_runs_a_side_step_once_across_attempts(
    app: App, start_worker: Callable[..., Any]
) -> None:
    app.message("t.once")(Ping)
    charges: list[str] = []

    @app.handles(Ping, backoff=FAST)
    async def handle(msg: Ping, ctx: Context) -> str:
        receipt = await ctx.once("charge", lambda: charges.append(ctx.job_id) or "r-1")
        if ctx.attempt == 1:
            raise RuntimeError("crash after charging")
        return str(receipt)

    await start_worker()
    job = await app.enqueue(Ping())
    record = await finished(app, job.id)
    assert record["state"] == "succeeded" and record["result"] == "r-1"
    assert charges == [job.id]


async def test_delete_signals_a_running_handler(
    app: App, start_worker: Callable[..., Any], web: httpx.AsyncClient
) -> None:
    app.message("t.long")(Ping)
    started, stopped = asyncio.Event(), asyncio.Event()

    @app.handles(Ping)
    async def handle(msg: Ping, ctx: Context) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        finally:
            stopped.set()

    await start_worker(lease_s=1.5)
    response = await web.post("/v1/jobs/t.long", json={})
    job_id = response.json()["id"]
    await asyncio.wait_for(started.wait(), 10)
    cancel = await web.delete(f"/v1/jobs/{job_id}")
    assert cancel.status_code == 202
    await asyncio.wait_for(stopped.wait(), 10)
    record = await finished(app, job_id)
    assert record["state"] == "cancelled"


async def test_dev_mode_caller_is_local_and_sees_python_enqueued_jobs(
    app: App, web: httpx.AsyncClient
) -> None:
    app.message("t.dev")(Ping)
    job = await app.enqueue(Ping())  # owner defaults to the principal `local`
    record = (await web.get(f"/v1/jobs/{job.id}")).json()
    assert record["id"] == job.id and record["state"] == "queued"
    assert (await web.get("/healthz")).json() == {"status": "ok"}
    assert (await web.get("/readyz")).status_code == 200


def test_enqueue_sync_from_plain_code(app: App) -> None:
    app.message("t.enqueue-sync")(Ping)
    job = app.enqueue_sync(Ping(text="sync"), priority=3)
    again = app.enqueue_sync(Ping(text="sync"))
    assert job.id != again.id and job.created

    async def check() -> dict[str, Any]:
        try:
            return await app.status(job.id)
        finally:
            await app.close()

    record = asyncio.run(check())
    assert record["state"] == "queued" and record["priority"] == 3


async def test_bad_delivery_options_are_422_and_enqueue_nothing(
    app: App, web: httpx.AsyncClient
) -> None:
    app.message("t.options")(Ping)
    response = await web.post(
        "/v1/jobs/t.options",
        params={"callback_url": "http://receiver.example/ has a space", "notify_email": "nope"},
        json={},
    )
    assert response.status_code == 422
    assert {e["loc"][1] for e in response.json()["errors"]} == {"callback_url", "notify_email"}
    assert await app.list_jobs(owner=None) == []
