"""examples/django runs as its README says: the commands of its first shell block as real
processes in a copy of the example (the migrations and the users first, then
`manage.py offload_worker` and uvicorn on a loopback port); then a browser's path through
it: Django's sign-in form, the "Export my report" button (CSRF token and all), the 303 to the
status page, its refreshes until the report is ready; another user finds nothing, and a
refused POST enqueues nothing."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ..frameworks import EXAMPLES, exported, run_commands
from ..ports import free_port
from .conftest import Stack
from .test_framework_examples import DEADLINE_S, stored_jobs, wait_serving

pytest.importorskip("django", minversion="6.0")

# Set-up (migrations, a worker and a web server starting) takes a few seconds.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
#: The users the README creates, and their passwords.
_CREATE_USER = re.compile(r"create_user\('(\w+)', password='(\w+)'\)")
_CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def start_django_example(root: Path) -> tuple[Stack, dict[str, str]]:
    """A copy of examples/django with its README's commands run: the environment the README
    exports (no other OFFLOAD_ or DJANGO_ setting), the one-off `manage.py` commands to their
    end, then the worker, and uvicorn on a free port instead of the README's. Returns the
    stack and the users' passwords."""
    shutil.copytree(
        EXAMPLES / "django",
        root,
        ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3", "offload.db*", "reports"),
    )
    stack = Stack(root, "")
    stack.env = {k: v for k, v in stack.env.items() if not k.startswith(("OFFLOAD_", "DJANGO_"))}
    commands = run_commands("django")
    stack.env |= exported(commands)
    users: dict[str, str] = {}
    for argv in commands:
        program, *args = argv
        if program in ("pip", "export"):
            continue
        assert program in ("python", "uvicorn"), f"the README runs {program!r}"
        if program == "python" and args[1] != "offload_worker":
            assert args[0] == "manage.py", argv
            done = subprocess.run(
                [sys.executable, *args],
                cwd=root,
                env=stack.env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            users |= dict(_CREATE_USER.findall(" ".join(args)))
            continue
        if program == "uvicorn":
            stack.port = free_port()
            args[args.index("--port") + 1] = str(stack.port)
            args = ["-m", "uvicorn", *args, "--host", "127.0.0.1"]
        out = open(stack.logs / f"{args[1]}.out", "wb")
        stack.closing.append(out)
        proc = subprocess.Popen(
            [sys.executable, *args], cwd=root, env=stack.env, stdout=out, stderr=subprocess.STDOUT
        )
        stack.procs.append(proc)
    return stack, users


@pytest.fixture
def django_example(tmp_path: Path) -> Iterator[tuple[Stack, dict[str, str]]]:
    stack, users = start_django_example(tmp_path / "django")
    try:
        wait_serving(stack, "/accounts/login/")
        yield stack, users
    finally:
        stack.stop()


def csrf_token(page: httpx.Response) -> str:
    assert page.status_code == 200, page.text
    found = _CSRF.search(page.text)
    assert found, page.text
    return found.group(1)


def signed_in(stack: Stack, user: str, password: str) -> httpx.Client:
    """A browser session of `user`, signed in through Django's own sign-in form."""
    client = httpx.Client(base_url=stack.base, timeout=30)
    stack.closing.append(client)
    token = csrf_token(client.get("/accounts/login/"))
    answer = client.post(
        "/accounts/login/",
        data={"username": user, "password": password, "csrfmiddlewaretoken": token},
    )
    assert answer.status_code == 302 and answer.headers["location"] == "/", answer.text
    return client


def follow_status_page(client: httpx.Client, url: str) -> str:
    """Load the status page as a browser does, again on each `<meta http-equiv=refresh>`,
    until it stops refreshing: the finished export."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        page = client.get(url)
        assert page.status_code == 200, page.text
        if 'http-equiv="refresh"' not in page.text:
            return page.text
        assert re.search(r"Status: <strong id=\"status\">(READY|RUNNING)<", page.text), page.text
        time.sleep(0.05)  # a browser waits the refresh's second; the test need not
    raise AssertionError(f"the status page never finished: {page.text}")


def test_the_django_example_runs_as_its_readme_says(
    django_example: tuple[Stack, dict[str, str]],
) -> None:
    stack, users = django_example
    assert set(users) == {"alice", "bob"}
    # Signed out: the pages send the browser to Django's sign-in, a POST enqueues nothing
    anonymous = httpx.Client(base_url=stack.base, timeout=30)
    stack.closing.append(anonymous)
    assert anonymous.get("/").headers["location"] == "/accounts/login/?next=/"
    token = csrf_token(anonymous.get("/accounts/login/"))
    refused = anonymous.post("/exports/", data={"csrfmiddlewaretoken": token})
    assert refused.status_code == 302 and refused.headers["location"].startswith("/accounts/")
    assert anonymous.get("/offload/v1/jobs").status_code == 401

    alice = signed_in(stack, "alice", users["alice"])
    home = alice.get("/")
    assert "Export my report" in home.text
    # A POST without the page's CSRF token is refused
    assert alice.post("/exports/").status_code == 403
    assert stored_jobs(stack.root) == 0

    # When alice presses the button, she is sent to the export's status page
    posted = alice.post("/exports/", data={"csrfmiddlewaretoken": csrf_token(home)})
    assert posted.status_code == 303, posted.text
    status_url = posted.headers["location"]
    found = re.fullmatch(r"/exports/([0-9a-f-]{36})/", status_url)
    assert found, status_url
    result_id = found.group(1)
    # Then the page refreshes until the worker has written her report, and shows it
    page = follow_status_page(alice, status_url)
    assert "SUCCESSFUL" in page, page
    assert f"Your report is ready: 1 row in report-{result_id}.csv." in page, page
    report = (stack.root / "reports" / f"report-{result_id}.csv").read_text().splitlines()
    assert report[0] == "requested_at,result_id" and report[1].endswith(f",{result_id}")
    assert stored_jobs(stack.root) == 1
    # And offload's status API, mounted in the project, tells her about it
    record = alice.get(f"/offload/v1/jobs/{result_id}")
    assert record.status_code == 200, record.text
    assert record.json()["state"] == "succeeded"
    assert record.json()["result"]["rows"] == 1

    # And bob finds neither her status page nor her job in the API
    bob = signed_in(stack, "bob", users["bob"])
    assert bob.get(status_url).status_code == 404
    assert bob.get(f"/offload/v1/jobs/{result_id}").status_code == 404
    assert bob.get("/offload/v1/jobs").json()["items"] == []
