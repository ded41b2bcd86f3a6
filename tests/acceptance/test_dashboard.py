"""The dashboard over HTTP, in process: admins only (everyone else finds nothing, 404), its
pages, CSRF-protected actions, read-only mode, filters and keyset pagination, and its live
change stream."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
import uvicorn
from starlette.requests import Request
from starlette.routing import Route

from offload import App, Context, JobState, Message, Settings
from offload._signing import sign
from offload.clock import FakeClock
from offload.web import Admin, create_app
from offload.web.dashboard import actions, pages
from offload.web.dashboard.csrf import csrf_token
from offload.worker.runner import Worker
from tests.contract._support import worker_info

pytestmark = pytest.mark.anyio
TOKENS = {"ops": "t-ops", "bob": "t-bob"}
SECRET = b"test-secret-of-32-bytes-or-more!"
BASE = "http://localhost"
START = 1_800_000_000.0


class Invoice(Message):
    customer: str
    amount: int = 0


class Ping(Message):
    n: int = 0


def _settings(tmp_path: Path, **changes: Any) -> Settings:
    return Settings(
        url=f"sqlite:///{tmp_path / 'jobs.db'}",
        blobs_url=str(tmp_path / "blobs"),
        secret_key=SECRET,
        lease_s=2.0,
        api_tokens={token: principal for principal, token in TOKENS.items()},
        admin_principals=frozenset({"ops"}),
        **changes,
    )


def _app(settings: Settings, clock: FakeClock | None = None) -> App:
    app = App("dash", settings=settings, clock=clock)
    app.message("billing.invoice", queue="billing")(Invoice)
    app.message("misc.ping", queue="misc")(Ping)

    @app.handles(Invoice, max_attempts=1)
    async def invoice(msg: Invoice, ctx: Context) -> dict[str, Any]:
        if msg.amount < 0:
            raise ValueError(f"negative amount for {msg.customer}")
        return {"billed": msg.amount}

    @app.handles(Ping)
    async def ping(msg: Ping, ctx: Context) -> int:
        return msg.n

    return app


@pytest.fixture
def app(tmp_path: Path) -> App:
    return _app(_settings(tmp_path))


@contextlib.asynccontextmanager
async def _client(app: App, **kw: Any) -> AsyncIterator[httpx.AsyncClient]:
    api = create_app(app, **kw)
    async with api.router.lifespan_context(api):
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            yield client


@pytest.fixture
async def web(app: App) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(app) as client:
        yield client


def _as(who: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[who]}"} if who else {}


OPS = _as("ops")


class _Page(HTMLParser):
    """What a test reads off a page: job rows, forms and their fields, links by test id."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.rows: list[str] = []
        self.forms: list[dict[str, Any]] = []
        self.testids: dict[str, dict[str, str]] = {}
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "tr" and "data-job-id" in a:
            self.rows.append(a["data-job-id"])
        if tag == "form":
            self.forms.append({"method": a.get("method", "get"), "action": a["action"], "f": {}})
        if tag == "input" and self.forms and "name" in a:
            self.forms[-1]["f"][a["name"]] = a.get("value", "")
        if "data-testid" in a:
            self.testids[a["data-testid"]] = a

    def post_forms(self) -> list[dict[str, Any]]:
        return [f for f in self.forms if f["method"] == "post"]


async def _page(web: httpx.AsyncClient, path: str, **params: Any) -> tuple[str, _Page]:
    answer = await web.get(path, params=params or None, headers=OPS)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/html")
    return answer.text, _Page(answer.text)


async def _dead(app: App, customer: str, **options: Any) -> str:
    """A job that ran once and went dead (its handler raised)."""
    job = await app.enqueue(Invoice(customer=customer, amount=-1), **options)
    return job.id


async def _run_until_idle(app: App, ids: list[str]) -> None:
    """Run a worker until every job in `ids` is final."""
    worker = Worker(app)
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(30):
            for job_id in ids:
                while True:
                    row = await app.get(job_id)
                    if row is not None and row.state.final:
                        break
                    await asyncio.sleep(0.02)
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 30)


def _route_paths(job_id: str) -> list[tuple[str, str]]:
    """Every route of the dashboard, its path parameters filled in: (method, path)."""
    fill = {"job_id": job_id, "queue": "billing", "action": "retry", "name": "dashboard.css"}
    out = []
    for route in [*pages.router.routes, *actions.router.routes]:
        assert isinstance(route, Route)
        path = re.sub(r"{(\w+)(:\w+)?}", lambda m: fill[m.group(1)], route.path)
        if path.endswith("/queues/billing/retry"):
            path = path.replace("/retry", "/pause")
        for method in route.methods or ():
            if method != "HEAD":
                out.append((method, path))
    return out


# -- who may see it ---------------------------------------------------------------------------


