"""The demo's web half and worker half in one process, through ASGI: pages, jobs, uploads, mail."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import jinja2
import orjson
import pytest
from PIL import Image
from starlette.applications import Starlette

import offload.demo.handlers as handlers
from offload.contract import JobRow
from offload.demo.config import DemoConfig
from offload.demo.contracts import ExportReport, MakeThumbnails
from offload.demo.contracts import app as demo_app
from offload.demo.launcher import prepare
from offload.demo.mailbox import MailboxStore, SmtpCatcher
from offload.demo.pages import create_demo_app
from offload.worker.runner import Worker

from ..demo_support import dollars, expected_totals

pytestmark = pytest.mark.anyio
UPLOAD_LIMIT = 256 * 1024


@dataclass
class Demo:
    config: DemoConfig
    web: Starlette
    mailbox: MailboxStore

    def client(self) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.web)
        return httpx.AsyncClient(transport=transport, base_url="http://localhost", timeout=60)

    async def signed_in(self, user: str) -> httpx.AsyncClient:
        client = self.client()
        answer = await client.post("/login", data={"user": user})
        assert answer.status_code == 303 and answer.headers["location"] == "/reports"
        page = await client.get("/reports")
        match = re.search(r'data-csrf="([^"]+)"', page.text)
        assert match
        client.headers["X-CSRF-Token"] = match[1]
        client.headers["Accept"] = "application/json"
        return client

    async def all_jobs(self) -> list[JobRow]:
        return await demo_app.list_jobs(owner=None, limit=1000)


@contextlib.asynccontextmanager
async def running(
    folder: Path, monkeypatch: pytest.MonkeyPatch, *, inline: bool = False, smtp_url: str = ""
) -> AsyncIterator[Demo]:
    """The demo's web app (lifespan open), a worker task and the SMTP catcher."""
    config = prepare(
        DemoConfig(
            folder=folder,
            base_url="http://localhost",
            pace_s=0.0,
            inline=inline,
            max_upload_bytes=UPLOAD_LIMIT,
        )
    )
    store = MailboxStore(config.mailbox_path)
    catcher = None if smtp_url else await SmtpCatcher(store).start()
    config = replace(config, smtp_url=smtp_url or (catcher.url if catcher else None))
    for name, value in config.to_env().items():  # what the launcher gives worker processes
        monkeypatch.setenv(name, value)
    handlers.config.cache_clear()
    web = create_demo_app(config, catching_mail=catcher is not None)
    try:
        async with web.router.lifespan_context(web):
            worker = None if inline else Worker(demo_app, concurrency=4, idle_poll_s=0.05)
            task = asyncio.create_task(worker.run()) if worker else None
            try:
                yield Demo(config, web, store)
            finally:
                if worker and task:
                    worker.request_stop()
                    await asyncio.wait_for(task, 30)
    finally:
        if catcher:
            await catcher.stop()
        handlers.config.cache_clear()


@pytest.fixture
async def demo(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Demo]:
    async with running(workdir / "demo", monkeypatch) as d:
        yield d


