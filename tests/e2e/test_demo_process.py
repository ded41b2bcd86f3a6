"""`offload demo` as real processes: the web half's imports, start-up, and a clean stop."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ..demo_support import DemoProcess, alive

pytestmark = pytest.mark.slow

# Builds the demo's web app, signs in and starts an export, then lists what got imported.
WEB_HALF = """
import asyncio, json, re, sys
from pathlib import Path
import httpx
import offload.cli, offload.demo.launcher
from offload.demo.config import DemoConfig
from offload.demo.launcher import prepare
from offload.demo.pages import create_demo_app

async def main(folder, inline):
    config = prepare(DemoConfig(folder=Path(folder), inline=inline, smtp_url="smtp://127.0.0.1:9"))
    web = create_demo_app(config)
    async with web.router.lifespan_context(web):
        transport = httpx.ASGITransport(app=web)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            await client.post("/login", data={"user": "alice"})
            page = await client.get("/reports")
            token = re.search('data-csrf="([^"]+)"', page.text)[1]
            headers = {"Accept": "application/json", "X-CSRF-Token": token}
            answer = await client.post("/reports", data={"period": "2025-Q1"}, headers=headers)
            assert answer.status_code in (200, 202), answer.text
    print(json.dumps(sorted(sys.modules)))

asyncio.run(main(sys.argv[1], sys.argv[2] == "inline"))
"""


def _modules(tmp_path: Path, mode: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", WEB_HALF, str(tmp_path / mode), mode],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_web_half_never_imports_the_handlers(tmp_path: Path) -> None:
    # Given the web process as `offload demo` builds it, after a real export request:
    modules = _modules(tmp_path, "queued")
    # the worker half and its libraries were never loaded.
    assert "offload.demo.pages" in modules and "offload.demo.contracts" in modules
    assert "offload.demo.handlers" not in modules
    assert not {m for m in modules if m.split(".")[0] in ("reportlab", "aiosmtplib")}
    assert "offload.worker.runner" not in modules


def test_inline_mode_renders_in_the_web_process_still_without_the_handlers(
    tmp_path: Path,
) -> None:
    modules = _modules(tmp_path, "inline")
    assert "reportlab" in modules  # the work happens in the request
    assert "offload.demo.handlers" not in modules


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_ctrl_c_stops_the_web_tier_the_workers_and_the_smtp_catcher(tmp_path: Path) -> None:
    demo = DemoProcess(tmp_path, "--workers", "2").start()
    try:
        workers = demo.children()
        assert len(workers) == 2
        match = re.search(r"caught on smtp://127\.0\.0\.1:(\d+)", demo.output())
        assert match, demo.output()
        smtp_port = int(match[1])
        assert _port_open(smtp_port) and _port_open(demo.port)

        # When Ctrl-C reaches the terminal's process group, everything stops, cleanly.
        code = demo.stop(signal.SIGINT, group=True)
    except BaseException:
        demo.kill()
        raise
    assert code == 0, demo.output()
    assert not any(alive(pid) for pid in workers) and demo.leftovers() == []
    assert not _port_open(demo.port) and not _port_open(smtp_port)
    assert "stopped." in demo.output()
    assert "Traceback" not in demo.output()


def test_sigterm_lets_a_running_report_finish(tmp_path: Path) -> None:
    demo = DemoProcess(tmp_path, "--pace", "0.3").start()
    try:
        workers = demo.children()
        with httpx.Client(base_url=demo.base, timeout=30) as client:
            client.post("/login", data={"user": "carol"})
            token = re.search(r'data-csrf="([^"]+)"', client.get("/reports").text)
            assert token
            headers = {"Accept": "application/json", "X-CSRF-Token": token[1]}
            job_id = client.post("/reports", data={"period": "2025"}, headers=headers).json()["id"]
            deadline = time.monotonic() + 30
            while client.get(f"/v1/jobs/{job_id}").json()["state"] != "running":
                assert time.monotonic() < deadline, "the report never started"
                time.sleep(0.05)
            # When the demo is told to stop while the worker renders,
            code = demo.stop(signal.SIGTERM)
    except BaseException:
        demo.kill()
        raise
    # then the worker finishes the job within its grace period and everything exits 0.
    assert code == 0, demo.output()
    assert not any(alive(pid) for pid in workers) and demo.leftovers() == []
    finished = subprocess.run(
        [sys.executable, "-m", "offload", "jobs", "show", job_id],
        capture_output=True,
        text=True,
        timeout=60,
        env={**demo.env, "OFFLOAD_URL": f"sqlite:///{demo.folder / 'offload.db'}"},
    )
    assert '"state": "succeeded"' in finished.stdout, finished.stdout + finished.stderr


def test_inline_mode_runs_no_worker_processes(tmp_path: Path) -> None:
    demo = DemoProcess(tmp_path, "--inline").start()
    try:
        assert demo.children() == []
        page = httpx.get(f"{demo.base}/login", timeout=10)
        assert "Inline mode" in page.text
        assert "inline" in demo.output()
    finally:
        assert demo.stop() == 0


def test_a_busy_port_fails_without_leaving_processes_behind(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        demo = DemoProcess(tmp_path)
        demo.port = int(taken.getsockname()[1])
        with pytest.raises(RuntimeError, match="exited early"):
            demo.start()
    assert demo.proc is not None and demo.proc.returncode != 0
    assert "address already in use" in demo.output()
    assert demo.leftovers() == []


def test_workers_stop_when_the_launcher_is_killed(tmp_path: Path) -> None:
    demo = DemoProcess(tmp_path).start()
    workers = demo.children()
    assert workers
    # When the launcher dies without a chance to clean up (SIGKILL),
    assert demo.proc is not None
    demo.proc.kill()
    demo.proc.wait()
    # then the kernel tells its workers (PR_SET_PDEATHSIG), and they stop by themselves.
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in workers):
        assert time.monotonic() < deadline, "a worker outlived its launcher"
        time.sleep(0.05)
    assert demo.leftovers() == []
    demo.stop()  # closes the log