async def test_non_admins_and_anonymous_callers_find_no_dashboard_route(
    app: App, web: httpx.AsyncClient
) -> None:
    job_id = await _dead(app, "Acme")
    await _run_until_idle(app, [job_id])
    routes = _route_paths(job_id)
    assert len(routes) >= 10, routes
    secret_token = csrf_token(SECRET, "bob", time.time())
    for who in (None, "bob"):
        for method, path in routes:
            answer = await web.request(
                method, path, headers=_as(who), data={"csrf": secret_token, "confirm": "yes"}
            )
            assert answer.status_code == 404, (who, method, path, answer.text)
            assert answer.headers["content-type"] == "application/problem+json", path
            assert answer.json()["status"] == 404
        # Nor do other methods, or paths no route serves, tell them anything.
        for method, path in (
            ("POST", "/dashboard"),
            ("DELETE", "/dashboard/jobs"),
            ("GET", "/dashboard/nope"),
        ):
            answer = await web.request(method, path, headers=_as(who))
            assert answer.status_code == 404, (who, method, path)
            assert answer.headers["content-type"] == "application/problem+json"
    # Nothing any of those POSTs asked for happened.
    row = await app.get(job_id)
    assert row is not None and row.state is JobState.DEAD
    assert not (await app.stats())["billing"].get("paused")
    # The admin reaches every one of them (the GETs here; the POSTs below).
    for method, path in routes:
        if method == "GET" and not path.endswith("/events"):
            answer = await web.get(path, headers=OPS, params={"action": "retry"})
            assert answer.status_code == 200, (path, answer.text)


async def test_an_auth_hook_makes_admins_with_admin(tmp_path: Path) -> None:
    app = _app(_settings(tmp_path))

    def hook(request: Request) -> str | None:
        who = request.headers.get("x-user")
        return Admin(who) if who == "carol" else who

    async with _client(app, auth=hook) as web:
        assert (await web.get("/dashboard", headers={"x-user": "carol"})).status_code == 200
        assert (await web.get("/dashboard", headers={"x-user": "dave"})).status_code == 404
        assert (await web.get("/dashboard")).status_code == 404


async def test_development_mode_shows_the_dashboard_to_local(tmp_path: Path) -> None:
    app = _app(_settings(tmp_path).with_(api_tokens={}, admin_principals=frozenset()))
    async with _client(app) as web:
        answer = await web.get("/dashboard")
        assert answer.status_code == 200
        assert 'data-testid="operator">local<' in answer.text


# -- the pages -------------------------------------------------------------------------------


async def test_overview_shows_each_queue_its_depth_and_the_last_hour(
    app: App, web: httpx.AsyncClient
) -> None:
    dead = await _dead(app, "Acme")
    await _run_until_idle(app, [dead])
    for n in range(3):
        await app.enqueue(Ping(n=n))
    html, _ = await _page(web, "/dashboard")
    queues = re.findall(r'<tr data-queue="(\w+)"', html)
    assert queues == ["billing", "misc"]
    misc = html[html.index('data-queue="misc"') :]
    assert re.search(r'data-col="queued">3<', misc)
    billing = html[html.index('data-queue="billing"') : html.index('data-queue="misc"')]
    assert re.search(r'data-col="dead"><a [^>]*>1</a>', billing)
    # the dead job in the last hour is dead, not failed,
    assert 'aria-label="Jobs finished per minute: 0 succeeded, 0 failed, 1 dead"' in html
    assert '0 succeeded · <span class="key bad"></span>0 failed · 1 dead</small>' in html
    assert "cdn" not in html.lower() and "https://" not in html  # every asset is offload's
    headers = (await web.get("/dashboard", headers=OPS)).headers
    assert "default-src 'self'" in headers["content-security-policy"]  # the browser holds to it
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "same-origin"  # its addresses name jobs
    # The part the page's script redraws is the same table, alone.
    live = (await web.get("/dashboard", params={"part": "live"}, headers=OPS)).text
    assert "<html" not in live and 'data-queue="misc"' in live


async def test_overview_counts_the_jobs_given_back_for_a_newer_worker(
    app: App, web: httpx.AsyncClient
) -> None:
    # Given a job stored at a version newer than the worker's (the web tier deployed first),
    newer = dataclasses.replace(app.envelope(Ping(n=9)), version=2)
    await app.submit(newer)
    worker = Worker(app)
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(30):
            while (row := await app.get(newer.id)) is None or row.error is None:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 30)
    # when the worker gave it back, the overview says so beside the queue's scheduled jobs.
    html, _ = await _page(web, "/dashboard")
    misc = html[html.index('data-queue="misc"') :]
    misc = misc[: misc.index("</tr>")]
    assert "(1 for a newer worker)" in misc


async def test_assets_come_from_the_package(web: httpx.AsyncClient) -> None:
    for name, media in (("dashboard.css", "text/css"), ("dashboard.js", "text/javascript")):
        answer = await web.get(f"/dashboard/static/{name}", headers=OPS)
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith(media)
        assert "http" not in answer.text  # no CDN, no remote fetch
    missing = await web.get("/dashboard/static/..%2Fsite.py", headers=OPS)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


