"""No tracebacks to clients: a failed job's public status record (polling, event streams,
webhooks, emails) carries the error's type and message only, and its worker by a label; the
traceback and the worker's own name (its host and process) stay in storage for operators,
and only OFFLOAD_EXPOSE_TRACEBACKS=1 puts them in those answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from offload import App, Context, Message, Settings
from offload._links import WORKER_LABEL_DIGITS
from offload.contract import status_record
from offload.web import create_app

from ..receivers import MailSink, Receiver, parts

pytestmark = pytest.mark.anyio
#: What a traceback shows and a status record must not: the frame header and this file.
LEAKS = ("Traceback (most recent call last)", __file__, Path(__file__).name)


class Broken(Message):
    user_id: str


@pytest.fixture
def sink() -> Iterator[MailSink]:
    with MailSink() as s:
        yield s


@pytest.fixture
def expose() -> bool:
    """OFFLOAD_EXPOSE_TRACEBACKS=1? A test parametrizes `expose` to set it."""
    return False


@pytest.fixture
def settings(tmp_path: Path, sink: MailSink, expose: bool) -> Settings:
    env = {
        "OFFLOAD_URL": f"sqlite:///{tmp_path / 'jobs.db'}",
        "OFFLOAD_BLOBS_URL": str(tmp_path / "blobs"),
        "OFFLOAD_SECRET_KEY": "test-secret-of-32-bytes-or-more!",
        "OFFLOAD_SMTP_URL": f"{sink.url}?timeout=5",
        "OFFLOAD_WEBHOOK_ALLOW_PRIVATE": "1",  # the receiver is on loopback
        "OFFLOAD_NOTIFY_BACKOFF": "0.05",
    }
    if expose:
        env["OFFLOAD_EXPOSE_TRACEBACKS"] = "1"
    return Settings.from_env(env)


@pytest.fixture
def app(settings: Settings) -> App:
    app = App("tracebacks", settings=settings)
    app.message("t.broken", max_attempts=1)(Broken)

    @app.handles(Broken)
    async def broken(msg: Broken, ctx: Context) -> None:
        raise RuntimeError(f"the printer of {msg.user_id} is on fire")

    app.message("t.unread", max_attempts=1)(Unread)
    app.message("t.unread_async", max_attempts=1)(UnreadAsync)

    @app.handles(Unread)
    def unread(msg: Unread, ctx: Context) -> None:  # a plain handler: a thread
        Path(msg.path).read_bytes()

    @app.handles(UnreadAsync)
    async def unread_async(msg: UnreadAsync, ctx: Context) -> None:
        await asyncio.to_thread(Path(msg.path).rename, msg.path + ".done")  # two files named

    app.message("t.stored", max_attempts=1)(Stored)

    @app.handles(Stored)
    async def stored(msg: Stored, ctx: Context) -> None:
        await ctx.blobs.put(f"{msg.folder}/out.txt", b"x")

    return app


class Stored(Message):
    folder: str


class Unread(Message):
    path: str


class UnreadAsync(Message):
    path: str


@dataclass
class Failed:
    """A failed job and everything that told a client about it."""

    job_id: str
    polled: str
    listed: str
    events: str
    webhook: bytes
    email: str

    def answers(self) -> list[tuple[str, str]]:
        """Each answer that told of the job, and where it came from."""
        return [
            ("GET /v1/jobs/{id}", self.polled),
            ("GET /v1/jobs", self.listed),
            ("GET /v1/jobs/{id}/events", self.events),
            ("webhook body", self.webhook.decode()),
            ("email body", self.email),
        ]


async def eventually(check: Callable[[], Any], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.fixture
async def failed(
    app: App, start_worker: Callable[..., Any], sink: MailSink
) -> AsyncIterator[Failed]:
    api = create_app(app)
    async with api.router.lifespan_context(api):
        transport = httpx.ASGITransport(app=api)
        with Receiver() as receiver:
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as web:
                # Given a job whose handler raises, with a webhook and an email to tell of it,
                options = {"callback_url": receiver.url, "notify_email": "ann@example.com"}
                answer = await web.post("/v1/jobs/t.broken", params=options, json={"user_id": "a"})
                assert answer.status_code == 202, answer.text
                job_id = answer.json()["id"]
                # when a worker runs it and it fails for good,
                await start_worker()
                events = await web.get(f"/v1/jobs/{job_id}/events")  # closes at the end
                await eventually(lambda: receiver.requests and sink.messages)
                yield Failed(
                    job_id=job_id,
                    polled=(await web.get(f"/v1/jobs/{job_id}")).text,
                    listed=(await web.get("/v1/jobs")).text,
                    events=events.text,
                    webhook=receiver.requests[0].body,
                    email="\n".join(text for _, text in parts(sink.messages[0])),
                )


def leaks(text: str) -> list[str]:
    return [leak for leak in LEAKS if leak in text]


async def test_no_traceback_reaches_a_client_by_default(app: App, failed: Failed) -> None:
    record = orjson.loads(failed.polled)
    assert record["state"] == "dead"
    # Then every answer names the error, and none shows the traceback.
    assert record["error"] == {"type": "RuntimeError", "message": "the printer of a is on fire"}
    webhook = orjson.loads(failed.webhook)["data"]
    assert webhook["error"] == record["error"]
    assert "the printer of a is on fire" in failed.email
    for where, text in failed.answers():
        assert leaks(text) == [], where
    # The traceback is kept for operators: `offload jobs show` reads it this way.
    stored = await app.status(failed.job_id, tracebacks=True)
    assert "Traceback (most recent call last)" in stored["error"]["traceback"]
    assert "traceback" not in (await app.status(failed.job_id))["error"]
    row = await app.get(failed.job_id)
    assert row is not None and "traceback" in (row.error or {})
    assert "traceback" not in status_record(row)["error"]
    assert "traceback" in status_record(row, tracebacks=True)["error"]
    # The worker is named by a label, the same everywhere; its own name (host:pid:…) is
    # for operators.
    assert row.worker and row.worker.count(":") >= 2, row.worker
    label = record["worker"]
    assert label and row.worker not in label and len(label) == WORKER_LABEL_DIGITS, label
    assert webhook["worker"] == label
    assert [orjson.loads(failed.listed)["items"][0]["worker"]] == [label]
    for where, text in failed.answers():
        assert row.worker not in text, where
    assert (await app.status(failed.job_id))["worker"] == row.worker


@pytest.mark.parametrize("expose", [True])
async def test_offload_expose_tracebacks_puts_them_in_every_answer(
    app: App, failed: Failed
) -> None:
    assert app.settings.expose_tracebacks
    record = orjson.loads(failed.polled)
    assert "Traceback (most recent call last)" in record["error"]["traceback"]
    for where, text in failed.answers():
        assert leaks(text), where
    row = await app.get(failed.job_id)
    assert row is not None and row.worker and record["worker"] == row.worker


def test_the_setting_is_off_unless_set() -> None:
    assert Settings.from_env({}).expose_tracebacks is False
    assert Settings.from_env({"OFFLOAD_EXPOSE_TRACEBACKS": "0"}).expose_tracebacks is False
    assert Settings.from_env({"OFFLOAD_EXPOSE_TRACEBACKS": "1"}).expose_tracebacks is True


async def test_an_os_error_tells_clients_its_reason_not_the_server_path_it_names(
    app: App, start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    # Given handlers that fail on a file of the server (a path clients must not learn),
    secret = tmp_path / "srv" / "private-data" / "ledger.csv"
    jobs = [
        await app.enqueue(Unread(path=str(secret))),
        await app.enqueue(UnreadAsync(path=str(secret))),
    ]
    await start_worker()
    for job in jobs:
        async with asyncio.timeout(20):
            while (record := await app.status(job.id))["state"] != "dead":  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        # then the message clients see says why, without the path (it was `…: '/…/ledger.csv'`),
        assert record["error"] == {
            "type": "FileNotFoundError",
            "message": "[Errno 2] No such file or directory",
        }
        # and the operators' traceback keeps it.
        stored = await app.status(job.id, tracebacks=True)
        assert str(secret) in stored["error"]["traceback"]


def _file_at(folder: Path, name: str) -> Path:
    """Put a file named `name` in `folder` (made if need be); return the folder, resolved."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("a file, not a folder")
    return folder.resolve()


async def test_a_blob_store_failure_tells_clients_which_store_not_where_it_is(
    app: App, start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    # Given a handler whose blob cannot be written (a file where its folder should be),
    blobs = await asyncio.to_thread(_file_at, Path(app.settings.blobs_url), "taken")
    job = await app.enqueue(Stored(folder="taken"))
    await start_worker()
    async with asyncio.timeout(20):
        while (record := await app.status(job.id))["state"] != "dead":  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    # then clients learn that the blob store failed, not the server's folder (it was
    # `blob store folder /…/blobs: cannot write taken/out.txt: File exists`),
    assert record["error"]["type"] == "BlobStoreError"
    assert str(blobs) not in record["error"]["message"]
    assert "blob store" in record["error"]["message"]
    # and the operators' traceback keeps where and why.
    stored = await app.status(job.id, tracebacks=True)
    assert str(blobs) in stored["error"]["traceback"]
