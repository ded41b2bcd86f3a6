"""The demo in real headless Chromium: export a report, upload an image, read the mail.

`offload demo` runs as a subprocess (web tier, a worker process, the SMTP catcher) on a free
port; Playwright drives Debian's Chromium (never a downloaded browser). Screenshots of each
step go to test-output/browser/.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ..demo_support import DemoProcess, dollars, expected_totals
from ..services import unavailable

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = os.environ.get("OFFLOAD_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SHOTS = Path(__file__).resolve().parents[2] / "test-output" / "browser"
#: Generous: a report takes a few seconds, more on a loaded 2-core machine.
JOB_TIMEOUT_MS = 60_000

# Records every value the progress bars of the job list take, as the page changes them.
RECORD_PROGRESS = """() => {
  window.progressSeen = [];
  new MutationObserver((changes) => {
    for (const c of changes) {
      window.progressSeen.push(Number(c.target.getAttribute("aria-valuenow")));
    }
  }).observe(document.getElementById("jobs"),
             {subtree: true, attributes: true, attributeFilter: ["aria-valuenow"]});
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        unavailable("Chromium", f"{CHROMIUM} is missing (make test installs Debian's chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        unavailable("Playwright", str(exc))
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def demo(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoProcess]:
    process = DemoProcess(tmp_path_factory.mktemp("demo")).start()
    try:
        yield process
    finally:
        code = process.stop()
        assert code == 0, process.output()


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def signed_in(browser: Browser, demo: DemoProcess, user: str) -> Page:
    from playwright.sync_api import expect

    context = browser.new_context(
        base_url=demo.base, viewport={"width": 1280, "height": 860}, accept_downloads=True
    )
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login"))
    page.click(f"button[data-user={user}]")
    expect(page).to_have_url(re.compile(r"/reports$"))
    return page


def test_export_report_follows_progress_downloads_the_pdf_and_emails(
    browser: Browser, demo: DemoProcess
) -> None:
    from playwright.sync_api import expect
    from pypdf import PdfReader

    page = signed_in(browser, demo, "alice")
    expect(page.get_by_test_id("user-name")).to_have_text("Alice Martin")
    expect(page.locator("#jobs-empty")).to_be_visible()
    shot(page, "01-reports")
    page.evaluate(RECORD_PROGRESS)

    # When Alice clicks "Export my report", the answer is a 202 and a row that is not done:
    # the click returned before the work.
    with page.expect_response(lambda r: r.url.endswith("/reports")) as answer:
        page.click("#export-button")
    assert answer.value.status == 202, answer.value.text()
    row = page.locator("#jobs > .job").first
    expect(row).to_be_visible()
    assert row.get_attribute("data-final") == "false"
    job_id = row.get_attribute("data-job-id")

    # Then the progress bar moves (server-sent events), and a download link appears.
    bar = row.locator(".progress")
    expect(bar).to_have_attribute("aria-valuenow", re.compile(r"^[1-9][0-9]?$"), timeout=30_000)
    shot(page, "02-report-in-progress")
    download = row.locator("a.download")
    expect(download).to_be_visible(timeout=JOB_TIMEOUT_MS)
    shot(page, "03-report-done")
    seen = page.evaluate("window.progressSeen")
    assert any(0 < v < 100 for v in seen), seen
    assert seen == sorted(seen), f"progress went backwards: {seen}"

    # The PDF is valid, has several pages, and carries the totals of Alice's year.
    with page.expect_download() as pdf:
        download.click()
    path = SHOTS / "alice-report.pdf"
    pdf.value.save_as(path)
    reader = PdfReader(path)
    assert len(reader.pages) > 1
    text = "\n".join((p.extract_text() or "") for p in reader.pages[:4])
    orders, revenue = expected_totals(demo.data_path, "alice")
    assert dollars(revenue) in text
    assert f"{orders:,}" in text
    assert "Alpine Coffee Roasters" in text

    # A reload keeps showing the report and its state.
    page.reload()
    expect(page.locator(f"#job-{job_id} a.download")).to_be_visible()
    expect(page.locator(f"#job-{job_id} [data-role=state]")).to_have_text("succeeded")

    # The confirmation email arrives in the mailbox page (it is a job of its own).
    page.click("nav >> text=Mailbox")
    subject = page.locator(".mail-subject").first
    expect(subject).to_contain_text("Your sales report is ready", timeout=JOB_TIMEOUT_MS)
    expect(page.locator(".mail-text").first).to_contain_text(dollars(revenue))
    shot(page, "04-mailbox")
    page.context.close()


def _png(path: Path, width: int, height: int) -> Path:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), (245, 240, 230))
    draw = ImageDraw.Draw(image)
    for i in range(0, width, 40):
        draw.rectangle((i, 0, i + 20, height), fill=(120 + i % 120, 80, 200 - i % 150))
    draw.ellipse((width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=(67, 56, 202))
    image.save(path)
    return path


def test_upload_makes_thumbnails_and_refuses_what_is_not_an_image(
    browser: Browser, demo: DemoProcess, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page = signed_in(browser, demo, "alice")
    page.click("nav >> text=Thumbnails")
    expect(page).to_have_url(re.compile(r"/thumbnails$"))
    posts: list[Any] = []
    page.on("request", lambda r: posts.append(r) if r.method == "POST" else None)

    # A text file is refused with a clear message, and nothing is enqueued.
    notes = tmp_path / "notes.txt"
    notes.write_text("shopping list: beans, filters, milk")
    page.set_input_files("#image", notes)
    with page.expect_response(lambda r: r.url.endswith("/thumbnails")) as answer:
        page.click("#upload-button")
    assert answer.value.status == 415
    error = page.locator("#upload-form .form-error")
    expect(error).to_contain_text("“notes.txt” is not an image")
    expect(page.locator("#jobs > .job")).to_have_count(0)
    shot(page, "05-not-an-image")

    # A file over the limit is refused before it is sent.
    big = tmp_path / "huge.png"
    big.write_bytes(b"\x89PNG" + b"\0" * (8 * 1024 * 1024 + 16))
    page.set_input_files("#image", big)
    sent = len(posts)
    page.click("#upload-button")
    expect(error).to_contain_text("too large")
    assert len(posts) == sent

    # A photo becomes three thumbnails, shown when the worker is done.
    page.set_input_files("#image", _png(tmp_path / "espresso.png", 1200, 800))
    with page.expect_response(lambda r: r.url.endswith("/thumbnails")) as answer:
        page.click("#upload-button")
    assert answer.value.status == 202
    images = page.locator("#jobs > .job").first.locator("img[data-size]")
    expect(images).to_have_count(3, timeout=JOB_TIMEOUT_MS)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#jobs img[data-size]')]"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    widths = images.evaluate_all("els => els.map(e => [e.naturalWidth, e.naturalHeight])")
    assert sorted(widths) == [[64, 43], [160, 107], [320, 213]]
    shot(page, "06-thumbnails")
    page.context.close()


def test_second_user_sees_none_of_the_first_users_exports(
    browser: Browser, demo: DemoProcess
) -> None:
    from playwright.sync_api import expect

    # Given Alice has started a report of her own,
    page = signed_in(browser, demo, "alice")
    page.click("#export-button")
    row = page.locator("#jobs > .job").first
    expect(row).to_be_visible()
    alice_job = row.get_attribute("data-job-id")
    assert alice_job

    # when Bob signs in in the same browser,
    page.click("text=Switch user")
    page.click("button[data-user=bob]")
    expect(page.get_by_test_id("user-name")).to_have_text("Bob Okafor")

    # then he sees none of her reports, images or mail,
    expect(page.locator("#jobs > .job")).to_have_count(0)
    expect(page.locator("#jobs-empty")).to_be_visible()
    shot(page, "07-second-user")
    page.click("nav >> text=Thumbnails")
    expect(page.locator("#jobs > .job")).to_have_count(0)
    page.click("nav >> text=Mailbox")
    expect(page.locator(".mail")).to_have_count(0)

    # and her job does not exist for him, through the pages or the API.
    api = page.request
    for path in (f"/rows/{alice_job}", f"/v1/jobs/{alice_job}", f"/v1/jobs/{alice_job}/events"):
        assert api.get(path).status == 404, path
    listed = api.get("/v1/jobs").json()["items"]
    assert alice_job not in {job["id"] for job in listed}
    page.context.close()