async def test_workers_page_shows_the_registry(app: App, web: httpx.AsyncClient) -> None:
    worker = Worker(app)
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.started.wait(), 10)
        async with asyncio.timeout(20):
            while True:
                if await app.workers():
                    break
                await asyncio.sleep(0.05)
        (info,) = await app.workers()
        html, _ = await _page(web, "/dashboard/workers")
        assert f'data-worker="{info.id}"' in html
        assert "billing, misc" in html or "misc, billing" in html
        assert re.search(r'data-col="heartbeat">\d+ s ago', html)
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 30)
    html, _ = await _page(web, "/dashboard/workers")
    assert "No worker has recorded itself" in html  # a clean stop forgets it


async def test_workers_whose_heartbeat_lapsed_are_marked_lost(tmp_path: Path) -> None:
    clock = FakeClock(START)
    app = _app(_settings(tmp_path), clock)
    async with _client(app) as web:
        # Given a worker that recorded itself running a job, then fell silent for a minute,
        backend = app._require_backend()
        same_ms = ("01a24bf7-ef9f-7000-8000-000000000001", "01a24bf7-ef9f-7000-8000-000000000002")
        running = ("j-1", *same_ms)  # two of one enqueue_many share their first 13 characters
        await backend.record_worker(worker_info("gone", queues=("billing",), running=running))
        clock.advance(60)
        # and one that recorded itself just now,
        await backend.record_worker(worker_info("alive", queues=("misc",), processed=7))
        html, _ = await _page(web, "/dashboard/workers")
    # then the page lists the live one first, and marks the silent one lost.
    assert html.index('data-worker="alive"') < html.index('data-worker="gone"')
    gone = html[html.index('data-worker="gone"') :]
    alive = html[html.index('data-worker="alive"') : html.index('data-worker="gone"')]
    assert 'class="pill lost"' in gone and 'class="pill lost"' not in alive
    assert re.search(r'data-col="heartbeat">60 s ago', gone)
    assert 'href="/dashboard/jobs/j-1"' in gone and "at its last heartbeat" in gone
    assert all(f"<code>{job_id}</code>" in gone for job_id in same_ms)  # each told apart
    assert "at its last heartbeat" not in alive
    assert "1 live, 1 lost" in html


async def test_job_page_shows_envelope_attempts_error_and_traceback(
    app: App, web: httpx.AsyncClient
) -> None:
    job_id = await _dead(app, "Globex")
    await _run_until_idle(app, [job_id])
    html, page = await _page(web, f"/dashboard/jobs/{job_id}")
    assert page.testids["job-state"]  # present
    assert ">dead<" in html
    assert "1 of 1" in html
    assert "negative amount for Globex" in html
    assert "Traceback (most recent call last)" in html  # operators see tracebacks
    assert "&#34;customer&#34;: &#34;Globex&#34;" in html or '"customer": "Globex"' in html
    assert "No webhook or email for this job." in html
    # A dead job may be retried or purged; a succeeded one only purged (a retry refuses it).
    assert {"retry", "purge"} <= page.testids.keys() and "cancel" not in page.testids
    done = await app.enqueue(Ping(n=1))
    await _run_until_idle(app, [done.id])
    _, page = await _page(web, f"/dashboard/jobs/{done.id}")
    assert "purge" in page.testids and "retry" not in page.testids
    missing = await web.get("/dashboard/jobs/nope", headers=OPS)
    assert missing.status_code == 404
    assert missing.json()["type"].endswith("/job-not-found")


# -- actions and their guards ---------------------------------------------------------------


