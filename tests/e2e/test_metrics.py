"""Metrics and the worker's limits across real processes: `curl /metrics` of `offload web`
and of `offload worker --metrics-port` during a run, one endpoint per process with
`--processes`, and `--max-jobs` / `--exit-when-idle` ending the command with 0."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from offload import App, Message
from offload.metrics import METRIC_NAMES

from ..ports import free_ports
from ..receivers import Receiver
from ..scrape import Scrape, parse
from .conftest import TEMPLATE, Stack, backend_url

pytestmark = pytest.mark.slow
SCRAPE_TOKEN = "scrape-e2e"
COMPLETED = "offload_jobs_completed_total"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """The project folder and its processes on SQLite (metrics do not depend on the
    backend: the queue gauges read `App.stats`, which the conformance suite covers)."""
    shutil.copytree(TEMPLATE, tmp_path, dirs_exist_ok=True)
    with backend_url("sqlite", tmp_path) as url:
        s = Stack(tmp_path, url)
        try:
            yield s
        finally:
            s.stop()


def scrape(url: str, **headers: str) -> Scrape | None:
    """The metrics at `url`, or None while the endpoint is not up yet."""
    try:
        answer = httpx.get(url, headers=headers, timeout=5)
    except httpx.TransportError:
        return None
    assert answer.status_code == 200, answer.text
    return parse(answer.text)


def poll(stack: Stack, url: str, done: Callable[[Scrape], bool], timeout: float = 30) -> Scrape:
    deadline = time.monotonic() + timeout
    found = None
    while time.monotonic() < deadline:
        found = scrape(url)
        if found is not None and done(found):
            return found
        time.sleep(0.05)
    raise AssertionError(f"metrics at {url} never got there: {found}\n{stack.output()}")


class Noop(Message):
    n: int


def enqueue_unfit(url: str) -> None:
    """A bulk job whose payload no longer fits its contract (its worker fails it at once)."""

    async def main() -> None:
        app = App("e2e-side", url=url)
        app.message("e2e.noop", queue="bulk")(Noop)
        async with app:
            await app.submit(dataclasses.replace(app.envelope(Noop(n=0)), payload={"n": "x"}))

    asyncio.run(main())


def test_curl_metrics_during_a_run_shows_every_metric(stack: Stack) -> None:
    with Receiver(200) as receiver:
        stack.env.update(
            OFFLOAD_WEBHOOK_ALLOW_PRIVATE="1",
            OFFLOAD_METRICS_TOKEN=SCRAPE_TOKEN,
            OFFLOAD_NOTIFY_BACKOFF="0.05",
        )
        stack.start_web()
        port = free_ports(1)
        stack.start_worker("--concurrency", "4", "--metrics-port", str(port))
        worker_url = f"http://127.0.0.1:{port}/metrics"
        alice = stack.client("alice")
        # Given jobs that succeed, one with a webhook, one that fails for good, one that
        # goes dead after three attempts, and one scheduled for later,
        for n in range(3):
            assert alice.post("/v1/jobs/e2e.noop", json={"n": n}).status_code == 202
        exported = alice.post(
            "/v1/jobs/e2e.export",
            params={"callback_url": receiver.url},
            json={"user_id": "u1", "steps": 1},
        )
        assert exported.status_code == 202
        assert alice.post("/v1/jobs/e2e.flaky", json={"flag": "never"}).status_code == 202
        later = alice.post("/v1/jobs/e2e.slow", params={"delay": 3600}, json={"seconds": 0})
        assert later.status_code == 202
        enqueue_unfit(stack.env["OFFLOAD_URL"])
        # when the worker has run them, its endpoint counts every attempt by its end,
        found = poll(
            stack,
            worker_url,
            lambda s: (
                s.total(COMPLETED, kind="e2e.flaky", state="dead") == 1
                and s.total("offload_deliveries_total") == 1
                and s.total(COMPLETED, kind="e2e.noop") == 4
                and s.total(COMPLETED, kind="e2e.export") == 1
            ),
        )
        bulk = {"kind": "e2e.noop", "queue": "bulk"}
        assert found.value(COMPLETED, **bulk, state="succeeded") == 3
        assert found.value(COMPLETED, **bulk, state="failed") == 1
        flaky = {"kind": "e2e.flaky", "queue": "default"}
        assert found.value(COMPLETED, **flaky, state="retrying") == 2
        assert found.value(COMPLETED, **flaky, state="dead") == 1
        assert found.value("offload_deliveries_total", channel="webhook", outcome="delivered") == 1
        assert found.value("offload_job_wait_seconds_count", queue="bulk") == 4
        export = {"kind": "e2e.export", "queue": "reports"}
        # the export sleeps 0.15 s per step: its run time shows it,
        assert 0.15 <= found.value("offload_job_duration_seconds_sum", **export) < 30
        # and beside its metrics, its liveness check answers.
        health = httpx.get(f"http://127.0.0.1:{port}/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        assert found.value("offload_job_duration_seconds_bucket", **export, le="0.1") == 0
        slots = [found.value("offload_worker_slots", state=s) for s in ("busy", "idle")]
        assert sum(slots) == 4
        # and the web tier's counts what it stored, with the queue gauges from the backend.
        web = scrape(f"{stack.base}/metrics", Authorization=f"Bearer {SCRAPE_TOKEN}")
        assert web is not None
        assert web.value("offload_jobs_enqueued_total", **bulk) == 3  # the unfit one: elsewhere
        assert web.value("offload_jobs_enqueued_total", kind="e2e.slow", queue="slow") == 1
        assert web.value("offload_queue_depth", queue="slow", state="scheduled") == 1
        assert web.value("offload_queue_depth", queue="default", state="dead") == 1
        assert web.value("offload_queue_depth", queue="bulk", state="queued") == 0
        assert web.value("offload_queue_oldest_age_seconds", queue="bulk") == 0
        served = {name for name, _ in [*found.samples, *web.samples]}
        for name in METRIC_NAMES:
            assert name in served or f"{name}_count" in served, name
        # Without the token (or as a principal who is no admin), there is nothing there.
        assert httpx.get(f"{stack.base}/metrics").status_code == 404
        assert alice.get("/metrics").status_code == 404
    assert len(receiver.requests) == 1


def test_each_worker_process_serves_its_own_metrics_port(stack: Stack) -> None:
    port = free_ports(2)
    stack.start_web()
    stack.start_worker("--processes", "2", "--concurrency", "2", "--metrics-port", str(port))
    alice = stack.client("alice")
    for n in range(30):
        assert alice.post("/v1/jobs/e2e.noop", json={"n": n}).status_code == 202
    urls = [f"http://127.0.0.1:{port + i}/metrics" for i in (0, 1)]
    # Each process's endpoint comes up and shows its own two slots;
    for url in urls:
        poll(stack, url, lambda s: s.total("offload_worker_slots") == 2)
    # together they count every job once.
    deadline = time.monotonic() + 30
    counts: list[float] = []
    while time.monotonic() < deadline:
        scrapes = [scrape(url) for url in urls]
        counts = [s.total(COMPLETED, state="succeeded") if s else 0.0 for s in scrapes]
        if sum(counts) == 30:
            break
        time.sleep(0.05)
    assert sum(counts) == 30, f"{counts}\n{stack.output()}"


def wait_exit(stack: Stack, proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the worker did not exit by itself\n{stack.output()}") from None


def test_max_jobs_with_processes_runs_that_many_per_process_and_exits_0(stack: Stack) -> None:
    stack.start_web()
    alice = stack.client("alice")
    ids = [alice.post("/v1/jobs/e2e.noop", json={"n": n}).json()["id"] for n in range(20)]
    # Given two processes that may run 3 jobs each, prefetch on,
    proc = stack.start_worker("--processes", "2", "--max-jobs", "3", "--prefetch", "100")
    # the command ends by itself with 0 once both have,
    assert wait_exit(stack, proc) == 0, stack.output()
    records = [alice.get(f"/v1/jobs/{job_id}").json() for job_id in ids]
    # having run 6 and claimed no others: those wait untouched.
    assert sum(r["state"] == "succeeded" for r in records) == 6
    waiting = [r for r in records if r["state"] == "queued"]
    assert len(waiting) == 14
    assert all(r["attempt"] == 0 and r["error"] is None for r in waiting)


def test_exit_when_idle_with_processes_drains_then_exits_0(stack: Stack) -> None:
    stack.start_web()
    alice = stack.client("alice")
    ids = [alice.post("/v1/jobs/e2e.noop", json={"n": n}).json()["id"] for n in range(10)]
    proc = stack.start_worker("--processes", "2", "--exit-when-idle", "0.5")
    assert wait_exit(stack, proc) == 0, stack.output()
    states = {alice.get(f"/v1/jobs/{job_id}").json()["state"] for job_id in ids}
    assert states == {"succeeded"}


def test_a_metrics_port_in_use_is_a_usage_error(stack: Stack) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = stack.run_cli("worker", "--app", "e2eapp.handlers:app", f"--metrics-port={port}")
    assert result.returncode == 2, result.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr
