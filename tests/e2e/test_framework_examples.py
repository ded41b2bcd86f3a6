"""examples/flask and examples/fastapi run as their READMEs say: the commands of each
README's first shell block as real processes (the web server and `offload worker`) in a copy
of the example, on loopback ports; then a browser's or an API client's path through it:
submit, follow the status to the result, another user finds nothing, and a refused request
enqueues nothing."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from offload import App
from offload.contract import JobFilter

from ..frameworks import EXAMPLES, exported, run_commands
from ..ports import free_port
from .conftest import Stack

#: The web servers the READMEs start, by the program their command names.
SERVERS = ("flask", "uvicorn")
#: Browsers posting to the Flask example at the same time.
CONCURRENT = 8
#: How long a job may take end to end (a worker process starting included).
DEADLINE_S = 60.0


def start_example(name: str, root: Path) -> Stack:
    """A copy of examples/<name> with its README's commands running: the environment the
    README exports (no other OFFLOAD_ setting), the worker, and the web server on a free
    port instead of the README's."""
    shutil.copytree(EXAMPLES / name, root, ignore=shutil.ignore_patterns("__pycache__"))
    stack = Stack(root, "")
    stack.env = {k: v for k, v in stack.env.items() if not k.startswith(("OFFLOAD_", "FLASK_"))}
    commands = run_commands(name)
    stack.env |= exported(commands)
    for argv in commands:
        program, *args = argv
        if program in ("pip", "export"):
            continue
        assert program in ("offload", *SERVERS), f"the README runs {program!r}"
        if program in SERVERS:
            stack.port = free_port()
            args[args.index("--port") + 1] = str(stack.port)
            args += ["--host", "127.0.0.1"]
        out = open(stack.logs / f"{program}.out", "wb")
        stack.closing.append(out)
        proc = subprocess.Popen(
            [sys.executable, "-m", program, *args],
            cwd=root,
            env=stack.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        stack.procs.append(proc)
    return stack


def wait_serving(stack: Stack, path: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        assert all(p.poll() is None for p in stack.procs), stack.output()
        try:
            if httpx.get(f"{stack.base}{path}", timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the example did not start:\n{stack.output()}")


def stored_jobs(root: Path) -> int:
    """How many jobs the example's backend holds (the README's default: offload.db here)."""

    async def count() -> int:
        async with App("count", url=f"sqlite:///{root / 'offload.db'}") as app:
            return await app.count_jobs(JobFilter())

    return asyncio.run(count())


@pytest.fixture
def flask_example(tmp_path: Path) -> Iterator[Stack]:
    stack = start_example("flask", tmp_path / "flask")
    try:
        wait_serving(stack, "/")
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def fastapi_example(tmp_path: Path) -> Iterator[Stack]:
    stack = start_example("fastapi", tmp_path / "fastapi")
    try:
        wait_serving(stack, "/jobs/readyz")
        yield stack
    finally:
        stack.stop()


def signed_in(stack: Stack, user: str) -> httpx.Client:
    """A browser session of `user`, with the password the README exports."""
    passwords = dict(u.split("=", 1) for u in stack.env["FLASK_USERS"].split(","))
    client = httpx.Client(base_url=stack.base, timeout=30)
    stack.closing.append(client)
    answer = client.post("/login", data={"user": user, "password": passwords[user]})
    assert answer.status_code == 303, answer.text
    return client


def follow_status_page(client: httpx.Client, url: str) -> httpx.Response:
    """Load the status page as a browser does, again on each `<meta http-equiv=refresh>`,
    until it answers something else than itself: the 303 to the result."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        page = client.get(url)
        if page.status_code != 200:
            return page
        assert re.search(r'<meta http-equiv="refresh" content="\d+">', page.text), page.text
        time.sleep(0.05)  # a browser waits the refresh's second; the test need not
    raise AssertionError(f"the status page never moved on: {page.text}")


def test_the_flask_example_runs_as_its_readme_says(flask_example: Stack) -> None:
    stack = flask_example
    alice = signed_in(stack, "alice")
    # A form that does not validate is refused with the reason, and enqueues nothing
    refused = alice.post("/count", data={"text": ""})
    assert refused.status_code == 422 and "at least 1 character" in refused.text
    blank = alice.post("/count", data={"text": "  \n "})
    assert blank.status_code == 422 and "should match pattern" in blank.text
    # Nobody signed in: refused too
    anonymous = httpx.post(f"{stack.base}/count", data={"text": "hello"}, timeout=30)
    assert anonymous.status_code == 401
    assert stored_jobs(stack.root) == 0

    # When alice posts the form, she is sent to the job's status page
    posted = alice.post("/count", data={"text": "To be, or not to be: that is the question."})
    assert posted.status_code == 303, posted.text
    status_url = posted.headers["location"]
    assert re.fullmatch(r"/jobs/[0-9a-f-]{36}", status_url), status_url
    # Then the page refreshes until the job is done, and sends her to the result with a 303
    done = follow_status_page(alice, status_url)
    assert done.status_code == 303 and done.headers["location"] == f"{status_url}/result"
    result = alice.get(done.headers["location"])
    assert result.status_code == 200 and "10 words" in result.text
    assert "to (2)" in result.text and "be (2)" in result.text
    assert stored_jobs(stack.root) == 1

    # And bob finds neither the status page nor the result of alice's job
    bob = signed_in(stack, "bob")
    assert bob.get(status_url).status_code == 404
    assert bob.get(f"{status_url}/result").status_code == 404


def test_the_flask_example_serves_many_request_threads_at_once(flask_example: Stack) -> None:
    # Given signed-in browsers, one per request thread of the threaded server
    browsers = [signed_in(flask_example, "alice") for _ in range(CONCURRENT)]

    def submit_and_follow(i: int) -> str:
        posted = browsers[i].post("/count", data={"text": " ".join(["word"] * (i + 1))})
        assert posted.status_code == 303, posted.text
        done = follow_status_page(browsers[i], posted.headers["location"])
        assert done.status_code == 303, done.text
        return browsers[i].get(done.headers["location"]).text

    # When they all post and poll at the same time
    with ThreadPoolExecutor(CONCURRENT) as pool:
        pages = list(pool.map(submit_and_follow, range(CONCURRENT)))
    # Then every one gets its own result
    for i, page in enumerate(pages):
        assert f"{i + 1} words" in page, page
    assert stored_jobs(flask_example.root) == CONCURRENT


def problem_of(answer: httpx.Response, status: int) -> dict[str, object]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = answer.json()
    assert body["status"] == status and body["type"] and body["detail"]
    return body


def test_the_fastapi_example_runs_as_its_readme_says(fastapi_example: Stack) -> None:
    stack = fastapi_example
    tokens = {
        p: t for t, p in (pair.split("=") for pair in stack.env["OFFLOAD_API_TOKENS"].split(","))
    }

    def client(user: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {tokens[user]}"} if user else {}
        c = httpx.Client(base_url=stack.base, timeout=30, headers=headers)
        stack.closing.append(c)
        return c

    alice, bob, nobody = client("alice"), client("bob"), client(None)
    # Refused requests: RFC 9457 problems, and nothing enqueued
    invalid = problem_of(alice.post("/count", json={"text": ""}), 422)
    assert invalid["errors"], invalid
    problem_of(alice.post("/count", json={"text": "   "}), 422)
    problem_of(alice.post("/count", json={"words": "no text field"}), 422)
    unsigned = nobody.post("/count", json={"text": "hello"})
    problem_of(unsigned, 401)
    assert unsigned.headers["www-authenticate"].startswith("Bearer")
    # The kind is submitted through the app's route only (http=False)
    problem_of(alice.post("/jobs/v1/jobs/texts.count", json={"user": "x", "text": "y"}), 404)
    assert stored_jobs(stack.root) == 0

    # When alice posts her text to the app's own route
    accepted = alice.post("/count", json={"text": "to be or not to be"})
    # Then it answers 202 with offload's Location in the mounted status API
    assert accepted.status_code == 202, accepted.text
    location = accepted.headers["location"]
    assert location == f"/jobs/v1/jobs/{accepted.json()['id']}"
    assert accepted.headers["retry-after"]
    # (the body is the record as it stands: the worker may have claimed the job already)
    assert accepted.json()["state"] in ("queued", "running", "succeeded")
    assert accepted.json()["links"]["self"] == location
    # And the status API shows her job until it has succeeded
    deadline = time.monotonic() + DEADLINE_S
    while (record := alice.get(location).json())["state"] != "succeeded":
        assert record["state"] in ("queued", "running"), record
        assert time.monotonic() < deadline, stack.output()
        time.sleep(0.05)
    assert record["result"]["words"] == 6
    # And its result is a 303 to the counts file
    result = alice.get(f"{location}/result")
    assert result.status_code == 303, result.text
    counts = alice.get(result.headers["location"])
    assert counts.status_code == 200 and counts.text.splitlines()[:2] == ["to 2", "be 2"]
    assert stored_jobs(stack.root) == 1

    # And bob (another principal) finds nothing there
    problem_of(bob.get(location), 404)
    problem_of(bob.get(f"{location}/result"), 404)
    assert bob.get("/jobs/v1/jobs").json()["items"] == []
    assert [job["id"] for job in alice.get("/jobs/v1/jobs").json()["items"]] == [record["id"]]