def events_of(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of a server-sent event stream's text."""
    found = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            found.append((fields["event"], orjson.loads(fields["data"])))
    return found


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        # The mailbox and job rows have no change signal to wait on: poll them.
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


def png(size: tuple[int, int] = (600, 400)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, "orange").save(out, format="PNG")
    return out.getvalue()


async def test_a_page_of_a_rebound_name_cannot_sign_in_nor_read(demo: Demo) -> None:
    # A page whose name was rebound to 127.0.0.1 is one origin with the demo to the browser
    rebound = {"Host": "rebind.example:8000", "Origin": "http://rebind.example:8000"}
    async with demo.client() as client:
        login = await client.post("/login", data={"user": "alice"}, headers=rebound)
        assert login.status_code == 421 and "set-cookie" not in login.headers
        assert login.headers["content-type"] == "application/problem+json"
        for path in ("/reports", "/v1/jobs", "/dashboard/"):
            assert (await client.get(path, headers=rebound)).status_code == 421, path
    assert (await (await demo.signed_in("alice")).get("/reports")).status_code == 200


async def test_another_site_cannot_sign_a_visitor_in_nor_out(demo: Demo) -> None:
    # A form on another site that posts to /login (as bob) or /logout: before one signs in
    # there is no form token, so the origin tells.
    alice = await demo.signed_in("alice")
    for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        for path, data in (("/login", {"user": "bob"}), ("/logout", {})):
            refused = await alice.post(path, data=data, headers=headers)
            assert refused.status_code == 403, (path, headers)
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.json()["type"].endswith("/cross-site-request")
            assert "set-cookie" not in refused.headers
    mine = (await alice.get("/reports")).text
    assert "Alice Martin" in mine and "Bob Okafor" not in mine  # still alice, signed in
    # Its own pages (their origin, or a browser's same-origin fetch) sign in and out.
    own = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}
    assert (await alice.post("/logout", headers=own)).status_code == 303
    async with demo.client() as client:
        login = await client.post("/login", data={"user": "bob"}, headers=own)
        assert login.status_code == 303 and "set-cookie" in login.headers
    await alice.aclose()


async def test_pages_need_a_signed_in_user(demo: Demo) -> None:
    async with demo.client() as client:
        assert (await client.get("/")).headers["location"] == "/login"
        page = await client.get("/reports")
        assert page.status_code == 303 and page.headers["location"] == "/login?next=/reports"
        refused = await client.post("/reports", headers={"Accept": "application/json"})
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
        assert (await client.get("/rows/x")).status_code == 401
        login = await client.get("/login")
        assert "Alice Martin" in login.text and "Bob Okafor" in login.text
        unknown = await client.post("/login", data={"user": "mallory"})
        assert unknown.status_code == 400 and "Pick one of the demo users" in unknown.text
        away = await client.post("/login", data={"user": "bob", "next": "//evil.example/x"})
        assert away.headers["location"] == "/reports"  # no open redirect
    assert await demo.all_jobs() == []


async def test_export_is_enqueued_followed_live_and_ends_in_a_pdf_and_an_email(
    demo: Demo,
) -> None:
    alice = await demo.signed_in("alice")

    # Given Alice's click, the web tier answers 202 with the new row, without doing the work.
    answer = await alice.post("/reports", data={"period": "2025"})
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    assert answer.headers["location"] == f"/v1/jobs/{job_id}"
    assert f'id="job-{job_id}"' in answer.json()["html"]
    # (The row is read after the enqueue: a worker may have taken the job already.)
    assert answer.json()["state"] in {"queued", "running"}

    # When the page follows the job's events with its session cookie,
    stream = await alice.get(f"/v1/jobs/{job_id}/events", headers={"Accept": "*/*"})
    assert stream.headers["content-type"].startswith("text/event-stream")
    events = events_of(stream.text)

    # then it sees the job run with rising progress and succeed,
    states = [name for name, _ in events]
    assert states[0] == "queued" and "running" in states and states[-1] == "succeeded"
    fractions = [d["progress"]["fraction"] for _, d in events if d["progress"]]
    assert fractions == sorted(fractions) and len(set(fractions)) > 5
    result = events[-1][1]["result"]
    orders, revenue = expected_totals(demo.config.data_path, "alice")
    assert result["totals"] == {
        "orders": orders,
        "units": result["totals"]["units"],
        "revenue_cents": revenue,
        "customers": 8,
    }

    # and the signed link serves the PDF, whose row now offers it for download.
    pdf = await alice.get(result["pdf"])
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF") and len(pdf.content) == result["bytes"]
    row = await alice.get(f"/rows/{job_id}")
    assert "Download PDF" in row.text and dollars(revenue) in row.text
    assert "Download PDF" in (await alice.get("/reports")).text  # a reload keeps it

    # The confirmation email is a job of its own, and lands in Alice's mailbox.
    async def delivered() -> bool:
        return await asyncio.to_thread(demo.mailbox.count_for, "alice@example.com") > 0

    await eventually(delivered)
    confirm = [j for j in await demo.all_jobs() if j.kind == "demo.confirm"]
    assert len(confirm) == 1 and confirm[0].owner == "alice"
    assert confirm[0].idempotency_key == f"confirm:{job_id}"
    mailbox = await alice.get("/mailbox")
    assert "Your sales report is ready: Full year 2025" in mailbox.text
    assert dollars(revenue) in mailbox.text
    assert 'class="count"' in mailbox.text