async def _retry_form(web: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    _, page = await _page(web, f"/dashboard/jobs/{job_id}")
    (form,) = [f for f in page.post_forms() if f["action"].endswith("/retry")]
    return form


async def test_a_form_rendered_before_a_key_rotation_still_acts_while_the_old_key_is_a_fallback(
    app: App, tmp_path: Path
) -> None:
    # Given a dead job and its retry form, rendered under the key in use until now,
    job_id = await _dead(app, "Initech")
    await _run_until_idle(app, [job_id])
    async with _client(app) as web:
        form = await _retry_form(web, job_id)
    old = form["f"]["csrf"]
    new = b"the-new-key-of-32-bytes-or-more!"
    # when the key is replaced, the old one removed, the form is refused;
    retired = _app(_settings(tmp_path, secret_key_fallbacks=()).with_(secret_key=new))
    async with _client(retired) as web:
        answer = await web.post(form["action"], data={"csrf": old}, headers=OPS)
        assert answer.status_code == 403 and answer.json()["type"].endswith("/bad-csrf-token")
    # while the old key is a fallback, it is taken.
    rotated = _app(_settings(tmp_path, secret_key_fallbacks=(SECRET,)).with_(secret_key=new))
    async with _client(rotated) as web:
        answer = await web.post(form["action"], data={"csrf": old}, headers=OPS)
        assert answer.status_code == 303, answer.text
    row = await app.get(job_id)
    assert row is not None and row.state is JobState.QUEUED


async def test_an_action_without_the_right_csrf_token_changes_nothing(
    app: App, web: httpx.AsyncClient
) -> None:
    job_id = await _dead(app, "Initech")
    await _run_until_idle(app, [job_id])
    form = await _retry_form(web, job_id)
    good = form["f"]["csrf"]
    expired = (
        f"{int(time.time()) - 5}.{sign(SECRET, 'dashboard-csrf', 'ops', str(int(time.time()) - 5))}"
    )
    for token in (None, "", "garbage", good + "x", csrf_token(SECRET, "bob", time.time()), expired):
        data = {} if token is None else {"csrf": token}
        answer = await web.post(form["action"], data=data, headers=OPS)
        assert answer.status_code == 403, token
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["type"].endswith("/bad-csrf-token")
    # A page of another site, even with a good token, is refused too.
    answer = await web.post(
        form["action"], data={"csrf": good}, headers={**OPS, "Origin": "https://evil.example"}
    )
    assert answer.status_code == 403
    assert answer.json()["type"].endswith("/cross-site-request")
    # JSON is not the dashboard's form.
    answer = await web.post(form["action"], json={"csrf": good}, headers=OPS)
    assert answer.status_code == 415
    row = await app.get(job_id)
    assert row is not None and row.state is JobState.DEAD
    # With the page's token, from the page's origin, it is done.
    answer = await web.post(form["action"], data={"csrf": good}, headers={**OPS, "Origin": BASE})
    assert answer.status_code == 303
    location = answer.headers["location"]
    assert location.startswith(f"/dashboard/jobs/{job_id}?notice=")
    row = await app.get(job_id)
    assert row is not None and row.state is JobState.QUEUED
    # The page shows the notice its action signed; a crafted link's words are not shown.
    shown = await web.get(location, headers=OPS)
    assert 'data-testid="notice"' in shown.text
    crafted = await web.get(
        f"/dashboard/jobs/{job_id}?notice=Call+support+at+evil.example&nmac=00", headers=OPS
    )
    assert crafted.status_code == 200 and "evil.example" not in crafted.text


async def test_cancel_and_purge_one_job(app: App, web: httpx.AsyncClient) -> None:
    waiting = await app.enqueue(Ping(n=1), delay=3600)
    _, page = await _page(web, f"/dashboard/jobs/{waiting.id}")
    assert not [f for f in page.post_forms() if f["action"].endswith("/purge")]  # not final
    (cancel,) = [f for f in page.post_forms() if f["action"].endswith("/cancel")]
    # (a purge posted anyway, from a page of another moment, is refused, and says why)
    purge_path = cancel["action"].replace("/cancel", "/purge")
    early = await web.post(purge_path, data=cancel["f"], headers=OPS)
    assert early.status_code == 303 and f"/jobs/{waiting.id}?notice=" in early.headers["location"]
    shown = await web.get(early.headers["location"], headers=OPS)
    assert "Not purged: the job is queued" in shown.text
    assert await app.get(waiting.id) is not None
    assert (await web.post(cancel["action"], data=cancel["f"], headers=OPS)).status_code == 303
    row = await app.get(waiting.id)
    assert row is not None and row.state is JobState.CANCELLED
    _, page = await _page(web, f"/dashboard/jobs/{waiting.id}")
    (purge,) = [f for f in page.post_forms() if f["action"].endswith("/purge")]
    answer = await web.post(purge["action"], data=purge["f"], headers=OPS)
    assert answer.status_code == 303
    assert await app.get(waiting.id) is None
    again = await web.post(purge["action"], data=purge["f"], headers=OPS)
    assert again.status_code == 404


async def test_pause_and_resume_a_queue_from_the_overview(app: App, web: httpx.AsyncClient) -> None:
    _, page = await _page(web, "/dashboard")
    (pause,) = [f for f in page.post_forms() if f["action"].endswith("/queues/billing/pause")]
    answer = await web.post(pause["action"], data=pause["f"], headers=OPS)
    assert answer.status_code == 303
    assert (await app.stats())["billing"]["paused"] is True
    html, page = await _page(web, "/dashboard")
    assert 'data-testid="resume-billing"' in html
    (resume,) = [f for f in page.post_forms() if f["action"].endswith("/queues/billing/resume")]
    assert (await web.post(resume["action"], data=resume["f"], headers=OPS)).status_code == 303
    assert (await app.stats())["billing"]["paused"] is False
    # A made-up queue is not paused (it would stay in the overview for good)
    made_up = pause["action"].replace("/queues/billing/", "/queues/no-such-queue/")
    refused = await web.post(made_up, data=pause["f"], headers=OPS)
    assert refused.status_code == 404 and "no-such-queue" not in await app.stats()


async def test_a_queue_whose_name_holds_a_slash_is_paused_from_the_overview(
    tmp_path: Path,
) -> None:
    # Its form posted to /queues/eu/billing/pause, which no route took: a 404.
    app = _app(_settings(tmp_path))
    for n, queue in enumerate(("eu/billing", "eu/../billing")):
        cls = type(f"EuInvoice{n}", (Message,), {"__annotations__": {"amount": int}})
        app.message(f"eu.invoice{n}", queue=queue)(cls)
    async with _client(app) as web:
        # (and one whose dots a browser resolves away: it paused billing)
        for queue in ("eu/billing", "eu/../billing"):
            _, page = await _page(web, "/dashboard")
            wanted = "/queues/" + quote(queue, safe="") + "/pause"
            (pause,) = [f for f in page.post_forms() if f["action"].endswith(wanted)]
            answer = await web.post(pause["action"], data=pause["f"], headers=OPS)
            assert answer.status_code == 303
            assert (await app.stats())[queue]["paused"] is True
        assert not (await app.stats())["billing"].get("paused")


async def test_read_only_mode_hides_every_action_and_refuses_them(tmp_path: Path) -> None:
    app = _app(_settings(tmp_path, dashboard_readonly=True))
    job_id = await _dead(app, "Umbrella")
    await _run_until_idle(app, [job_id])
    async with _client(app) as web:
        token = csrf_token(SECRET, "ops", time.time())
        for path in ("/dashboard", f"/dashboard/jobs/{job_id}", "/dashboard/jobs"):
            html, page = await _page(web, path)
            assert page.post_forms() == [], path
            assert 'data-testid="read-only"' in html
            assert "bulk-actions" not in html
        for path in (
            f"/dashboard/jobs/{job_id}/retry",
            f"/dashboard/jobs/{job_id}/purge",
            "/dashboard/queues/billing/pause",
            "/dashboard/jobs/bulk",
        ):
            data = {"csrf": token, "action": "retry", "confirm": "yes", "state": "dead"}
            answer = await web.post(path, data=data, headers=OPS)
            assert answer.status_code == 403, path
            assert answer.json()["type"].endswith("/dashboard-read-only")
        confirm = await web.get("/dashboard/jobs/confirm?action=retry", headers=OPS)
        assert confirm.status_code == 403
    row = await app.get(job_id)
    assert row is not None and row.state is JobState.DEAD
    assert not (await app.stats())["billing"].get("paused")


# -- filters, search, pagination and bulk actions -----------------------------------------


async def _seed(app: App, clock: FakeClock) -> dict[str, list[str]]:
    """Jobs of two kinds, owners and days; some dead: their ids by group, oldest first."""
    groups: dict[str, list[str]] = {"ping": [], "dead": [], "invoice_ok": [], "bob": []}
    for i in range(70):
        groups["ping"].append((await app.enqueue(Ping(n=i))).id)
        clock.advance(1)
    clock.advance(86400)  # the next day
    for i in range(4):
        groups["dead"].append(await _dead(app, f"Dead Customer {i}"))
        groups["invoice_ok"].append((await app.enqueue(Invoice(customer=f"Fine {i}"))).id)
        groups["bob"].append((await app.enqueue(Ping(n=1000 + i), owner="bob")).id)
        clock.advance(1)
    await _run_until_idle(app, groups["dead"] + groups["invoice_ok"])
    return groups


async def _states(app: App, ids: list[str]) -> set[JobState | None]:
    rows = [await app.get(job_id) for job_id in ids]
    return {row.state if row else None for row in rows}


async def _all_rows(web: httpx.AsyncClient, **params: Any) -> list[str]:
    """Every row of the jobs list for `params`, page after page."""
    seen: list[str] = []
    _, page = await _page(web, "/dashboard/jobs", **params)
    seen += page.rows
    while "next-page" in page.testids:
        href = page.testids["next-page"]["href"]
        answer = await web.get(href, headers=OPS)
        page = _Page(answer.text)
        assert page.rows, href
        seen += page.rows
    return seen


async def test_filters_search_and_pages_show_the_right_rows(tmp_path: Path) -> None:
    clock = FakeClock(START)
    app = _app(_settings(tmp_path), clock)
    groups = await _seed(app, clock)
    async with _client(app) as web:
        # Every job, newest first, 50 a page, no repeat and no gap.
        everything = await _all_rows(web)
        created = [*groups["ping"]]
        for i in range(4):
            created += [groups["dead"][i], groups["invoice_ok"][i], groups["bob"][i]]
        assert everything == created[::-1]
        html, page = await _page(web, "/dashboard/jobs")
        assert len(page.rows) == 50 and 'data-testid="match-count">82<' in html
        # The menus offer offload's own kinds and queue too (the deliveries').
        for own in ("offload.webhook", "offload.email", "offload.notify"):
            assert f'<option value="{own}" >{own}</option>' in html, own
        # One kind and state.
        dead = await _all_rows(web, kind="billing.invoice", state="dead")
        assert dead == groups["dead"][::-1]
        # An owner.
        assert await _all_rows(web, owner="bob") == groups["bob"][::-1]
        # A queue and a date range: the first day only.
        cut = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(START + 3600))
        first_day = await _all_rows(web, queue="misc", created_before=cut)
        assert first_day == groups["ping"][::-1]
        later = await _all_rows(web, queue="misc", created_after=cut)
        assert later == groups["bob"][::-1]
        # Text in the message, and an id prefix.
        assert await _all_rows(web, text="dead customer 2") == [groups["dead"][2]]
        target = groups["invoice_ok"][1]
        by_id = await _all_rows(web, id=target[:30])
        assert by_id == [target]
        # Nothing matches: an empty list, no bulk actions.
        html, page = await _page(web, "/dashboard/jobs", text="no such words")
        assert page.rows == [] and "bulk-actions" not in html
        # A filter the dashboard cannot read is a 422 problem.
        for bad in ({"state": "sleeping"}, {"created_after": "yesterday"}):
            answer = await web.get("/dashboard/jobs", params=bad, headers=OPS)
            assert answer.status_code == 422, bad
            assert answer.headers["content-type"] == "application/problem+json"


