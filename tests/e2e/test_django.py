"""A real Django 6 project on offload's django.tasks backend, on SQLite and PostgreSQL.

The project (tests/e2e/django_template) runs under uvicorn with offload's status API
mounted in its ASGI app; `manage.py offload_worker` runs its tasks. On SQLite offload has
its own file, so an enqueue waits for Django's commit (`on_commit`); on PostgreSQL offload
shares Django's database, so an enqueue joins Django's transaction.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from ..ports import free_port
from ..services import PG_URL, probe_pg, unavailable
from .conftest import SOURCES

pytest.importorskip("django", minversion="6.0")

# The first test of each engine waits for the project's set-up too (migrations, servers).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
TEMPLATE = Path(__file__).parent / "django_template"
T = TypeVar("T")


def poll(check: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    """`check()`'s first answer that is not None, within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found is not None:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Site:
    """The project folder, its database, its web server and its worker."""

    def __init__(self, root: Path, django_db: str, offload_url: str) -> None:
        self.root = root
        shutil.copytree(TEMPLATE, root, dirs_exist_ok=True)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")},
            "DJANGO_SETTINGS_MODULE": "djproj.settings",
            "DJANGO_DB": django_db,
            "OFFLOAD_URL": offload_url,
            "OFFLOAD_BLOBS_URL": str(root / "blobs"),
            "PYTHONPATH": os.pathsep.join([str(root), str(SOURCES)]),
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.port = free_port()
        self.clients: list[httpx.Client] = []

    def run(self, *args: str) -> str:
        done = subprocess.run(
            args, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        out = open(self.root / f"{name}.log", "wb")
        proc = subprocess.Popen(args, cwd=self.root, env=self.env, stdout=out, stderr=out)
        out.close()
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.root.glob("*.log"))

    def up(self) -> None:
        python = sys.executable
        self.run(python, "manage.py", "migrate", "--verbosity", "0")
        if self.env["OFFLOAD_URL"].startswith("postgresql"):
            self.run(python, "-m", "offload", "migrate", "--url", self.env["OFFLOAD_URL"])
        web = self.start(
            "web", python, "-m", "uvicorn", "djproj.asgi:application", "--port", str(self.port)
        )
        self.start("worker", python, "manage.py", "offload_worker", "--concurrency", "2")

        def ready() -> bool | None:
            assert web.poll() is None, self.logs()
            try:
                return httpx.get(f"{self.base}/", timeout=2).status_code == 200 or None
            except httpx.TransportError:
                return None

        poll(ready, "the web server")

    def down(self) -> None:
        for client in self.clients:
            client.close()
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def user(self, name: str) -> httpx.Client:
        """A browser signed in as `name` (the session cookie)."""
        client = httpx.Client(base_url=self.base, timeout=30)
        self.clients.append(client)
        assert client.get(f"/login/{name}/").status_code == 200
        return client

    def finished(
        self, client: httpx.Client, result_id: str, view: str = "results"
    ) -> dict[str, Any]:
        """The result view's answer once the task is SUCCESSFUL or FAILED."""

        def done() -> dict[str, Any] | None:
            body: dict[str, Any] = client.get(f"/{view}/{result_id}/").json()
            return body if body.get("status") in ("SUCCESSFUL", "FAILED") else None

        try:
            return poll(done, f"task result {result_id}")
        except AssertionError:
            raise AssertionError(self.logs()) from None


def _pg_database() -> Iterator[str]:
    """A database of its own on the test server, dropped at the end: its URL."""
    reason = probe_pg()
    if reason is not None:
        unavailable("PostgreSQL", reason)
    import psycopg

    name = f"offload_dj_{secrets.token_hex(4)}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(PG_URL)
    try:
        yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", ""))
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    root = tmp_path_factory.mktemp(f"django-{request.param}")
    if request.param == "sqlite":
        django_db = f"sqlite://{root / 'django.sqlite3'}"
        yield from _running(Site(root, django_db, f"sqlite:///{root / 'offload.db'}"))
        return
    for url in _pg_database():
        yield from _running(Site(root, url, url))


def _running(site: Site) -> Iterator[Site]:
    try:
        site.up()
        yield site
    finally:
        site.down()


def test_button_enqueues_and_the_view_polls_the_result(site: Site) -> None:
    # Given a signed-in user on the page with the export button
    alice = site.user("alice")
    assert "Export my report" in alice.get("/").text
    # When the button posts
    answer = alice.post("/export/", data={"task": "export_report", "period": "2026-10"})
    assert answer.status_code == 202, answer.text
    assert answer.json()["status"] == "READY"
    # Then the worker runs it (ORM and TaskContext included) and the view sees it succeed
    body = site.finished(alice, answer.json()["id"])
    assert body["status"] == "SUCCESSFUL", body
    assert body["return_value"] == {"period": "2026-10", "rows": 3, "users": 1, "attempt": 1}
    assert body["task"] == "shop.tasks.export_report"


