"""Who is an operator: OFFLOAD_ADMIN_PRINCIPALS, an auth hook's `Admin(name)`, or `local`
in development mode; everyone else finds the operators' routes absent."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from offload.settings import Settings
from offload.web import Admin
from offload.web.auth import Auth


def _request(token: str | None = None) -> Request:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers})


def test_admin_principals_come_from_the_environment() -> None:
    settings = Settings.from_env({"OFFLOAD_ADMIN_PRINCIPALS": " ops , alice,,"})
    assert settings.admin_principals == frozenset({"ops", "alice"})
    assert Settings.from_env({}).admin_principals == frozenset()
    assert Settings.from_env({"OFFLOAD_DASHBOARD_READONLY": "1"}).dashboard_readonly


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("token", "admin"), [("t-ops", True), ("t-bob", False), ("wrong", False), (None, False)]
)
async def test_token_principals_listed_as_admins_are_admins(token: str | None, admin: bool) -> None:
    settings = Settings.from_env(
        {"OFFLOAD_API_TOKENS": "t-ops=ops,t-bob=bob", "OFFLOAD_ADMIN_PRINCIPALS": "ops"}
    )
    auth = Auth(None, settings)
    request = _request(token)
    await auth.authenticate(request)
    assert auth.is_admin(request) is admin


@pytest.mark.anyio
async def test_an_auth_hook_makes_an_admin_by_answering_admin() -> None:
    settings = Settings.from_env({})
    for answer, admin in ((Admin("carol"), True), ("carol", False), (None, False)):
        auth = Auth(lambda request, answer=answer: answer, settings)
        request = _request()
        await auth.authenticate(request)
        assert auth.is_admin(request) is admin
        if answer is not None:
            assert auth.principal(request) == "carol"  # an Admin is its name everywhere else


@pytest.mark.anyio
async def test_development_mode_makes_the_local_principal_an_admin() -> None:
    auth = Auth(None, Settings.from_env({}))
    request = _request()
    await auth.authenticate(request)
    assert auth.is_admin(request)
    # a hook's plain `local` is just a principal of that name
    hooked = Auth(lambda request: "local", Settings.from_env({}))
    await hooked.authenticate(request)
    assert not hooked.is_admin(request)


def test_a_request_not_authenticated_is_no_admin() -> None:
    assert not Auth(None, Settings.from_env({})).is_admin(_request())