async def test_retry_everything_matching_a_filter_after_confirming_the_count(
    tmp_path: Path,
) -> None:
    clock = FakeClock(START)
    app = _app(_settings(tmp_path), clock)
    groups = await _seed(app, clock)
    async with _client(app) as web:
        html, page = await _page(web, "/dashboard/jobs", kind="billing.invoice", state="dead")
        link = page.testids["bulk-retry"]["href"]
        html, page = await _page(web, link)
        assert 'data-testid="confirm-count">4<' in html
        # The confirmation counts what the action would change, not every match: of the
        # kind's dead and succeeded jobs, only the dead ones can be retried; none cancelled.
        _, whole_kind = await _page(web, "/dashboard/jobs", kind="billing.invoice")
        retry_all = await web.get(whole_kind.testids["bulk-retry"]["href"], headers=OPS)
        assert 'data-testid="confirm-count">4<' in retry_all.text
        cancel_all = await web.get(whole_kind.testids["bulk-cancel"]["href"], headers=OPS)
        assert 'data-testid="nothing-to-do"' in cancel_all.text
        assert "confirm-button" not in cancel_all.text
        (form,) = page.post_forms()
        # Without the confirmation, nothing.
        unconfirmed = {k: v for k, v in form["f"].items() if k != "confirm"}
        answer = await web.post(form["action"], data=unconfirmed, headers=OPS)
        assert answer.status_code == 422
        assert await _states(app, groups["dead"]) == {JobState.DEAD}
        answer = await web.post(form["action"], data=form["f"], headers=OPS)
        assert answer.status_code == 303
        html, page = await _page(web, answer.headers["location"])
        assert "Retried 4 jobs" in html
        assert page.rows == []  # none is dead any more
        assert await _states(app, groups["dead"]) == {JobState.QUEUED}
        # Untouched: the kind's succeeded jobs.
        assert await _states(app, groups["invoice_ok"]) == {JobState.SUCCEEDED}