def test_async_task_runs_in_the_worker(site: Site) -> None:
    alice = site.user("alice")
    answer = alice.post("/export/", data={"task": "async_report", "period": "q4"})
    body = site.finished(alice, answer.json()["id"])
    assert body["status"] == "SUCCESSFUL", body
    assert body["return_value"].startswith("q4:")


def test_async_views_enqueue_and_poll_with_aenqueue_and_aget_result(site: Site) -> None:
    alice = site.user("alice")
    answer = alice.post("/aexport/")
    assert answer.status_code == 202 and answer.json()["status"] == "READY"
    body = site.finished(alice, answer.json()["id"], view="aresults")
    assert body["status"] == "SUCCESSFUL" and body["return_value"].startswith("async-view:")


def test_failing_task_is_failed_with_its_exception(site: Site) -> None:
    alice = site.user("alice")
    answer = alice.post("/export/", data={"task": "broken_report"})
    body = site.finished(alice, answer.json()["id"])
    assert body["status"] == "FAILED"
    assert body["errors"] == ["builtins.ValueError"]
    # Its queue and priority travelled with it
    assert (body["queue"], body["priority"]) == ("reports", 50)


def test_rolled_back_transaction_enqueues_nothing(site: Site) -> None:
    alice = site.user("alice")
    answer = alice.post("/rollback/").json()
    assert answer["users"] == 0  # the transaction did roll back
    # On PostgreSQL the job was stored inside Django's transaction (on SQLite, offload's
    # own file waits for the commit instead)
    assert answer["inside"] == (1 if site.env["DJANGO_DB"].startswith("postgresql") else None)
    # The id enqueue answered names no job: nothing was stored, nothing will run
    assert alice.get(f"/results/{answer['id']}/").status_code == 404


def test_argument_json_cannot_carry_is_refused_by_name(site: Site) -> None:
    alice = site.user("alice")
    answer = alice.post("/export/", data={"task": "export_report", "bad": "1"})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert "shop.tasks.export_report: positional argument 0" in error
    assert "datetime.datetime is not JSON" in error


def test_mounted_status_api_answers_the_session_user_only(site: Site) -> None:
    alice, bob = site.user("alice"), site.user("bob")
    job_id = alice.post("/export/", data={"period": "2026-09"}).json()["id"]
    site.finished(alice, job_id)
    mine = alice.get(f"/offload/v1/jobs/{job_id}")
    assert mine.status_code == 200, mine.text
    assert mine.json()["state"] == "succeeded"
    assert mine.json()["links"]["self"] == f"/offload/v1/jobs/{job_id}"
    assert bob.get(f"/offload/v1/jobs/{job_id}").status_code == 404
    assert httpx.get(f"{site.base}/offload/v1/jobs/{job_id}").status_code == 401


def test_the_mounted_websocket_takes_the_session_user_or_a_ticket(site: Site) -> None:
    alice = site.user("alice")
    ws = f"ws://127.0.0.1:{site.port}/offload/v1/ws"
    session = "; ".join(f"{name}={value}" for name, value in alice.cookies.items())
    with connect(ws, additional_headers={"Cookie": session}, open_timeout=30) as signed_in:
        assert orjson.loads(signed_in.recv(timeout=30))["type"] == "hello"
    ticket = alice.post("/offload/v1/ws-ticket")
    assert ticket.status_code == 201, ticket.text
    with connect(f"{ws}?ticket={ticket.json()['ticket']}", open_timeout=30) as holder:
        assert orjson.loads(holder.recv(timeout=30))["type"] == "hello"
    with pytest.raises(InvalidStatus) as refused, connect(ws, open_timeout=30):
        pass
    assert refused.value.response.status_code == 401


CALL_COMMAND = """
import django
django.setup()
from django.core.management import CommandError, call_command
call_command("offload_worker", exit_when_idle=0.5, concurrency=2)
call_command("offload_worker", "--exit-when-idle", "0.5")
try:
    call_command("offload_worker", concurrency="many")
except CommandError as exc:
    print("refused:", exc)
print("stopped")
"""


def test_the_worker_runs_from_call_command_and_takes_djangos_own_options(site: Site) -> None:
    # A project's test runs the worker through Django's call_command, by keyword or as
    # arguments (it raised TypeError: unknown options), until it is idle;
    out = site.run(sys.executable, "-c", CALL_COMMAND)
    assert out.splitlines()[-1] == "stopped", out
    assert "refused: Invalid value for '--concurrency'" in out, out
    # and the command line takes the options every Django command takes (-v 2 was refused).
    site.run(
        sys.executable, "manage.py", "offload_worker", "-v", "2", "--traceback",
        "--exit-when-idle", "0.5",
    )  # fmt: skip
