"""Authentication as a host application plugs it in: an auth hook (a session cookie of the
host, a bearer token the host checks), tokens limited to kinds, and docs behind the same
auth, served offline."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException, Request, Response
from starlette.requests import HTTPConnection

from offload import App, ConfigurationError, Message, Settings
from offload.web import Admin, create_app, lifespan

pytestmark = pytest.mark.anyio
ROOT = "http://localhost"


class Export(Message):
    user_id: str


class Other(Message):
    n: int = 0


@pytest.fixture
def app(settings: Settings) -> App:
    app = App("auth", settings=settings)
    app.message("reports.export", queue="reports")(Export)
    app.message("reports.other", queue="reports")(Other)
    return app


@pytest.fixture
async def host(app: App) -> AsyncIterator[FastAPI]:
    """A user's application with a sign-in of its own, offload mounted under /jobs and
    asking the host's session cookie who is calling (a plain function: the thread pool)."""
    sessions: dict[str, str] = {}

    def signed_in_user(request: Request) -> str | None:
        return sessions.get(request.cookies.get("session", ""))

    api = FastAPI()
    api.mount("/jobs", create_app(app, auth=signed_in_user))

    @api.post("/login/{user}")
    async def login(user: str, response: Response) -> dict[str, str]:
        sid = secrets.token_urlsafe()
        sessions[sid] = user
        response.set_cookie("session", sid, httponly=True, samesite="lax")
        return {"user": user}

    async with lifespan(app):
        yield api


def client(api: FastAPI, **headers: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=api)
    return httpx.AsyncClient(transport=transport, base_url=ROOT, headers=headers)


def assert_unauthorized(answer: httpx.Response) -> None:
    assert answer.status_code == 401, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert answer.json()["type"].endswith("/unauthorized")


async def test_a_session_cookie_of_the_host_names_the_principal(host: FastAPI) -> None:
    async with client(host) as anonymous, client(host) as alice, client(host) as bob:
        # Given a caller who is not signed in to the host, the hook answers None: 401.
        assert_unauthorized(await anonymous.post("/jobs/v1/jobs/reports.export", json={}))
        assert_unauthorized(await anonymous.get("/jobs/v1/jobs"))
        await alice.post("/login/alice")
        await bob.post("/login/bob")

        # When Alice submits with her session, the job is hers;
        submitted = await alice.post("/jobs/v1/jobs/reports.export", json={"user_id": "u1"})
        assert submitted.status_code == 202, submitted.text
        location = submitted.headers["location"]
        assert (await alice.get(location)).status_code == 200
        mine = (await alice.get("/jobs/v1/jobs")).json()["items"]
        assert [r["id"] for r in mine] == [submitted.json()["id"]]

        # Then for Bob it does not exist.
        assert (await bob.get(location)).status_code == 404
        assert (await bob.get("/jobs/v1/jobs")).json()["items"] == []


async def test_a_bearer_token_checked_by_the_host_names_the_principal(app: App) -> None:
    # Given a host that checks bearer tokens itself (an async hook: its own token store);
    # the OFFLOAD_API_TOKENS of the settings do not apply once a hook is given.
    issued = {"host-token-1": "carol"}

    async def bearer(request: Request) -> str | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return issued.get(token) if scheme.lower() == "bearer" else None

    app.configure(app.settings.with_(api_tokens={"env-token": "mallory"}))
    api = FastAPI()
    api.mount("/jobs", create_app(app, auth=bearer))
    async with lifespan(app):
        async with client(api, authorization="Bearer host-token-1") as carol:
            submitted = await carol.post("/jobs/v1/jobs/reports.export", json={"user_id": "u"})
            assert submitted.status_code == 202, submitted.text
            assert (await carol.get(submitted.headers["location"])).status_code == 200
        for token in ("env-token", "wrong", ""):
            async with client(api, authorization=f"Bearer {token}") as other:
                assert_unauthorized(await other.get(submitted.headers["location"]))


