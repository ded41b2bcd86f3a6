"""What `offload web` logs: with `--access-log`, a line per request on the `offload.access`
logger, with the client, method, path (never its query string: tickets and signatures travel
there), status, time taken and principal; a WebSocket handshake's too; without the flag,
none. And a warning when its app imports the worker's handlers."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from .conftest import TOKENS, Stack

#: An access line as offload's default logging prints it.
LINE = re.compile(
    r'offload\.access: 127\.0\.0\.1:\d+ "(?P<method>\S+) (?P<path>\S+)" (?P<status>\d+) '
    r"(?P<ms>\d+\.\d) ms (?P<principal>\S+)$"
)


@pytest.fixture
def stack(sqlite_stack: Stack) -> Stack:
    return sqlite_stack


def logged(stack: Stack) -> list[tuple[str, str, int, str]]:
    """(method, path, status, principal) of every access line so far but the readiness
    probes' (start_web's), in order."""
    found = []
    for line in stack.output().splitlines():
        if (match := LINE.search(line)) and match["path"] != "/readyz":
            found.append((match["method"], match["path"], int(match["status"]), match["principal"]))
    return found


def wait_logged(stack: Stack, count: int) -> list[tuple[str, str, int, str]]:
    """The access lines once there are `count` (each is written once its answer is sent)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if len(lines := logged(stack)) >= count:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"{count} access lines expected:\n{stack.output()}")


def test_each_request_is_logged_without_its_query_string(stack: Stack) -> None:
    stack.start_web("e2eapp.contracts:app", "--access-log")
    alice = stack.client("alice")
    # Given a submission with options in its query, a read of its record, a caller with no
    # token, and WebSocket handshakes (one accepted, one from another site, refused),
    job_id = alice.post("/v1/jobs/e2e.slow?priority=3", json={"seconds": 0}).json()["id"]
    assert alice.get(f"/v1/jobs/{job_id}", params={"secret": "s3cr3t"}).status_code == 200
    assert httpx.get(f"{stack.base}/v1/jobs/{job_id}").status_code == 401
    ws = stack.base.replace("http://", "ws://") + "/v1/ws"
    bearer = {"Authorization": f"Bearer {TOKENS['alice']}"}
    with connect(ws, additional_headers=bearer):
        pass
    with pytest.raises(InvalidStatus):
        connect(ws, additional_headers=bearer, origin="https://elsewhere.example")  # type: ignore[arg-type]
    # then each has its line: method, path without the query, status and principal.
    lines = wait_logged(stack, 5)
    assert lines[:3] == [
        ("POST", "/v1/jobs/e2e.slow", 202, "alice"),
        ("GET", f"/v1/jobs/{job_id}", 200, "alice"),
        ("GET", f"/v1/jobs/{job_id}", 401, "-"),
    ]
    assert sorted(lines[3:]) == [("WS", "/v1/ws", 101, "alice"), ("WS", "/v1/ws", 403, "-")]
    assert "s3cr3t" not in stack.output() and "priority=3" not in stack.output()
    # A stream opened with a ticket is logged with the ticket's holder,
    ticket = alice.post("/v1/ws-ticket").json()["ticket"]
    with connect(f"{ws}?ticket={ticket}"):
        pass
    deadline = time.monotonic() + 30
    while logged(stack).count(("WS", "/v1/ws", 101, "alice")) < 2:  # the bearer's, the ticket's
        assert time.monotonic() < deadline, stack.output()
        time.sleep(0.05)
    assert ticket not in stack.output()
    # and a path cannot forge a line or a field: it is logged as sent, its line break and
    # quotes escaped.
    forged = '/x%0A10.0.0.9:1 "DELETE /v1/jobs/1" 204 1.0 ms alice'.replace(" ", "%20")
    assert alice.get(forged.replace('"', "%22")).status_code == 404
    escaped = forged.replace('"', "%22")
    lines = wait_logged(stack, 8)
    assert ("GET", escaped, 404, "-") in lines  # (no route: nobody was asked who called)
    assert not any(line[0] == "DELETE" for line in lines)
    assert not any(line.startswith("10.0.0.9") for line in stack.output().splitlines())


def test_no_access_log_unless_asked(stack: Stack) -> None:
    stack.start_web()
    assert stack.client("alice").get("/v1/jobs").status_code == 200
    assert "offload.access" not in stack.output()


def test_a_web_tier_given_the_workers_app_says_so(stack: Stack) -> None:
    stack.start_web("e2eapp.handlers:app")  # the worker's module: it imports the handlers
    assert "the web tier does not need" in stack.output()
    assert "e2e.slow" in stack.output()


def test_a_web_tier_given_the_contracts_says_nothing_of_handlers(stack: Stack) -> None:
    stack.start_web()
    assert "the web tier does not need" not in stack.output()
