"""offload's API mounted under /jobs in a user's own FastAPI app, served by uvicorn as its own
process beside `offload worker`: the whole loop over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ..ports import free_port
from .conftest import READY_DEADLINE_S, TEMPLATE, Stack, backend_url
from .test_loop import read_events


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    shutil.copytree(TEMPLATE, tmp_path, dirs_exist_ok=True)
    with backend_url(request.param, tmp_path) as url:
        s = Stack(tmp_path, url)
        s.backend = request.param
        try:
            yield s
        finally:
            s.stop()


def start_host(stack: Stack, *, with_lifespan: bool) -> subprocess.Popen[bytes]:
    """`uvicorn hostapp:api`, as the user would serve their app; ready once it answers."""
    stack.port = free_port()
    out = open(stack.logs / "host.out", "wb")
    stack.closing.append(out)
    env = {**stack.env, "HOST_LIFESPAN": "1" if with_lifespan else "0"}
    argv = ["-m", "uvicorn", "hostapp:api", "--port", str(stack.port), "--log-level", "warning"]
    proc = subprocess.Popen(
        [sys.executable, *argv], cwd=stack.root, env=env, stdout=out, stderr=subprocess.STDOUT
    )
    stack.procs.append(proc)
    deadline = time.monotonic() + READY_DEADLINE_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the host app exited: {stack.output()}")
        try:
            if httpx.get(f"{stack.base}/", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the host app did not start")


@pytest.mark.parametrize("with_lifespan", [False, True], ids=["mounted", "host-lifespan"])
def test_the_whole_loop_under_the_mount_path(stack: Stack, with_lifespan: bool) -> None:
    host = start_host(stack, with_lifespan=with_lifespan)
    stack.start_worker("--concurrency", "4")
    alice, bob = stack.client("alice"), stack.client("bob")

    # Given offload mounted at /jobs, a submission answers 202 with a Location under /jobs.
    submitted = alice.post("/jobs/v1/jobs/e2e.export", json={"user_id": "u1", "steps": 2})
    assert submitted.status_code == 202, submitted.text + stack.output()
    job_id = submitted.json()["id"]
    assert submitted.headers["location"] == f"/jobs/v1/jobs/{job_id}"
    links = submitted.json()["links"]
    assert links["events"] == f"/jobs/v1/jobs/{job_id}/events"

    # When the client polls the Location and follows the job's events there,
    assert alice.get(submitted.headers["location"]).json()["id"] == job_id
    events = read_events(alice, links["events"])
    assert [name for _, name, _ in events][-1] == "succeeded"
    assert all(data["links"] == links for _, _, data in events)
    assert bob.get(submitted.headers["location"]).status_code == 404

    # Then the result is a 303 to a signed link under /jobs that downloads without a token.
    result = alice.get(links["result"])
    assert result.status_code == 303
    link = result.headers["location"]
    assert link.startswith(f"/jobs/files/exports/{job_id}.txt?")
    download = httpx.get(f"{stack.base}{link}", timeout=30)
    assert download.status_code == 200 and download.text == "report for u1"

    # And the host serves on, then stops without an error.
    assert alice.get("/").json() == {"app": "host"}
    stack.stop()
    assert host.returncode is not None
    for trouble in ("Traceback", "Task was destroyed", "Unclosed", "ERROR"):
        assert trouble not in stack.output(), stack.output()