async def test_a_hook_is_asked_once_per_request_and_may_be_an_object(app: App) -> None:
    class Counting:
        def __init__(self) -> None:
            self.asked = 0

        async def __call__(self, conn: HTTPConnection) -> str:
            self.asked += 1
            return "dave"

    hook = Counting()
    api = create_app(app, auth=hook)
    async with lifespan(api), client(api) as c:
        submitted = await c.post("/v1/jobs/reports.export", json={"user_id": "u"})
        assert submitted.status_code == 202 and hook.asked == 1
        assert (await c.get(submitted.headers["location"])).status_code == 200
        assert hook.asked == 2


# -- tokens limited to kinds ----------------------------------------------------------------


async def test_a_token_limited_to_kinds_finds_no_other_kind(settings: Settings) -> None:
    # Given OFFLOAD_API_TOKENS with one token for every kind and one for reports.export only,
    env = {"OFFLOAD_API_TOKENS": "t-all=alice, t-exp=exporter[reports.export]"}
    tokens = Settings.from_env(env)
    app = App("kinds", settings=settings.with_(**_tokens_of(tokens)))
    app.message("reports.export", queue="reports")(Export)
    app.message("reports.other", queue="reports")(Other)
    api = create_app(app)
    async with lifespan(app):
        async with client(api, authorization="Bearer t-exp") as limited:
            # When the limited token submits its kind, it is accepted;
            ok = await limited.post("/v1/jobs/reports.export", json={"user_id": "u"})
            assert ok.status_code == 202, ok.text
            assert (await limited.get(ok.headers["location"])).status_code == 200
            # Then another kind does not exist for it: 404, as a kind nobody declared.
            other = await limited.post("/v1/jobs/reports.other", json={"n": 1})
            unknown = await limited.post("/v1/jobs/reports.nope", json={})
            for answer in (other, unknown):
                assert answer.status_code == 404
                assert answer.headers["content-type"] == "application/problem+json"
                assert answer.json()["type"].endswith("/unknown-kind")
            # nor in its OpenAPI document: no route, and not its message's schema.
            mine = (await limited.get("/openapi.json")).json()
        async with client(api, authorization="Bearer t-all") as everything:
            answer = await everything.post("/v1/jobs/reports.other", json={"n": 1})
            assert answer.status_code == 202
            whole = (await everything.get("/openapi.json")).json()
    assert "/v1/jobs/reports.other" in whole["paths"] and "Other" in whole["components"]["schemas"]
    assert "/v1/jobs/reports.other" not in mine["paths"]
    assert "Other" not in mine["components"]["schemas"]
    assert "/v1/jobs/reports.export" in mine["paths"] and "Export" in mine["components"]["schemas"]
    assert set(whole["paths"]) - set(mine["paths"]) == {"/v1/jobs/reports.other"}
    # (every schema it refers to is still there)
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(mine)))
    assert refs <= set(mine["components"]["schemas"])


def _tokens_of(settings: Settings) -> dict[str, Any]:
    return {"api_tokens": settings.api_tokens, "token_kinds": settings.token_kinds}


# -- docs: behind the API's auth, and offline -----------------------------------------------


async def test_docs_need_the_same_auth_as_the_api(host: FastAPI, settings: Settings) -> None:
    async with client(host) as anonymous, client(host) as alice:
        assert_unauthorized(await anonymous.get("/jobs/docs"))
        assert_unauthorized(await anonymous.get("/jobs/openapi.json"))
        await alice.post("/login/alice")
        assert (await alice.get("/jobs/docs")).status_code == 200
        assert (await alice.get("/jobs/openapi.json")).status_code == 200

    tokens = App("tokens", settings=settings.with_(api_tokens={"tok": "alice"}))
    api = create_app(tokens)
    async with client(api) as anonymous, client(api, authorization="Bearer tok") as alice:
        assert_unauthorized(await anonymous.get("/docs"))
        assert_unauthorized(await anonymous.get("/openapi.json"))
        assert (await alice.get("/docs")).status_code == 200
        assert (await alice.get("/openapi.json")).json()["info"]["title"] == "offload: tokens"


