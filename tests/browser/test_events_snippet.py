"""The README's browser snippet that follows one job by server-sent events (a ticket,
events named by state, resumption), run as written in real headless Chromium against
`offload web` and a worker: it follows a job to its end and closes, and it stops, rather
than asking again many times a second, for a job that is not there or a token refused.

The page is served at the API's origin (Playwright answers its one URL), as the snippet's
relative URLs need.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .test_dashboard import ROOT, TIMEOUT_MS, TOKENS, Shop, browser

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

__all__ = ["browser"]  # the fixture, used by name
pytestmark = [pytest.mark.browser, pytest.mark.slow]


def snippet() -> str:
    """The README's snippet: the JavaScript block that defines `follow`."""
    readme = (ROOT / "README.md").read_text()
    (code,) = [b for b in re.findall(r"```js\n(.*?)```", readme, re.S) if "function follow(" in b]
    return code


PAGE = """<!doctype html><meta charset="utf-8"><title>follow</title><script>
const query = new URLSearchParams(location.search);
const token = query.get("token");
window.seen = [];
window.requests = 0;
const sent = window.fetch;
window.fetch = (...args) => { window.requests += 1; return sent(...args); };
%s
follow(query.get("job"), (record) => window.seen.push(record.state));
</script>"""


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    shop = Shop(tmp_path).start()  # the payment provider is up: invoices succeed
    try:
        yield shop
    finally:
        assert shop.stop() == [0, 0], shop.output()


def _follow(browser: Browser, shop: Shop, job_id: str, token: str) -> Page:
    context = browser.new_context(base_url=shop.base)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    html = PAGE % snippet()
    page.route(
        f"{shop.base}/follow*", lambda route: route.fulfill(body=html, content_type="text/html")
    )
    page.goto(f"/follow?token={token}&job={job_id}")
    return page


def test_the_readme_snippet_follows_a_job_to_its_end(browser: Browser, shop: Shop) -> None:
    job_id = shop.submit("billing.invoice", customer="Acme Anvils", amount=3)
    page = _follow(browser, shop, job_id, TOKENS["bob"])
    page.wait_for_function("window.seen.includes('succeeded')")
    seen = page.evaluate("window.seen")
    assert seen[0] == "queued" and seen[-1] == "succeeded", seen
    assert page.evaluate("window.requests") == 1  # one ticket, then the stream to its end
    page.context.close()


@pytest.mark.parametrize(
    ("job_id", "token", "requests"),
    [
        ("01a24ae6-bc90-7003-a3f9-000000000000", TOKENS["bob"], 2),  # a ticket, then its record
        ("01a24ae6-bc90-7003-a3f9-000000000000", "revoked", 1),  # a refused ticket
    ],
    ids=["no-such-job", "refused-token"],
)
def test_the_readme_snippet_stops_when_refused(
    browser: Browser, shop: Shop, job_id: str, token: str, requests: int
) -> None:
    page = _follow(browser, shop, job_id, token)
    page.wait_for_function(f"window.requests >= {requests}")
    # (a loop would have asked hundreds of times by now: it asked to learn why, and stopped)
    page.wait_for_timeout(2000)
    assert page.evaluate("window.requests") == requests
    assert page.evaluate("window.seen") == []
    page.context.close()
