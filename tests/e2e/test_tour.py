"""The README's five-minute tour, run as written: its commands as real processes (`offload
migrate`, `offload web`, `offload worker`, `python -m myproj.submit`) in a copy of
examples/quickstart, and its `curl` steps as HTTP calls checked against the output the
README shows, on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ..ports import free_port
from ..services import PgSchema, require_pg
from ..tour import EXAMPLE, EXAMPLE_ID, README_ADDRESS, Command, Curl, steps
from .conftest import Stack

#: Commands that start a long-running process (the others run to their end).
SERVERS = ("web", "worker")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def tour_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """A copy of the example project and nothing else: no tokens, no settings but the
    backend (the README sets none for SQLite, `OFFLOAD_URL` for PostgreSQL)."""
    root = tmp_path / "quickstart"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("__pycache__"))
    schema = None
    if request.param == "postgres":
        require_pg()
        schema = PgSchema(migrate=False)  # `offload migrate`, as the README says, makes it
    try:
        stack = Stack(root, schema.create_sync() if schema else "")
        stack.env = {k: v for k, v in stack.env.items() if not k.startswith("OFFLOAD_")}
        if schema:
            stack.env["OFFLOAD_URL"] = schema.url
        stack.backend = request.param
        try:
            yield stack
        finally:
            stack.stop()
    finally:
        if schema:
            schema.drop_sync()


def run_command(stack: Stack, argv: list[str]) -> None:
    """One command of the tour: pip, cd and export lines are what the fixture did already."""
    program, *args = argv
    if program in ("pip", "cd", "export"):
        return
    if program == "offload" and args[0] in SERVERS:
        if "--port" in args:
            stack.port = free_port()
            args[args.index("--port") + 1] = str(stack.port)
        stack.offload(*args)
        if args[0] == "web":
            wait_ready(stack)
        return
    assert program in ("offload", "python"), f"the tour runs {program!r}"
    command = [sys.executable, *(["-m", "offload"] if program == "offload" else []), *args]
    done = subprocess.run(
        command, cwd=stack.root, env=stack.env, capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, f"{argv}: {done.stdout}\n{done.stderr}\n{stack.output()}"
    if argv[:3] == ["python", "-m", "myproj.submit"]:
        assert "succeeded" in done.stdout, done.stdout  # the final state it prints


def wait_ready(stack: Stack, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{stack.base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"offload web did not become ready:\n{stack.output()}")


def call(stack: Stack, step: Curl, job_id: str) -> httpx.Response:
    """The curl step as an HTTP request to the test's own port, with the real job id."""
    url = step.url.replace(README_ADDRESS, f"127.0.0.1:{stack.port}").replace(EXAMPLE_ID, job_id)
    return httpx.request(
        step.method,
        url,
        headers=step.headers,
        content=step.body,
        follow_redirects="L" in step.flags,
        timeout=60,  # an event stream runs until the job ends
    )


def check(step: Curl, response: httpx.Response, job_id: str) -> None:
    """The answer matches what the README shows (lines with `…` elided; event ids vary)."""
    shown = [line.replace(EXAMPLE_ID, job_id) for line in step.output]
    if shown and shown[0].startswith("HTTP/"):
        assert response.status_code == int(shown[0].split()[1]), response.text
        shown = shown[1:]
        while shown and ": " in shown[0] and not shown[0].startswith("{"):
            name, _, value = shown.pop(0).partition(": ")
            if "…" not in value:
                assert response.headers[name] == value, name
    else:
        assert response.status_code == 200, response.text
    if "N" in step.flags:  # an event stream: the events shown, in that order
        sent = iter(line for line in response.text.splitlines() if line.startswith("event: "))
        for event in (line for line in shown if line.startswith("event: ")):
            assert event in sent, (event, response.text)  # in order: `in` consumes `sent`
        assert list(sent) == [], "the stream ends with the event the README shows last"
        return
    for line in shown:
        if "…" not in line:
            assert line in response.text, (line, response.text)


def test_the_readme_tour_runs_as_written(tour_stack: Stack) -> None:
    job_id = EXAMPLE_ID
    for step in steps():
        if isinstance(step, Command):
            run_command(tour_stack, step.argv)
            continue
        response = call(tour_stack, step, job_id)
        if step.method == "POST":  # the job the next steps follow
            job_id = response.json()["id"]
        check(step, response, job_id)
    assert job_id != EXAMPLE_ID
    # The report's user is the caller (`local`, development mode), not the request's say.
    record = httpx.get(f"{tour_stack.base}/v1/jobs/{job_id}").json()
    assert record["state"] == "succeeded" and record["result"]["report"].startswith("/files/")


def test_the_users_own_tests_the_readme_shows_pass(tmp_path: Path) -> None:
    # Given a copy of the tour's project with the test file "Testing your own code" shows
    root = tmp_path / "quickstart"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("__pycache__", ".ruff_cache"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OFFLOAD_", "PYTEST_"))}

    # When a user runs pytest in it, with no configuration of their own
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    # Then its three tests pass: a job run, a delay waited out on the test's clock, a
    # handler's error raised in the test
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout, done.stdout