async def test_docs_are_open_in_development_mode_and_load_nothing_from_elsewhere(
    app: App,
) -> None:
    api = create_app(app)  # no hook, no tokens: development mode
    async with client(api) as c:
        page = await c.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        # Never framed by another page (its requests carry the caller's cookies); its own
        # origin's files only (the browser test runs Swagger UI under this policy).
        assert page.headers["x-frame-options"] == "DENY"
        policy = page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "default-src 'self'" in policy
        # No external host: every URL in the page is a path of this server.
        assert not re.search(r"https?:|//[a-z]", page.text, re.IGNORECASE)
        assert '"validatorUrl": null' in page.text  # Swagger UI's badge would call out
        urls = re.findall(r"""(?:src|href)="([^"]+)"|url: '([^']+)'""", page.text)
        assets = [a or b for a, b in urls]
        assert sorted(assets) == [
            "/docs/assets/favicon.png",
            "/docs/assets/swagger-ui-bundle.js",
            "/docs/assets/swagger-ui.css",
            "/openapi.json",
        ]
        # And each of them loads.
        kinds = {".js": "javascript", ".css": "text/css", ".png": "image/png", "json": "json"}
        for url in assets:
            answer = await c.get(url)
            assert answer.status_code == 200, url
            expected = next(v for k, v in kinds.items() if url.endswith(k))
            assert expected in answer.headers["content-type"] and len(answer.content) > 100
        bundle = (await c.get("/docs/assets/swagger-ui-bundle.js")).text
        assert "SwaggerUIBundle" in bundle


async def test_a_hook_may_refuse_with_a_challenge_of_its_own(app: App) -> None:
    def basic_only(request: Request) -> str | None:
        if request.headers.get("authorization") != "Basic ZXZlOnB3":
            raise HTTPException(401, "sign in", headers={"WWW-Authenticate": 'Basic realm="x"'})
        return "eve"

    api = create_app(app, auth=basic_only)
    async with lifespan(api), client(api) as c:
        refused = await c.get("/v1/jobs")
        assert (
            refused.status_code == 401 and refused.headers["www-authenticate"] == 'Basic realm="x"'
        )
        assert refused.headers["content-type"] == "application/problem+json"
        assert (
            await c.get("/v1/jobs", headers={"authorization": "Basic ZXZlOnB3"})
        ).status_code == 200


async def test_a_principal_that_offload_keeps_for_its_own_jobs_is_refused(
    host: FastAPI, app: App
) -> None:
    # Given deliveries owned by `offload.notify` (a webhook's, as the notifier enqueues it),
    (delivery, _) = await app.submit(app.envelope(Export(user_id="u"), owner="offload.notify"))
    async with client(host) as impostor, client(host) as alice:
        # when the host's sign-in names a user `offload.notify` (a name users choose),
        await impostor.post("/login/offload.notify")
        await alice.post("/login/alice")
        # then every route refuses that caller, saying why (the hook's answer is logged),
        for method, path in [
            ("GET", "/jobs/v1/jobs"),
            ("GET", f"/jobs/v1/jobs/{delivery.id}"),
            ("DELETE", f"/jobs/v1/jobs/{delivery.id}"),
            ("GET", "/jobs/v1/events?since=0"),
            ("POST", "/jobs/v1/ws-ticket"),
            ("POST", "/jobs/v1/jobs/reports.export"),
        ]:
            refused = await impostor.request(method, path, json={"user_id": "u"})
            assert_unauthorized(refused)
            assert "'offload.notify' is reserved" in refused.json()["detail"], path
        # and the delivery is untouched, while other callers are served as ever.
        row = await app.get(delivery.id)
        assert row is not None and row.state.value == "queued"
        assert (await alice.get("/jobs/v1/jobs")).status_code == 200


