"""The dashboard in real headless Chromium: an operator finds a dead job by the text of its
message, retries every dead job of its kind in one confirmed action, pauses a queue and sees
its jobs wait while a real worker runs, resumes it and sees them drain; someone else finds
no dashboard at all.

`offload web` and `offload worker` run as subprocesses on a small project (tests/browser/
dashproj) with API tokens: `ops` is an admin (OFFLOAD_ADMIN_PRINCIPALS), `bob` is not. Each
browser context sends its bearer token with every request (pages, forms, event streams), as
a proxy in front of the dashboard would. With OFFLOAD_SCREENSHOTS=docs/img it writes the
README's screenshots there.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

import offload

from ..ports import free_port
from ..services import unavailable

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = os.environ.get("OFFLOAD_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ROOT = Path(__file__).resolve().parents[2]
#: Where the README's screenshots are written: only when asked
#: (`OFFLOAD_SCREENSHOTS=docs/img`), so that a test run leaves the checkout as it was.
SHOTS = os.environ.get("OFFLOAD_SCREENSHOTS")
TOKENS = {"ops": "t-ops", "bob": "t-bob"}
#: Generous: CI is a loaded 2-core machine.
TIMEOUT_MS = 30_000
TIMEOUT_S = TIMEOUT_MS / 1000


class Shop:
    """The project's web tier and one worker, as OS processes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fail_flag = root / "provider-down"
        self.port = free_port()
        sources = Path(offload.__file__).resolve().parents[1]
        path = [str(ROOT), str(sources), *filter(None, os.environ.get("PYTHONPATH", "").split(":"))]
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")},
            "OFFLOAD_URL": f"sqlite:///{root / 'jobs.db'}",
            "OFFLOAD_BLOBS_URL": str(root / "blobs"),
            "OFFLOAD_SECRET_KEY": "dashboard-browser-test-" + "k" * 32,
            "OFFLOAD_API_TOKENS": ",".join(f"{t}={p}" for p, t in TOKENS.items()),
            "OFFLOAD_ADMIN_PRINCIPALS": "ops",
            "DASHPROJ_FAIL_FLAG": str(self.fail_flag),
            "PYTHONPATH": os.pathsep.join(path),
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.api = httpx.Client(
            base_url=self.base, timeout=30, headers={"Authorization": f"Bearer {TOKENS['bob']}"}
        )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _start(self, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.root / f"proc-{len(self.procs)}.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "offload", *args],
            cwd=self.root,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()  # the child holds its own copy
        self.procs.append(proc)
        return proc

    def start(self) -> Shop:
        web = self._start(
            "web", "--app", "tests.browser.dashproj.contracts:app", "--port", str(self.port)
        )
        self._start("worker", "--app", "tests.browser.dashproj.handlers:app")
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            assert web.poll() is None, self.output()
            try:
                if self.api.get("/readyz").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"offload web did not become ready:\n{self.output()}")

    def submit(self, kind: str, **body: Any) -> str:
        answer = self.api.post(f"/v1/jobs/{kind}", json=body)
        assert answer.status_code == 202, answer.text
        job_id: str = answer.json()["id"]
        return job_id

    def wait_states(self, ids: list[str], state: str) -> None:
        """Poll the API (a deadline, not a sleep) until every job is in `state`."""
        deadline = time.monotonic() + TIMEOUT_S
        pending = list(ids)
        while pending and time.monotonic() < deadline:
            if self.api.get(f"/v1/jobs/{pending[0]}").json()["state"] == state:
                pending.pop(0)
            else:
                time.sleep(0.05)
        assert not pending, f"not {state}: {pending}\n{self.output()}"

    def state(self, job_id: str) -> str:
        state: str = self.api.get(f"/v1/jobs/{job_id}").json()["state"]
        return state

    def output(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.root.glob("*.log")))

    def stop(self) -> list[int | None]:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout=20))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        self.api.close()
        return codes


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        unavailable("Chromium", f"{CHROMIUM} is missing (make test installs Debian's chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        unavailable("Playwright", str(exc))
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    shop = Shop(tmp_path)
    shop.fail_flag.touch()  # the payment provider is down at first
    shop.start()
    try:
        yield shop
    finally:
        codes = shop.stop()
        assert codes == [0, 0], shop.output()


def _page_as(browser: Browser, shop: Shop, who: str) -> Page:
    context = browser.new_context(
        base_url=shop.base,
        viewport={"width": 1280, "height": 900},
        extra_http_headers={"Authorization": f"Bearer {TOKENS[who]}"},
    )
    context.set_default_timeout(TIMEOUT_MS)
    return context.new_page()


def shot(page: Page, name: str) -> None:
    if not SHOTS:
        return
    folder = ROOT / SHOTS
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"dashboard-{name}.png"), full_page=True)


