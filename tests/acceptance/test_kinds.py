"""GET /v1/kinds: what a client may post, with each kind's version, queue and the JSON Schema
of its body (never a field the server fills from the caller), as the OpenAPI document says."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import Field

from offload import App, FromPrincipal, Message, Settings
from offload.web import create_app, lifespan

pytestmark = pytest.mark.anyio
ROOT = "http://localhost"


class Export(Message):
    """Render a report."""

    user_id: Annotated[str, FromPrincipal()]
    period: str = Field(pattern=r"^\d{4}$")
    pages: int = 1


class Resize(Message):
    image: str


class Confirm(Message):
    user_id: str


@pytest.fixture
def declare() -> Any:
    def declare(app: App) -> App:
        app.message("reports.export", version=3, queue="reports")(Export)
        app.message("images.resize", queue="images", fair=True)(Resize)
        app.message("mail.confirm", queue="mail", http=False)(Confirm)
        return app

    return declare


def client(api: FastAPI, **headers: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=api)
    return httpx.AsyncClient(transport=transport, base_url=ROOT, headers=headers)


async def test_kinds_lists_what_a_client_may_post_with_the_schema_it_must_meet(
    app: App, declare: Any
) -> None:
    api = create_app(declare(app))
    async with lifespan(app), client(api) as c:
        answer = await c.get("/v1/kinds")
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/json"
        kinds = answer.json()["kinds"]
        # Kinds off the API (http=False) are not listed; the others sorted by kind.
        assert [k["kind"] for k in kinds] == ["images.resize", "reports.export"]
        export = kinds[1]
        assert (export["version"], export["queue"]) == (3, "reports")
        # A fair queue's kind says so (its jobs are claimed in turn across owners).
        assert (kinds[0]["fair"], export["fair"]) == (True, False)
        assert export["links"] == {"submit": "/v1/jobs/reports.export"}
        # The body's schema leaves out the field the server fills from the caller.
        schema = export["schema"]
        assert set(schema["properties"]) == {"period", "pages"}
        assert schema["required"] == ["period"]
        assert schema["properties"]["period"]["pattern"] == r"^\d{4}$"
        assert schema["additionalProperties"] is False
        # A body with what the schema requires is accepted, one without it refused.
        assert (await c.post("/v1/jobs/reports.export", json={"period": "2026"})).status_code == 202
        assert (await c.post("/v1/jobs/reports.export", json={"pages": 2})).status_code == 422


async def test_a_token_limited_to_kinds_sees_only_those(settings: Settings, declare: Any) -> None:
    env = Settings.from_env({"OFFLOAD_API_TOKENS": "t-all=alice, t-img=resizer[images.resize]"})
    app = declare(
        App(
            "kinds",
            settings=settings.with_(api_tokens=env.api_tokens, token_kinds=env.token_kinds),
        )
    )
    api = create_app(app)
    async with lifespan(app):
        async with client(api, authorization="Bearer t-img") as limited:
            kinds = (await limited.get("/v1/kinds")).json()["kinds"]
            assert [k["kind"] for k in kinds] == ["images.resize"]
        async with client(api, authorization="Bearer t-all") as everything:
            kinds = (await everything.get("/v1/kinds")).json()["kinds"]
            assert [k["kind"] for k in kinds] == ["images.resize", "reports.export"]
        async with client(api) as anonymous:
            answer = await anonymous.get("/v1/kinds")
            assert answer.status_code == 401
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.json()["type"].endswith("/unauthorized")


async def test_kinds_follow_the_mount_path_and_an_auth_hook(app: App, declare: Any) -> None:
    host = FastAPI()
    host.mount("/jobs", create_app(declare(app), auth=lambda request: "alice"))
    async with lifespan(app), client(host) as c:
        kinds = (await c.get("/jobs/v1/kinds")).json()["kinds"]
        assert [k["links"]["submit"] for k in kinds] == [
            "/jobs/v1/jobs/images.resize",
            "/jobs/v1/jobs/reports.export",
        ]


async def test_the_openapi_document_declares_the_answer_and_its_problems(
    app: App, declare: Any
) -> None:
    api = create_app(declare(app))
    async with client(api) as c:
        document = (await c.get("/openapi.json")).json()
    answers = document["paths"]["/v1/kinds"]["get"]["responses"]
    ok = answers["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/KindList"}
    kind = document["components"]["schemas"]["Kind"]
    assert {"kind", "version", "queue", "schema", "links"} <= set(kind["properties"])
    for status in ("401", "503"):
        problem = answers[status]["content"]["application/problem+json"]["schema"]
        if "$ref" in problem:  # the shared Problem model of every route
            problem = document["components"]["schemas"][problem["$ref"].rsplit("/", 1)[1]]
        assert {"type", "title", "status", "detail"} <= set(problem["properties"])


async def test_a_kinds_submit_link_posts_to_that_kind_whatever_its_name(app: App) -> None:
    # The link wrote the kind as it is: `%41` posted a job of kind `A`, `b#c` one of `b`.
    for n, name in enumerate(("%41", "b#c", "a?b", "x y", "A", "b")):
        app.message(name)(type(f"Kind{n}", (Message,), {"__annotations__": {"image": str}}))
    api = create_app(app)
    async with lifespan(app), client(api) as c:
        kinds = (await c.get("/v1/kinds")).json()["kinds"]
        for listed in kinds:
            answer = await c.post(listed["links"]["submit"], json={"image": "i"})
            assert answer.status_code == 202, answer.text
            assert answer.json()["kind"] == listed["kind"]
        paths = (await c.get("/openapi.json")).json()["paths"]
        assert "/v1/jobs/%2541" in paths and "/v1/jobs/b%23c" in paths


async def test_the_openapi_document_hides_kinds_a_token_may_not_post_whatever_their_name(
    settings: Settings,
) -> None:
    # The document's paths are encoded: a kind named with a space or an accent was no
    # longer hidden from a token limited to other kinds (its name and schema shown)
    env = Settings.from_env({"OFFLOAD_API_TOKENS": "t-one=alice[public.ok]"})
    app = App(
        "kinds", settings=settings.with_(api_tokens=env.api_tokens, token_kinds=env.token_kinds)
    )
    for n, name in enumerate(("public.ok", "secret payroll", "sécret", "secret#x")):
        app.message(name)(type(f"Kind{n}", (Message,), {"__annotations__": {"image": str}}))
    api = create_app(app)
    async with lifespan(app), client(api, authorization="Bearer t-one") as c:
        document = (await c.get("/openapi.json")).json()
    assert [p for p in document["paths"] if p.startswith("/v1/jobs/") and "{" not in p] == [
        "/v1/jobs/public.ok"
    ]


async def test_kinds_whose_names_differ_in_punctuation_get_operation_ids_of_their_own(
    app: App,
) -> None:
    # `mail.send` and `mail_send` both were `submit_mail_send`: the document was refused by
    # validators and client generators (twin operation ids).
    suffixed = "mail_send_" + hashlib.sha256(b"mail_send").hexdigest()[:8]
    for n, name in enumerate(("mail.send", "mail_send", "a b", "reports.export", suffixed)):
        app.message(name)(type(f"Kind{n}", (Message,), {"__annotations__": {"image": str}}))
    api = create_app(app)
    async with lifespan(app), client(api) as c:
        paths = (await c.get("/openapi.json")).json()["paths"]
    ids = [op["operationId"] for ops in paths.values() for op in ops.values()]
    assert len(ids) == len(set(ids))  # (a kind named like another's suffixed id too)
    # The kind declared first keeps its id; the later one gets digits of its hash
    assert paths["/v1/jobs/mail.send"]["post"]["operationId"] == "submit_mail_send"
    assert paths["/v1/jobs/mail_send"]["post"]["operationId"] == f"submit_{suffixed}"
    assert paths["/v1/jobs/reports.export"]["post"]["operationId"] == "submit_reports_export"
