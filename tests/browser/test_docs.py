"""The API's docs page (Swagger UI) runs in real headless Chromium under the page's own
Content-Security-Policy: it draws the API from /openapi.json, and the browser reports no
refused script, style or request."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .test_dashboard import TIMEOUT_MS, TOKENS, Shop, browser

if TYPE_CHECKING:
    from playwright.sync_api import Browser

__all__ = ["browser"]  # the fixture, used by name
pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    shop = Shop(tmp_path).start()
    try:
        yield shop
    finally:
        assert shop.stop() == [0, 0], shop.output()


def test_swagger_ui_runs_under_the_docs_pages_policy(browser: Browser, shop: Shop) -> None:
    context = browser.new_context(
        base_url=shop.base, extra_http_headers={"Authorization": f"Bearer {TOKENS['bob']}"}
    )
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    complaints: list[str] = []
    page.on("console", lambda m: complaints.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: complaints.append(str(e)))
    answer = page.goto("/docs")
    assert (
        answer is not None and "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    )
    # Swagger UI drew the document: its title and a submission route of the shop's kinds
    page.locator(".swagger-ui .info .title").wait_for()
    page.locator(".opblock-summary-path", has_text="/v1/jobs/billing.invoice").first.wait_for()
    assert complaints == []
    context.close()