def _cell(page: Page, queue: str, column: str) -> Any:
    return page.locator(f'tr[data-queue="{queue}"] td[data-col="{column}"]')


def test_an_operator_finds_retries_pauses_and_resumes(browser: Browser, shop: Shop) -> None:
    from playwright.sync_api import expect

    # Given three invoices that went dead while the payment provider was down, and a ping,
    customers = ["Zebra Stripes Ltd", "Acme Anvils", "Globex Corp"]
    dead = [
        shop.submit("billing.invoice", customer=c, amount=100 + i) for i, c in enumerate(customers)
    ]
    pinged = shop.submit("misc.ping", n=0)
    shop.wait_states(dead, "dead")
    shop.wait_states([pinged], "succeeded")
    page = _page_as(browser, shop, "ops")

    # when the operator searches the jobs for the text of one message,
    page.goto("/dashboard/jobs")
    page.get_by_test_id("search-text").fill("zebra")
    page.get_by_test_id("apply-filters").click()
    expect(page.get_by_test_id("match-count")).to_have_text("1")
    rows = page.locator("table[data-testid=jobs] tbody tr[data-job-id]")
    expect(rows).to_have_count(1)
    assert rows.first.get_attribute("data-job-id") == dead[0]

    # then its page shows it dead, with the error and its traceback.
    rows.first.locator("a").click()
    expect(page.get_by_test_id("job-state")).to_have_text("dead")
    expect(page.get_by_test_id("job-error")).to_contain_text(
        "payment provider down while billing Zebra"
    )
    expect(page.get_by_test_id("traceback")).to_contain_text("Traceback (most recent call last)")
    expect(page.get_by_test_id("envelope")).to_contain_text('"customer": "Zebra Stripes Ltd"')
    # (the committed screenshot shows the traceback's files relative to the checkout, not
    # where this machine keeps it)
    page.get_by_test_id("traceback").evaluate(
        "(el, roots) => roots.forEach((r) => {"
        " el.textContent = el.textContent.split(r).join(''); })",
        [f"{ROOT}/", f"{Path(offload.__file__).resolve().parents[1]}/"],
    )
    shot(page, "job")

    # When the provider is back and the operator retries every dead invoice at once,
    shop.fail_flag.unlink()
    page.goto("/dashboard/jobs?kind=billing.invoice&state=dead")
    expect(page.get_by_test_id("match-count")).to_have_text("3")
    shot(page, "jobs")
    page.get_by_test_id("bulk-retry").click()
    # (the confirmation says how many)
    expect(page.get_by_test_id("confirm-count")).to_have_text("3")
    page.get_by_test_id("confirm-button").click()
    expect(page.get_by_test_id("notice")).to_contain_text("Retried 3 jobs")
    # then they run again, and succeed.
    shop.wait_states(dead, "succeeded")
    page.goto("/dashboard/jobs?kind=billing.invoice")
    expect(page.locator("tbody .state-succeeded")).to_have_count(3)

    # The worker registry shows the running worker and its heartbeat.
    page.goto("/dashboard/workers")
    worker = page.locator("table[data-testid=workers] tbody tr[data-worker]")
    expect(worker).to_have_count(1)
    expect(worker.locator('[data-col="heartbeat"]')).to_contain_text("ago")
    shot(page, "workers")

    # When the operator pauses the misc queue from the overview,
    page.goto("/dashboard")
    expect(page.get_by_test_id("live-state")).to_have_text("live")
    page.get_by_test_id("pause-misc").click()
    expect(page.get_by_test_id("notice")).to_contain_text("Paused queue misc")
    expect(_cell(page, "misc", "state")).to_have_text("paused")
    expect(page.get_by_test_id("live-state")).to_have_text("live")
    # (an action's notice takes the focus, to be read out; a keyboard user then goes to
    # the queue's Resume, and keeps it through the live redraws below)
    expect(page.get_by_test_id("notice")).to_be_focused()
    page.get_by_role("button", name="Resume queue misc", exact=True).focus()
    # pings sent to it wait, while the worker keeps running the billing queue's jobs:
    pings = [shop.submit("misc.ping", n=i) for i in range(1, 6)]
    later = shop.submit("billing.invoice", customer="Initech", amount=7)
    shop.wait_states([later], "succeeded")
    expect(_cell(page, "misc", "queued")).to_have_text("5")  # redrawn from the change feed
    expect(page.get_by_test_id("resume-misc")).to_be_focused()
    assert {shop.state(p) for p in pings} == {"queued"}
    expect(page.locator("#activity li")).not_to_have_count(0)
    shot(page, "overview")

    # when it resumes the queue, they drain.
    page.get_by_test_id("resume-misc").click()
    expect(page.get_by_test_id("notice")).to_contain_text("Resumed queue misc")
    expect(_cell(page, "misc", "state")).to_have_text("active")
    shop.wait_states(pings, "succeeded")
    expect(_cell(page, "misc", "queued")).to_have_text("0")
    expect(page.locator("#activity .state-succeeded").first).to_be_visible()
    # The last hour's chart counts each job where it ended: all ten succeeded in the end.
    expect(page.get_by_test_id("throughput-chart")).to_have_attribute(
        "aria-label", re.compile(r": 10 succeeded, 0 failed, 0 dead$")
    )
    page.context.close()