async def test_refused_exports_enqueue_nothing(demo: Demo) -> None:
    alice = await demo.signed_in("alice")
    no_token = await alice.post("/reports", data={"period": "2025"}, headers={"X-CSRF-Token": ""})
    assert no_token.status_code == 403
    assert no_token.headers["content-type"] == "application/problem+json"
    bad_period = await alice.post("/reports", data={"period": "1999"})
    assert bad_period.status_code == 422 and "1999" in bad_period.json()["detail"]
    assert await demo.all_jobs() == []


async def test_pages_are_served_from_templates_compiled_at_start_up(
    demo: Demo, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A burst of clicks right after a start must not wait for a template to be read and
    # compiled, nor stat its file on every use: with its files out of reach, every page
    # still renders.
    def gone(environment: jinja2.Environment, template: str) -> Any:
        raise AssertionError(f"{template} was read while serving")

    monkeypatch.setattr(demo.web.state.site.templates.env.loader, "get_source", gone)
    alice = await demo.signed_in("alice")
    export = await alice.post("/reports", data={"period": "2025"})
    assert export.status_code == 202 and 'class="job' in export.json()["html"]
    for page in ("/reports", "/thumbnails", "/mailbox"):
        answer = await alice.get(page, headers={"Accept": "text/html"})
        assert answer.status_code == 200, page


async def test_plain_form_post_redirects_back_to_the_page(demo: Demo) -> None:
    alice = await demo.signed_in("alice")
    answer = await alice.post(
        "/reports", data={"period": "2025-Q3"}, headers={"Accept": "text/html"}
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/reports"
    page = await alice.get("/reports", headers={"Accept": "text/html"})
    assert "Sales report · Q3 2025 (Jul–Sep)" in page.text


async def test_upload_is_stored_and_made_into_thumbnails(demo: Demo) -> None:
    alice = await demo.signed_in("alice")
    answer = await alice.post("/thumbnails", files={"image": ("beans.png", png(), "image/png")})
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    events = events_of((await alice.get(f"/v1/jobs/{job_id}/events")).text)
    assert events[-1][0] == "succeeded"
    result = events[-1][1]["result"]
    assert [(t["size"], t["width"], t["height"]) for t in result["thumbnails"]] == [
        (64, 64, 43),
        (160, 160, 107),
        (320, 320, 213),
    ]
    thumb = await alice.get(result["thumbnails"][0]["url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
    original = await alice.get(result["original"])
    assert original.content == png()
    page = await alice.get("/thumbnails")
    assert "beans.png" in page.text and 'data-size="320"' in page.text


def _uploads(demo: Demo) -> list[Path]:
    return list((demo.config.folder / "blobs" / "uploads").rglob("*"))


async def test_a_file_that_is_not_an_image_is_refused_and_enqueues_nothing(demo: Demo) -> None:
    alice = await demo.signed_in("alice")
    answer = await alice.post(
        "/thumbnails", files={"image": ("notes.txt", b"buy more beans", "image/png")}
    )
    assert answer.status_code == 415
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["detail"].startswith("“notes.txt” is not an image")
    missing = await alice.post("/thumbnails", files={"other": ("x.png", png(), "image/png")})
    assert missing.status_code == 400 and "Choose an image" in missing.json()["detail"]
    assert await demo.all_jobs() == [] and _uploads(demo) == []


async def test_an_upload_without_the_form_token_is_refused(demo: Demo) -> None:
    alice = await demo.signed_in("alice")
    answer = await alice.post(
        "/thumbnails",
        files={"image": ("a.png", png(), "image/png")},
        headers={"X-CSRF-Token": "forged"},
    )
    assert answer.status_code == 403
    assert answer.json()["type"].endswith("/bad-csrf-token")
    assert await demo.all_jobs() == [] and _uploads(demo) == []


async def test_a_plain_form_upload_error_shows_the_page_with_the_message(demo: Demo) -> None:
    alice = await demo.signed_in("alice")
    answer = await alice.post(
        "/thumbnails",
        files={"image": ("notes.txt", b"buy more beans", "text/plain")},
        headers={"Accept": "text/html"},
    )
    assert answer.status_code == 415 and answer.headers["content-type"].startswith("text/html")
    assert "is not an image we can use" in answer.text and "Product images" in answer.text
    assert await demo.all_jobs() == []


async def test_an_oversized_upload_is_413_and_enqueues_nothing(demo: Demo) -> None:
    alice = await demo.signed_in("alice")
    big = png() + b"\0" * (UPLOAD_LIMIT + 70 * 1024)
    declared = await alice.post("/thumbnails", files={"image": ("big.png", big, "image/png")})
    assert declared.status_code == 413, declared.text
    assert declared.json()["detail"] == "The file is too large: images up to 0.25 MB."

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        for _ in range(40):
            yield b"\0" * 16 * 1024

    streamed = await alice.post(
        "/thumbnails",
        content=chunks(),
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    assert streamed.status_code == 413
    just_over = png() + b"\0" * (UPLOAD_LIMIT - len(png()) + 1)  # within the framing slack
    file_over = await alice.post("/thumbnails", files={"image": ("a.png", just_over, "image/png")})
    assert file_over.status_code == 413
    assert await demo.all_jobs() == [] and _uploads(demo) == []


async def test_users_see_only_their_own_exports(demo: Demo) -> None:
    alice, bob = await demo.signed_in("alice"), await demo.signed_in("bob")
    job_id = (await alice.post("/reports", data={"period": "2025-Q1"})).json()["id"]
    upload = await alice.post("/thumbnails", files={"image": ("a.png", png(), "image/png")})
    image_id = upload.json()["id"]
    for other in (job_id, image_id):
        for path in (f"/v1/jobs/{other}", f"/v1/jobs/{other}/events", f"/rows/{other}"):
            assert (await bob.get(path)).status_code == 404, path
        assert other not in (await bob.get("/reports")).text
        assert other not in (await bob.get("/thumbnails")).text
    assert (await bob.get("/v1/jobs")).json()["items"] == []
    mine = {j["id"] for j in (await alice.get("/v1/jobs")).json()["items"]}
    assert {job_id, image_id} <= mine


async def test_the_session_cookie_does_not_authorise_api_writes(demo: Demo) -> None:
    alice = await demo.signed_in("alice")
    answer = await alice.post("/v1/jobs/demo.report", json={"period": "2025"})
    assert answer.status_code == 202  # development mode: the caller is `local`, not alice
    assert (await alice.get(f"/v1/jobs/{answer.json()['id']}")).status_code == 404
    (row,) = await demo.all_jobs()
    assert row.owner == "local"
    assert row.payload["user_id"] == "local"  # the caller's own report, not Alice's


async def test_no_api_caller_acts_on_another_users_data(demo: Demo) -> None:
    anonymous = demo.client()
    # A client may not name whose report it wants: the report is the caller's own.
    named = await anonymous.post(
        "/v1/jobs/demo.report", json={"user_id": "alice", "period": "2025"}
    )
    assert named.status_code == 422
    assert named.headers["content-type"] == "application/problem+json"
    assert [e["loc"] for e in named.json()["errors"]] == [["user_id"]]
    # Nor start the follow-up kinds: emails to a user, thumbnails of another's upload.
    confirm = {
        "user_id": "alice", "report_job_id": "x", "period": "2025", "pages": 1,
        "revenue_cents": 1, "orders": 1,
    }  # fmt: skip
    thumbnails = {"image_key": "uploads/alice/x/original.png", "filename": "a.png"}
    for kind, body in (("demo.confirm", confirm), ("demo.thumbnails", thumbnails)):
        closed = await anonymous.post(f"/v1/jobs/{kind}", json=body)
        assert closed.status_code == 404, kind
        assert closed.json()["type"].endswith("/unknown-kind")
    assert await demo.all_jobs() == []

    # The report the API accepts is the caller's (`local`: no demo user), so it renders no
    # one's orders and mails no one.
    job_id = (await anonymous.post("/v1/jobs/demo.report", json={"period": "2025"})).json()["id"]

    await eventually(lambda: _final(job_id))
    row = await demo_app.get(job_id)
    assert row is not None and row.state == "cancelled" and row.result is None
    assert [j.kind for j in await demo.all_jobs()] == ["demo.report"]
    assert demo.mailbox.count_for("alice@example.com") == 0
    await anonymous.aclose()


async def test_a_job_that_names_another_user_than_its_owner_is_cancelled(demo: Demo) -> None:
    # Given jobs enqueued by code that names Alice in jobs Bob owns,
    alice = await demo.signed_in("alice")
    upload = await alice.post("/thumbnails", files={"image": ("a.png", png(), "image/png")})
    (mine,) = await demo.all_jobs()
    image_key = mine.payload["image_key"]
    await eventually(lambda: _final(mine.id))
    jobs = [
        await demo_app.enqueue(ExportReport(user_id="alice", period="2025"), owner="bob"),
        await demo_app.enqueue(MakeThumbnails(image_key=image_key, filename="a"), owner="bob"),
    ]
    # then the worker refuses to act on Alice's data for Bob.
    for job in jobs:
        await eventually(lambda job=job: _final(job.id))
        row = await demo_app.get(job.id)
        assert row is not None and row.state == "cancelled" and row.result is None
    assert upload.status_code == 202
    assert demo.mailbox.count_for("alice@example.com") == 0


async def _final(job_id: str) -> bool:
    row = await demo_app.get(job_id)
    return row is not None and row.state.final


async def test_confirmation_email_is_retried_while_smtp_is_down(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(workdir / "demo", monkeypatch, smtp_url="smtp://127.0.0.1:9") as demo:
        alice = await demo.signed_in("alice")
        job_id = (await alice.post("/reports", data={"period": "2025-Q2"})).json()["id"]

        async def retrying() -> bool:
            jobs = [j for j in await demo.all_jobs() if j.kind == "demo.confirm"]
            return bool(jobs) and jobs[0].state == "retrying"

        await eventually(retrying)
        report = next(j for j in await demo.all_jobs() if j.id == job_id)
        assert report.state == "succeeded"  # the report is done; only the email waits
        (confirm,) = [j for j in await demo.all_jobs() if j.kind == "demo.confirm"]
        assert confirm.attempt == 1 and confirm.max_attempts == 8
        assert "SMTP" in confirm.error["type"] or "connect" in confirm.error["message"]


async def test_inline_mode_does_the_work_inside_the_request(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(workdir / "demo", monkeypatch, inline=True) as demo:
        alice = await demo.signed_in("alice")
        answer = await alice.post("/reports", data={"period": "2025"})
        assert answer.status_code == 200 and answer.json()["state"] == "succeeded"
        assert "Download PDF" in answer.json()["html"]
        assert demo.mailbox.count_for("alice@example.com") == 1  # sent before the answer
        upload = await alice.post("/thumbnails", files={"image": ("a.png", png(), "image/png")})
        assert upload.status_code == 200 and 'data-size="160"' in upload.json()["html"]
        page = await alice.get("/reports")
        assert "Inline mode" in page.text and "done inside the request" in page.text
        bob = await demo.signed_in("bob")
        assert "Download PDF" not in (await bob.get("/reports")).text
        assert (await bob.get(f"/rows/{answer.json()['id']}")).status_code == 404
        assert await demo.all_jobs() == []  # nothing was queued
