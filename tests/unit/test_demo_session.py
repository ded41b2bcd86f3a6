"""Demo sign-in: signed session cookies, CSRF tokens, and the API's cookie authentication."""

from __future__ import annotations

import pytest
from starlette.requests import HTTPConnection

from offload.demo.session import SESSION_COOKIE, SessionAuth, Sessions
from offload.settings import Settings
from offload.web.auth import TokenAuth
from offload.web.problems import Problem

KEY = b"k" * 32


def conn(cookie: str | None = None, method: str = "GET", auth: str | None = None) -> HTTPConnection:
    headers = []
    if cookie is not None:
        headers.append((b"cookie", f"{SESSION_COOKIE}={cookie}".encode()))
    if auth is not None:
        headers.append((b"authorization", auth.encode()))
    return HTTPConnection({"type": "http", "method": method, "headers": headers})


def test_a_session_names_its_user() -> None:
    sessions = Sessions(KEY)
    user = sessions.user(conn(sessions.issue("bob")))
    assert user is not None and user.id == "bob"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda v: v.replace("alice", "bob", 1),  # another user, same signature
        lambda v: v[:-2] + "xx",  # a broken signature
        lambda v: "mallory" + v[5:],  # no such user
        lambda v: "",
        lambda v: "alice..",
    ],
)
def test_forged_cookies_are_ignored(tamper: object) -> None:
    sessions = Sessions(KEY)
    value = sessions.issue("alice")
    assert callable(tamper)
    assert sessions.user(conn(tamper(value))) is None


def test_expired_and_foreign_sessions_are_ignored() -> None:
    sessions = Sessions(KEY, ttl_s=60)
    value = sessions.issue("alice", now=1000.0)
    assert sessions.user(conn(value), now=1059.0) is not None
    assert sessions.user(conn(value), now=1061.0) is None
    assert Sessions(b"other" * 8).user(conn(value), now=1000.0) is None


def test_csrf_token_is_bound_to_the_session() -> None:
    sessions = Sessions(KEY)
    alice, bob = conn(sessions.issue("alice")), conn(sessions.issue("bob"))
    token = sessions.csrf(alice)
    assert sessions.check_csrf(alice, token)
    assert not sessions.check_csrf(bob, token)
    assert not sessions.check_csrf(alice, None)
    assert not sessions.check_csrf(alice, "")


def test_api_auth_uses_the_cookie_for_reads_only() -> None:
    sessions = Sessions(KEY)
    auth = SessionAuth(sessions, TokenAuth(Settings()))
    cookie = sessions.issue("carol")
    assert auth.principal(conn(cookie)) == "carol"
    assert auth.principal(conn(cookie, method="HEAD")) == "carol"
    assert auth.principal(conn(cookie, method="POST")) == "local"  # development mode
    assert auth.principal(conn(None)) == "local"


def test_api_auth_prefers_a_bearer_token() -> None:
    sessions = Sessions(KEY)
    auth = SessionAuth(sessions, TokenAuth(Settings(api_tokens={"t1": "ops"})))
    cookie = sessions.issue("carol")
    assert auth.principal(conn(cookie, auth="Bearer t1")) == "ops"
    with pytest.raises(Problem) as refused:
        auth.principal(conn(cookie, auth="Bearer wrong"))
    assert refused.value.status == 401
    with pytest.raises(Problem):
        auth.principal(conn(cookie, method="DELETE"))