def test_someone_else_finds_no_dashboard(browser: Browser, shop: Shop) -> None:
    page = _page_as(browser, shop, "bob")
    for path in ("/dashboard", "/dashboard/jobs", "/dashboard/workers"):
        answer = page.goto(path)
        assert answer is not None and answer.status == 404, path
        assert answer.headers["content-type"] == "application/problem+json"
    # and the API still works for him.
    assert page.request.get("/v1/jobs").status == 200
    page.context.close()


def test_a_job_purged_while_its_page_is_open_says_so(browser: Browser, shop: Shop) -> None:
    from playwright.sync_api import expect

    page = _page_as(browser, shop, "ops")
    # Given a ping waiting in the paused misc queue, and its page open,
    page.goto("/dashboard")
    page.get_by_test_id("pause-misc").click()
    expect(page.get_by_test_id("notice")).to_contain_text("Paused queue misc")
    ping = shop.submit("misc.ping", n=1)
    page.goto(f"/dashboard/jobs/{ping}")
    expect(page.get_by_test_id("job-state")).to_have_text("queued")
    # when an operator purges the queue,
    purge = [sys.executable, "-m", "offload", "jobs", "purge", "misc", "--yes"]
    subprocess.run(purge, env=shop.env, cwd=shop.root, check=True, capture_output=True)
    # then the page says the job is gone, where it went on showing it waiting, with a
    # Cancel that answered 404 (its stream ends at its next keep-alive, within 15 s)
    gone = page.get_by_test_id("job-gone")
    expect(gone).to_be_visible(timeout=3 * TIMEOUT_MS)
    expect(gone).to_be_focused()
    expect(page.get_by_test_id("job-state")).to_have_count(0)
    page.context.close()


def test_a_redraw_that_changes_nothing_leaves_the_focused_control_alone(
    browser: Browser, shop: Shop
) -> None:
    from playwright.sync_api import expect

    page = _page_as(browser, shop, "ops")
    # (the page's redraws counted, their parts kept without the forms' tokens, as their
    # answers are read: each one's swap, if any, is done before a later task, the waits
    # below, looks)
    page.add_init_script(
        """
        window.__redraws = [];
        const text = Response.prototype.text;
        Response.prototype.text = function () {
          return text.call(this).then((body) => {
            if (this.url.includes("part=live")) {
              window.__redraws.push(body.replace(/<input type="hidden"[^>]*>/g, ""));
            }
            return body;
          });
        };
        """
    )
    # Given the overview, redrawn once since it loaded (that one puts its part in place),
    # and no job moving,
    page.goto("/dashboard")
    expect(page.get_by_test_id("live-state")).to_have_text("live")
    page.wait_for_function("() => window.__redraws.length >= 1", timeout=3 * TIMEOUT_MS)
    # when a queue's Pause is focused from the keyboard and the overview redraws itself
    # (every 10 s) with nothing changed (the chart's minutes move on: a redraw across a
    # minute's end changes its part, and is put in place; the next one is looked at)
    for _ in range(4):
        seen = page.evaluate("() => window.__redraws.length")
        page.get_by_role("button", name="Pause queue misc", exact=True).focus()
        page.evaluate(
            """() => {
              document.querySelectorAll("[data-mark]").forEach((el) => delete el.dataset.mark);
              document.activeElement.dataset.mark = "focused";
              window.__focusins = 0;
              document.addEventListener("focusin", () => { window.__focusins += 1; });
            }"""
        )
        page.wait_for_function(f"() => window.__redraws.length > {seen}", timeout=3 * TIMEOUT_MS)
        parts = page.evaluate(f"() => window.__redraws.slice({seen} - 1, {seen} + 1)")
        if parts[0] == parts[1]:
            break
    else:
        raise AssertionError("no two redraws in a row showed the same part")
    # then the control is the same one, never focused again (a screen reader read a
    # control focused anew out at each redraw; each render's form tokens differ)
    expect(page.locator('[data-mark="focused"]')).to_be_focused()
    assert page.evaluate("() => window.__focusins") == 0
    page.context.close()
