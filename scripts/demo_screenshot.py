"""Take docs/demo.png: the demo's reports page with one report done and one in progress.

Usage: .venv/bin/python scripts/demo_screenshot.py [docs/demo.png]
(needs Debian's chromium at /usr/bin/chromium and the demo and dev extras.)
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import expect, sync_playwright

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_up(base: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit("offload demo did not start")


def main(out: Path) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as folder:
        argv = [sys.executable, "-m", "offload", "demo", "--port", str(port), "--dir", folder]
        proc = subprocess.Popen(argv)
        try:
            _wait_up(base, proc)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS
                )
                page = browser.new_page(base_url=base, viewport={"width": 1280, "height": 800})
                page.goto("/")
                page.click("button[data-user=alice]")
                page.select_option("#period", "2025-Q3")
                page.click("#export-button")
                expect(page.locator("#jobs > .job a.download")).to_be_visible(timeout=30_000)
                page.select_option("#period", "2025")
                page.click("#export-button")
                bar = page.locator("#jobs > .job").first.locator(".progress")
                expect(bar).to_have_attribute("aria-valuenow", re.compile(r"^[4-6]\d$"))
                page.mouse.move(5, 700)
                page.screenshot(path=str(out))
                browser.close()
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/demo.png"))