@pytest.mark.parametrize("answer", ["", " ", Admin("")])
async def test_a_hook_that_answers_an_empty_principal_names_no_one(app: App, answer: str) -> None:
    # Given a hook that falls back on "" for a caller it does not know (a host's
    # `request.cookies.get("user", "")`), where two such callers would share one owner,
    api = create_app(app, auth=lambda request: answer)
    async with lifespan(api), client(api) as c:
        # then the caller is not signed in: 401 on every route, as for None,
        for method, path in [
            ("POST", "/v1/jobs/reports.export"),
            ("GET", "/v1/jobs"),
            ("POST", "/v1/ws-ticket"),
            ("GET", "/v1/events?since=0"),
        ]:
            refused = await c.request(method, path, json={"user_id": "u"})
            assert_unauthorized(refused)
            assert refused.json()["detail"] == "authentication is required"
        assert (await c.get("/v1/workers")).status_code == 404  # and no operator
        # and nothing was stored.
        assert await app.list_jobs(owner=None) == []


@pytest.mark.parametrize("answer", ["user:1\n", " bob", "bob\t", "a\x00b", Admin("root ")])
async def test_a_principal_with_control_characters_or_white_space_around_is_refused(
    app: App, answer: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a hook that answers a name with a line end or a blank kept from its source,
    api = create_app(app, auth=lambda request: answer)
    async with lifespan(api), client(api) as c:
        # then the caller is refused, saying why, the hook's answer logged for the operator,
        refused = await c.post("/v1/jobs/reports.export", json={"user_id": "u"})
        assert_unauthorized(refused)
        assert refused.json()["detail"] == (
            "the auth hook named no valid principal: a principal must be printable text "
            f"with no white space around it, not {answer!r}"
        )
        assert any(repr(answer) in r.getMessage() for r in caplog.records)
        assert_unauthorized(await c.get("/v1/jobs"))
        assert (await c.get("/v1/workers")).status_code == 404
    # and nothing was stored.
    assert await app.list_jobs(owner=None) == []


async def test_a_principal_too_long_to_own_jobs_is_refused(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    # A principal of a thousand characters failed its enqueues on PostgreSQL alone (a 503).
    answer = "u" * 100_000
    api = create_app(app, auth=lambda request: answer)
    async with lifespan(api), client(api) as c:
        refused = await c.post("/v1/jobs/reports.export", json={"user_id": "u"})
        assert_unauthorized(refused)
        assert refused.json()["detail"] == (
            "the auth hook named no valid principal: a principal is 100000 characters: it "
            "may have at most 255"
        )
        assert_unauthorized(await c.get("/v1/jobs"))
    assert await app.list_jobs(owner=None) == []
    logged = [r.getMessage() for r in caplog.records if "no caller may be" in r.getMessage()]
    assert logged and all(len(line) < 500 for line in logged)  # (the name cut short)
    # and one under offload's own names is told so as briefly.
    api = create_app(app, auth=lambda request: "offload." + answer)
    async with lifespan(api), client(api) as c:
        refused = await c.post("/v1/jobs/reports.export", json={"user_id": "u"})
        assert_unauthorized(refused)
        assert len(refused.content) < 1000 and "at most 255" in refused.json()["detail"]


async def test_an_admin_named_as_offload_own_jobs_is_nobody(app: App) -> None:
    def hook(request: Request) -> str:
        return Admin("offload.periodic")

    api = create_app(app, auth=hook)
    async with lifespan(api), client(api) as c:
        assert_unauthorized(await c.get("/v1/jobs"))
        assert (await c.get("/v1/workers")).status_code == 404  # the operators' routes


@pytest.mark.parametrize("principal", ["al\tice", "bob\x00", "caf\u00e9\u200b"])
def test_api_tokens_may_not_name_a_principal_with_a_control_character(principal: str) -> None:
    with pytest.raises(ConfigurationError, match="a principal must be printable text"):
        Settings.from_env({"OFFLOAD_API_TOKENS": f"t1=alice,t2={principal}"})


@pytest.mark.parametrize("principal", ["offload.notify", "offload.periodic", "offload.x[a]"])
def test_api_tokens_may_not_name_a_principal_offload_keeps(principal: str) -> None:
    with pytest.raises(ConfigurationError, match=r"'offload\.[a-z]+' is reserved"):
        Settings.from_env({"OFFLOAD_API_TOKENS": f"t1=alice,t2={principal}"})