# -- live ---------------------------------------------------------------------------------------


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the test process keeps its own signals
        yield


@contextlib.asynccontextmanager
async def _served(app: App) -> AsyncIterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(
        create_app(app), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(20):
            while not server.started:
                assert not task.done(), "uvicorn did not start"
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def _opening(lines: AsyncIterator[str]) -> None:
    """Read the stream's opening block (its retry and position): it is subscribed."""
    async for line in lines:
        if not line:
            return


async def _events(lines: AsyncIterator[str], count: int) -> list[tuple[str, str, str]]:
    """The next `count` events of a stream: (feed position, state, job id)."""
    out: list[tuple[str, str, str]] = []
    fields: dict[str, str] = {}
    async for line in lines:
        if line:
            name, _, value = line.partition(": ")
            fields[name] = value
            continue
        if "event" in fields:
            out.append((fields["id"], fields["event"], orjson.loads(fields["data"])["id"]))
            if len(out) == count:
                return out
        fields = {}
    return out


async def test_the_change_stream_carries_every_owners_jobs_and_resumes(app: App) -> None:
    async with _served(app) as base, httpx.AsyncClient(base_url=base, timeout=30) as client:
        async with client.stream("GET", "/dashboard/events", headers=_as("bob")) as refused:
            assert refused.status_code == 404
        async with client.stream("GET", "/dashboard/events", headers=OPS) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.aiter_lines()
            async with asyncio.timeout(30):
                await _opening(lines)
                a = await app.enqueue(Ping(n=1), owner="alice")
                b = await app.enqueue(Ping(n=2), owner="bob")
                got = await _events(lines, 2)
        # Both owners' jobs come through the one stream.
        assert [(event, job) for _, event, job in got] == [("queued", a.id), ("queued", b.id)]
        # Resumed after the first (Last-Event-ID): the second comes again.
        headers = {**OPS, "Last-Event-ID": got[0][0]}
        async with client.stream("GET", "/dashboard/events", headers=headers) as stream:
            async with asyncio.timeout(30):
                again = await _events(stream.aiter_lines(), 1)
        assert again == [got[1]]


async def test_a_job_stream_replays_a_finished_job_and_ends(
    app: App, web: httpx.AsyncClient
) -> None:
    job_id = await _dead(app, "Hooli")
    await _run_until_idle(app, [job_id])
    answer = await web.get(f"/dashboard/jobs/{job_id}/events", headers=OPS)
    assert answer.status_code == 200
    states = re.findall(r"^event: (\w+)$", answer.text, flags=re.M)
    assert states == ["queued", "running", "dead"]
    # The page's EventSource reconnecting after the end is told to stop (204).
    last = re.findall(r"^id: (\d+)$", answer.text, flags=re.M)[-1]
    ended = await web.get(
        f"/dashboard/jobs/{job_id}/events", headers={**OPS, "Last-Event-ID": last}
    )
    assert ended.status_code == 204
    bad = await web.get(f"/dashboard/jobs/{job_id}/events", headers={**OPS, "Last-Event-ID": "x"})
    assert bad.status_code == 400


async def test_mounted_under_a_path_every_link_stays_under_it(app: App) -> None:
    from fastapi import FastAPI

    host = FastAPI()
    inner = create_app(app)
    host.mount("/ops", inner)
    job_id = await _dead(app, "Mounted")
    await _run_until_idle(app, [job_id])
    async with inner.router.lifespan_context(inner):
        transport = httpx.ASGITransport(app=host)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as web:
            html, page = await _page(web, "/ops/dashboard")
            hrefs = re.findall(r'(?:href|action|src|data-[a-z]+)="(/[^"]*)"', html)
            assert hrefs and all(h.startswith("/ops/dashboard") for h in hrefs), hrefs
            _, page = await _page(web, f"/ops/dashboard/jobs/{job_id}")
            (form,) = [f for f in page.post_forms() if f["action"].endswith("/retry")]
            answer = await web.post(form["action"], data=form["f"], headers=OPS)
            assert answer.status_code == 303
            assert answer.headers["location"].startswith(f"/ops/dashboard/jobs/{job_id}?")
            slash = await web.get("/ops/dashboard/", headers=OPS)
            assert slash.status_code == 308 and slash.headers["location"] == "/ops/dashboard"


async def _bulk(web: httpx.AsyncClient, action: str, **filters: str) -> httpx.Response:
    """Confirm `action` on the jobs matching `filters` as the confirmation page offers it."""
    _, page = await _page(web, "/dashboard/jobs/confirm", action=action, **filters)
    (form,) = page.post_forms()
    return await web.post(form["action"], data=form["f"], headers=OPS)


async def test_cancel_then_purge_everything_matching(app: App, web: httpx.AsyncClient) -> None:
    # Given five pings waiting an hour and one invoice that succeeded,
    waiting = [(await app.enqueue(Ping(n=i), delay=3600)).id for i in range(5)]
    done = (await app.enqueue(Invoice(customer="Keep", amount=1))).id
    await _run_until_idle(app, [done])
    # when the operator cancels every job of the misc queue, then purges the cancelled ones,
    answer = await _bulk(web, "cancel", queue="misc")
    assert answer.status_code == 303
    html, _ = await _page(web, answer.headers["location"])
    assert "Cancelled 5 jobs (queue misc)" in html
    assert await _states(app, waiting) == {JobState.CANCELLED}
    answer = await _bulk(web, "purge", state="cancelled")
    html, page = await _page(web, answer.headers["location"])
    assert "Purged 5 jobs (state cancelled)" in html and page.rows == []
    # then they are gone, and the invoice is untouched.
    assert await _states(app, waiting) == {None}
    assert await _states(app, [done]) == {JobState.SUCCEEDED}


async def test_a_bulk_action_that_would_change_more_than_confirmed_asks_again(
    app: App, web: httpx.AsyncClient
) -> None:
    # Given the confirmation to retry the two dead invoices, and a third invoice waiting,
    dead = [await _dead(app, f"Twice {i}") for i in range(2)]
    await _run_until_idle(app, dead)
    later = await _dead(app, "Since", delay=3600)
    _, page = await _page(web, "/dashboard/jobs/confirm", action="retry", kind="billing.invoice")
    (form,) = page.post_forms()
    # when the third one ends (cancelled: retry takes those too) before the operator confirms,
    await app.cancel(later)
    answer = await web.post(form["action"], data=form["f"], headers=OPS)
    # then nothing is done: the confirmation again, counting three and saying why,
    assert answer.status_code == 303
    html, page = await _page(web, answer.headers["location"])
    assert "3 jobs match now, 2 when you confirmed: nothing was done yet" in html
    assert '<b data-testid="confirm-count">3</b>' in html
    assert await _states(app, dead) == {JobState.DEAD}
    # and once confirmed, the three are retried.
    (form,) = page.post_forms()
    answer = await web.post(form["action"], data=form["f"], headers=OPS)
    html, _ = await _page(web, answer.headers["location"])
    assert "Retried 3 jobs (kind billing.invoice)" in html
    assert await _states(app, [*dead, later]) == {JobState.QUEUED}


async def test_a_bulk_action_leaves_the_jobs_created_after_its_confirmation(
    app: App, web: httpx.AsyncClient
) -> None:
    # Given the confirmation to purge two cancelled jobs,
    shown = [(await app.enqueue(Ping(n=i), delay=3600)).id for i in range(2)]
    for job_id in shown:
        await app.cancel(job_id)
    _, page = await _page(web, "/dashboard/jobs/confirm", action="purge", state="cancelled")
    (form,) = page.post_forms()
    # when another is created and cancelled before the operator confirms (the count the
    # same: one of the two was retried meanwhile),
    await app.requeue(shown[1])
    unseen = (await app.enqueue(Ping(n=9), delay=3600)).id
    await app.cancel(unseen)
    answer = await web.post(form["action"], data=form["f"], headers=OPS)
    # then only the one the operator was shown is purged
    html, _ = await _page(web, answer.headers["location"])
    assert "Purged 1 job (state cancelled); 2 matched when you confirmed" in html
    assert await _states(app, [shown[0]]) == {None}
    assert await _states(app, [unseen]) == {JobState.CANCELLED}


async def test_actions_refuse_what_is_no_dashboard_form(app: App, web: httpx.AsyncClient) -> None:
    job_id = await _dead(app, "Refused")
    await _run_until_idle(app, [job_id])
    token = csrf_token(SECRET, "ops", time.time())
    cases: list[tuple[str, dict[str, Any], int]] = [
        (
            "/dashboard/jobs/bulk",
            {"data": {"csrf": token, "action": "explode", "confirm": "yes"}},
            422,
        ),
        ("/dashboard/jobs/bulk", {"data": {"csrf": token, "action": "retry", "state": "x"}}, 422),
        (f"/dashboard/jobs/{job_id}/explode", {"data": {"csrf": token}}, 404),
        ("/dashboard/jobs/nope/retry", {"data": {"csrf": token}}, 404),
        ("/dashboard/queues/%20/pause", {"data": {"csrf": token}}, 404),
        (
            f"/dashboard/jobs/{job_id}/retry",
            {"content": b"csrf=" + token.encode(), "headers": {"content-type": "text/plain"}},
            415,
        ),
        (f"/dashboard/jobs/{job_id}/retry", {"data": {"csrf": token, "pad": "x" * 20_000}}, 413),
    ]
    for path, request, status in cases:
        headers = {**OPS, **request.pop("headers", {})}
        answer = await web.post(path, headers=headers, **request)
        assert answer.status_code == status, (path, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
    # A finished job cannot be cancelled (its page says why), and stays as it was.
    answer = await web.post(f"/dashboard/jobs/{job_id}/cancel", data={"csrf": token}, headers=OPS)
    assert (
        answer.status_code == 303
        and f"/jobs/{job_id}?notice=Not+done" in answer.headers["location"]
    )
    assert await _states(app, [job_id]) == {JobState.DEAD}
    assert (await web.get("/dashboard/jobs/confirm?action=explode", headers=OPS)).status_code == 422


async def test_a_jobs_page_cursor_that_is_no_job_id_is_refused(web: httpx.AsyncClient) -> None:
    # It was read as the first page (any text) or as an empty one (a space)
    for bad in ("zzz", "ZZZ", " ", "01a2"):
        answer = await web.get("/dashboard/jobs", params={"cursor": bad}, headers=OPS)
        assert answer.status_code == 422, bad
        assert answer.headers["content-type"] == "application/problem+json"
    assert (await web.get("/dashboard/jobs", params={"cursor": ""}, headers=OPS)).status_code == 200


async def test_the_dashboards_event_streams_name_the_worker_as_operators_see_it(
    app: App, web: httpx.AsyncClient
) -> None:
    # The dashboard's job page shows the worker's own name; its live streams showed the
    # label that clients get, and the job's failure without its traceback. (The overview's
    # stream of every job is presented the same way.)
    job_id = await _dead(app, "Initech")
    await _run_until_idle(app, [job_id])
    row = await app.get(job_id)
    assert row is not None and row.worker
    answer = await web.get(f"/dashboard/jobs/{job_id}/events", headers=OPS)  # (from its start)
    records = [
        orjson.loads(line[len("data: ") :])
        for line in answer.text.splitlines()
        if line.startswith("data: ")
    ]
    (dead,) = [r for r in records if r["state"] == "dead"]
    assert dead["worker"] == row.worker
    assert "Traceback (most recent call last)" in dead["error"]["traceback"]


async def test_a_confirmation_writes_its_count_as_the_list_does(
    app: App, web: httpx.AsyncClient
) -> None:
    # Given 1,234 waiting pings,
    await app.enqueue_many([Ping(n=i) for i in range(1234)], delay=3600)
    # when an operator asks to cancel them all,
    html, _ = await _page(web, "/dashboard/jobs/confirm", action="cancel", kind="misc.ping")
    # then the page's title, heading, count and button write the number with its commas
    assert "<title>Cancel 1,234 jobs?" in html
    assert "<h1>Cancel 1,234 jobs?</h1>" in html
    assert '<b data-testid="confirm-count">1,234</b>' in html
    assert 'data-testid="confirm-button">Cancel 1,234 jobs</button>' in html
    assert 'name="expected" value="1234"' in html  # (the form's own, as it was)
