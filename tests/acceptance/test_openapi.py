"""The OpenAPI document tells the truth: schemathesis sends what the document allows (and
what it does not) to the web tier in process, in development mode and with API tokens, and
every answer is one the document declares: its status code, its media type, its headers
and its body, member for member. Jobs in every state give the cases real ids."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jsonschema_rs
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from pydantic import Field
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.python import asgi

from offload import App, Context, FromPrincipal, JobState, Message, Settings
from offload._options import LATEST_RUN_AT
from offload.notify.targets import callback_url_refusal, delivery_option_errors
from offload.web import create_app, lifespan
from offload.web.openapi import OPERATION_IDS
from offload.worker.runner import Worker
from tests.receivers import Receiver

TOKEN = "tok-alice"
BASE = "http://localhost"
ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


class Export(Message):
    """A report to render."""

    user_id: Annotated[str, Field(max_length=64)]
    period: str


class Mine(Message):
    """A note of the caller's."""

    owner: Annotated[str, FromPrincipal()]
    note: str = ""


class Internal(Message):
    n: int


#: schemathesis: every check it has by default, over its examples, coverage and fuzzing
#: phases, a few cases per operation, the same ones each run.
CONFIG: dict[str, Any] = {
    "seed": 1,
    # schemathesis's own Host (testserver) is no loopback name: development mode answers 421
    "headers": {"Host": "localhost"},
    "phases": {
        "examples": {"enabled": True},
        "coverage": {"enabled": True},
        "fuzzing": {"enabled": True},
        "stateful": {"enabled": False},
    },
    "generation": {"mode": "all", "max-examples": 10, "deterministic": True},
    "request-timeout": 60,  # a safety net: every answer here ends (see `_streams_cut`)
    "operations": [
        {
            # POST /v1/jobs/<kind>: GET and DELETE there ask for the job of that id (there is
            # none: 404), where schemathesis, seeing no GET in the document, expects 405.
            "include-path-regex": "^/v1/jobs/[^{/]+$",
            "phases": {"coverage": {"unexpected-methods": ["put", "patch", "trace", "options"]}},
        },
        {
            # The operators' routes: to anyone else every method finds nothing there (404,
            # as for a path that does not exist), where schemathesis expects 405.
            "include-path-regex": "^/(v1/workers|v1/schedules|metrics)$",
            "checks": {"unsupported_method": {"enabled": False}},
        },
    ],
}


def _app(tmp_path: Path, mode: str, url: str | None = None) -> App:
    settings_ = Settings(
        url=url or f"sqlite:///{tmp_path / 'jobs.db'}",
        blobs_url=str(tmp_path / "blobs"),
        secret_key=b"test-secret-of-32-bytes-or-more!",
        api_tokens={TOKEN: "alice"} if mode == "tokens" else {},
        webhook_allow_private=True,  # the webhook receiver of the seeded jobs is on loopback
    )
    app = App("openapi", settings=settings_)
    app.message("reports.export", queue="reports")(Export)
    app.message("notes.mine", queue="notes")(Mine)
    app.message("internal.only", http=False)(Internal)

    @app.handles(Export, max_attempts=1)
    async def export(msg: Export, ctx: Context) -> dict[str, Any]:
        if msg.period == "never":
            raise ValueError("no such period")
        await ctx.progress(0.5, "rendering")
        return {"pdf": await ctx.blobs.put(f"reports/{ctx.job_id}.pdf", b"%PDF-1.4")}

    @app.handles(Mine)
    async def mine(msg: Mine, ctx: Context) -> dict[str, Any]:
        return {"owner": msg.owner, "words": len(msg.note.split())}

    return app


def _client(app: App, headers: dict[str, str], api: ASGIApp | None = None) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=api or create_app(app))
    return httpx.AsyncClient(transport=transport, base_url=BASE, headers=headers)


async def _finished(client: httpx.AsyncClient, job_id: str, *, notified: bool) -> None:
    async with asyncio.timeout(60):
        while True:
            record = (await client.get(f"/v1/jobs/{job_id}")).json()
            if JobState(record["state"]).final and (record["deliveries"] or not notified):
                return
            await asyncio.sleep(0.02)


async def _seed(app: App, headers: dict[str, str]) -> dict[str, str]:
    """Jobs in every kind of state, submitted over HTTP and run by a worker: their ids."""
    with Receiver() as receiver:
        async with lifespan(app), _client(app, headers) as client:

            async def submit(kind: str, body: dict[str, Any], **query: Any) -> str:
                answer = await client.post(f"/v1/jobs/{kind}", json=body, params=query)
                assert answer.status_code == 202, answer.text
                job_id: str = answer.json()["id"]
                return job_id

            ids = {
                "file": await submit("reports.export", {"user_id": "u1", "period": "2026-10"}),
                "json": await submit("notes.mine", {"note": "two words"}),
                "dead": await submit("reports.export", {"user_id": "u1", "period": "never"}),
                "waiting": await submit("notes.mine", {}, delay=3600),
                "notified": await submit("notes.mine", {}, callback_url=receiver.url),
            }
            worker = Worker(app)
            task = asyncio.create_task(worker.run())
            try:
                for name, job_id in ids.items():
                    if name != "waiting":
                        await _finished(client, job_id, notified=name == "notified")
            finally:
                worker.request_stop()
                await asyncio.wait_for(task, 30)
    return ids


@dataclass
class Seeded:
    """A web tier's App with jobs in every state, and how to call it."""

    app: App
    mode: str
    ids: dict[str, str]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"} if self.mode == "tokens" else {}


@pytest.fixture(params=["dev", "tokens"])
def seeded(request: pytest.FixtureRequest, tmp_path: Path) -> Seeded:
    mode = request.param
    headers = {"Authorization": f"Bearer {TOKEN}"} if mode == "tokens" else {}
    app = _app(tmp_path, mode)
    return Seeded(app, mode, asyncio.run(_seed(app, headers)))


def _closed(node: Any) -> Any:
    """A schema with every object that does not say otherwise closed to members it does not
    name (the document leaves them open, as a client should read them)."""
    if isinstance(node, list):
        return [_closed(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _closed(value) for key, value in node.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


class Declared:
    """What the document declares of each answer, objects closed: offload's answers carry
    exactly the members it names."""

    JSON = ("application/json", "application/problem+json")

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = _closed(copy.deepcopy(document))
        self.validators: dict[tuple[str, ...], jsonschema_rs.Validator] = {}

    def schema(self, path: str, method: str, status: int, media: str) -> Any:
        """The declared schema of an answer (None: undeclared)."""
        answers = self.document["paths"][path][method.lower()]["responses"]
        content = answers.get(str(status), {}).get("content", {})
        return content.get(media, {}).get("schema")

    def errors(self, schema: dict[str, Any], value: Any) -> list[str]:
        key = (orjson.dumps(schema).decode(),)
        if key not in self.validators:
            root = {**schema, "components": self.document["components"]}
            self.validators[key] = jsonschema_rs.validator_for(root)
        return [error.message for error in self.validators[key].iter_errors(value)]

    def check(self, path: str, method: str, response: httpx.Response) -> None:
        """`response` is declared, member for member."""
        answers = self.document["paths"][path][method.lower()]["responses"]
        assert str(response.status_code) in answers, f"{method} {path}: {response.status_code}"
        media = response.headers.get("content-type", "").partition(";")[0]
        if method.upper() == "HEAD":  # GET's headers, and no body
            assert not response.content, f"HEAD {path}: a body"
            return
        if media not in self.JSON:
            return
        schema = self.schema(path, method, response.status_code, media)
        assert schema is not None, f"{method} {path}: {response.status_code} {media} undeclared"
        errors = self.errors(schema, response.json())
        assert not errors, f"{method} {path} {response.status_code}: {errors}"

    def schemathesis_check(self) -> Callable[..., None]:
        """The same, as a schemathesis check."""

        def exact_answer(ctx: Any, response: Any, case: Any) -> None:
            media = (response.headers.get("content-type") or [""])[0].partition(";")[0]
            path, method = case.operation.path, case.operation.method
            # Other methods are unsupported_method's; undeclared answers the conformance checks'.
            if media not in self.JSON or case.method.lower() != method.lower():
                return
            if method.upper() == "HEAD":  # no body to read
                assert not response.content, f"HEAD {path}: a body"
                return
            schema = self.schema(path, method, response.status_code, media)
            if schema is not None:
                errors = self.errors(schema, response.json())
                assert not errors, f"members the document does not declare: {errors}"

        return exact_answer


def _streams_cut(app: ASGIApp, enough: Callable[[bytes], bool] = bool) -> ASGIApp:
    """The app, each event stream ending once `enough(what it sent)` (by default, after its
    first block): a client of the test reads an answer to its end, and the stream of a
    waiting job, or of all the caller's jobs, has none."""

    async def cut(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        stream, ended, sent = False, False, b""

        async def until_enough(message: dict[str, Any]) -> None:
            nonlocal stream, ended, sent
            if ended:
                return
            if message["type"] == "http.response.start":
                types = [v for k, v in message["headers"] if k.lower() == b"content-type"]
                stream = any(v.startswith(b"text/event-stream") for v in types)
            elif stream and message.get("more_body"):
                sent += message.get("body", b"")
                if enough(sent):
                    message, ended = {**message, "more_body": False}, True
            await send(message)  # after the last, the app reads a disconnect: its stream stops

        await app(scope, receive, until_enough)

    return cut


def _within_option_rules(allow_private: bool) -> Callable[..., Any]:
    """A schemathesis hook: a valid submission keeps to the rules of job options that the
    document states in words only (delay or run_at, not both; a callback URL is an http(s)
    URL of a host webhooks may reach; an email address is one). schemathesis cannot know
    them, so each valid case it makes drops an option that breaks one."""

    def repair(ctx: Any, case: Any) -> Any:
        positive = case.meta is not None and case.meta.generation.mode is GenerationMode.POSITIVE
        if not positive or case.method != "POST" or not case.query:
            return case
        query = case.query
        if query.get("delay") is not None:
            query.pop("run_at", None)
        with contextlib.suppress(KeyError, TypeError, ValueError):  # past year 9999: refused
            if datetime.fromisoformat(query["run_at"]).timestamp() > LATEST_RUN_AT:
                query.pop("run_at")
        bad = delivery_option_errors(query.get("callback_url"), query.get("notify_email"))
        url = query.get("callback_url")
        if url and not bad.get("callback_url"):
            if callback_url_refusal(url, allow_private=allow_private):
                bad["callback_url"] = "refused"
        for name in bad:
            query.pop(name, None)
        return case

    return repair


def _with_real_jobs(ids: dict[str, str], link: str) -> Callable[..., Any]:
    """A schemathesis hook: besides made-up ids, cases about the seeded jobs, and with the
    signed link of a result file."""
    jobs = sorted(ids.values())
    parts = urlsplit(link)
    signed = {k: v[0] for k, v in parse_qs(parts.query).items()}

    def job(case: Any, job_id: str) -> Any:
        case.path_parameters["job_id"] = job_id
        return case

    def file(case: Any) -> Any:
        case.path_parameters["key"] = parts.path.removeprefix("/files/")
        case.query = {**(case.query or {}), **signed}
        return case

    def with_real(ctx: Any, strategy: Any) -> Any:
        path = ctx.operation.path
        if "{job_id}" in path:
            return st.one_of(strategy, st.builds(job, strategy, st.sampled_from(jobs)))
        if path == "/files/{key}":
            return st.one_of(strategy, strategy.map(file))
        return strategy

    return with_real


async def _result_link(seeded: Seeded) -> str:
    async with lifespan(seeded.app), _client(seeded.app, seeded.headers) as client:
        answer = await client.get(f"/v1/jobs/{seeded.ids['file']}/result")
        location: str = answer.headers["location"]
        return location


@pytest.fixture
def api_schema(seeded: Seeded) -> Iterator[Any]:
    """The document the web tier serves, as schemathesis loads it, and hooks that give its
    cases the seeded jobs."""
    link = asyncio.run(_result_link(seeded))
    auth = {"auth": {"openapi": {"bearer": {"bearer": TOKEN}}}} if seeded.mode == "tokens" else {}
    config = SchemathesisConfig.from_dict({**CONFIG, **auth})
    api = _streams_cut(create_app(seeded.app))
    try:
        schema = schemathesis.openapi.from_asgi(
            "/openapi.json", api, config=config, headers={**seeded.headers, "Host": "localhost"}
        )
        allow_private = seeded.app.settings.webhook_allow_private
        schema.hook("map_case")(_within_option_rules(allow_private))
        schema.hook("before_generate_case")(_with_real_jobs(seeded.ids, link))
        yield schema
    finally:
        asgi.shutdown_lifespans()


@pytest.fixture
def exact_answer(api_schema: Any) -> Callable[..., None]:
    return Declared(api_schema.raw_schema).schemathesis_check()


@pytest.fixture(autouse=True)
def _nodeid_compat(request: pytest.FixtureRequest) -> None:
    # schemathesis 4.32's from_fixture reads Node._nodeid, which pytest 9.2 no longer has
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_every_answer_is_declared(case: Any, exact_answer: Callable[..., None]) -> None:
    case.call_and_validate(additional_checks=[exact_answer])


# -- the seeded jobs, each asked about: every answer as declared, events included -----------


def _events(body: bytes) -> list[dict[str, str]]:
    """The events of a stream that carry data, each a dict of its fields."""
    events = []
    for block in body.decode().split("\n\n"):
        fields = dict(line.partition(": ")[::2] for line in block.splitlines() if line)
        if "data" in fields:
            events.append(fields)
    return events


def _check_events(declared: Declared, path: str, answer: httpx.Response) -> list[str]:
    """The states of the stream's events, each event as declared, its record too."""
    assert answer.headers["content-type"].startswith("text/event-stream")
    event = declared.schema(path, "GET", 200, "text/event-stream")
    record = {"$ref": "#/components/schemas/StatusRecord"}
    events = _events(answer.content)
    for fields in events:
        assert not declared.errors(event, fields), fields
        assert not declared.errors(record, orjson.loads(fields["data"])), fields["data"]
    return [fields["event"] for fields in events]


def _both_ends(body: bytes) -> bool:
    return b"event: succeeded" in body and b"event: dead" in body


@pytest.mark.anyio
async def test_the_seeded_jobs_answer_as_declared(seeded: Seeded) -> None:
    api = _streams_cut(create_app(seeded.app), enough=_both_ends)
    async with lifespan(seeded.app), _client(seeded.app, seeded.headers, api) as client:
        declared = Declared((await client.get("/openapi.json")).json())
        records = {}
        for name, job_id in seeded.ids.items():
            answer = await client.get(f"/v1/jobs/{job_id}")
            declared.check("/v1/jobs/{job_id}", "GET", answer)
            records[name] = answer.json()
            answer = await client.get(f"/v1/jobs/{job_id}/result")
            declared.check("/v1/jobs/{job_id}/result", "GET", answer)
            if name != "waiting":  # a waiting job's stream goes on
                path = "/v1/jobs/{job_id}/events"
                states = _check_events(
                    declared, path, await client.get(f"/v1/jobs/{job_id}/events")
                )
                assert JobState(states[-1]).final
        assert records["file"]["progress"] and records["dead"]["error"]
        assert records["notified"]["deliveries"][0]["attempts"]
        assert "succeeded" in _check_events(
            declared, "/v1/events", await client.get("/v1/events", params={"since": 0})
        )
        declared.check("/v1/jobs", "GET", await client.get("/v1/jobs", params={"limit": 2}))
        declared.check("/v1/queues", "GET", await client.get("/v1/queues"))
        for status in (200, 409):  # cancelled, then already final
            answer = await client.delete(f"/v1/jobs/{seeded.ids['waiting']}")
            assert answer.status_code == status
            declared.check("/v1/jobs/{job_id}", "DELETE", answer)


@pytest.mark.anyio
async def test_the_probes_answer_head_as_get_without_a_body(tmp_path: Path) -> None:
    # Given a web tier with API tokens set (the probes need none),
    app = _app(tmp_path, "tokens")
    declared = Declared(create_app(app).openapi())
    async with lifespan(app), _client(app, {}) as client:
        # when an uptime monitor asks with HEAD, each probe answers as to GET, with no body.
        for path in ("/healthz", "/readyz"):
            got, head = await client.get(path), await client.head(path)
            assert head.status_code == got.status_code == 200, (path, head.text)
            assert head.headers["content-length"] == got.headers["content-length"]
            assert head.content == b""
            declared.check(path, "HEAD", head)


@pytest.mark.anyio
async def test_while_the_backend_is_unreachable_every_answer_is_the_declared_503(
    tmp_path: Path,
) -> None:
    pytest.importorskip("redis")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    app = _app(tmp_path, "dev", url=f"redis://127.0.0.1:{port}/0")
    async with _client(app, {}) as client:  # no lifespan: it opens on first use, and fails
        declared = Declared((await client.get("/openapi.json")).json())
        for path, item in declared.document["paths"].items():
            for method in set(item) - (
                {"get", "head"} if path in ("/healthz", "/files/{key}") else set()
            ):
                body = {"user_id": "u1", "period": "p"} if method == "post" else None
                answer = await client.request(method, path.format(job_id="j1"), json=body)
                if path == "/metrics":  # this process's counters, and the gauges said missing
                    assert answer.status_code == 200, answer.text
                    assert "offload_queue_stats_up 0.0" in answer.text
                    declared.check(path, method, answer)
                    continue
                assert answer.status_code == 503, (method, path, answer.text)
                assert str(port) not in answer.text, (method, path, answer.text)  # no address
                assert answer.headers["retry-after"] == "5"
                declared.check(path, method, answer)


# -- what the document says of kinds, errors and credentials ---------------------------------


def test_each_kind_a_client_may_submit_is_an_operation_with_its_message_as_body(
    tmp_path: Path,
) -> None:
    document = create_app(_app(tmp_path, "dev")).openapi()
    paths, schemas = document["paths"], document["components"]["schemas"]
    submits = sorted(path for path, item in paths.items() if "post" in item)
    assert submits == ["/v1/jobs/notes.mine", "/v1/jobs/reports.export", "/v1/ws-ticket"]
    bodies = {
        path: paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        for path in submits[:2]
    }
    assert bodies["/v1/jobs/reports.export"] == {"$ref": "#/components/schemas/Export"}
    # Not the field the web tier fills from the caller: a client that sends it gets 422.
    mine = schemas[bodies["/v1/jobs/notes.mine"]["$ref"].rpartition("/")[2]]
    assert set(mine["properties"]) == {"note"} and mine["additionalProperties"] is False


def test_every_operation_has_a_name_of_its_own_not_made_of_its_path(tmp_path: Path) -> None:
    # FastAPI's ids (show_v1_jobs__job_id__get) gave client generators showV1JobsJobIdGet,
    # a name that changed with the route's path.
    document = create_app(_app(tmp_path, "tokens")).openapi()
    ids = {
        (method, path): operation["operationId"]
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }
    assert len(set(ids.values())) == len(ids)
    fixed = {key: named for key, named in ids.items() if not named.startswith("submit_")}
    assert fixed == {key: OPERATION_IDS[key] for key in fixed}
    assert ids[("get", "/v1/jobs/{job_id}")] == "get_job"
    assert ids[("post", "/v1/jobs/reports.export")] == "submit_reports_export"


def test_every_error_answer_is_a_problem_document(tmp_path: Path) -> None:
    document = create_app(_app(tmp_path, "dev")).openapi()
    errors = [
        (path, status, answer)
        for path, item in document["paths"].items()
        for operation in item.values()
        for status, answer in operation["responses"].items()
        if int(status) >= 400
    ]
    # Every path, /healthz too: a body over the limit is refused before any route (413)
    assert {path for path, _, _ in errors} == set(document["paths"])
    for path, status, answer in errors:
        schema = answer["content"]["application/problem+json"]["schema"]
        assert list(answer["content"]) == ["application/problem+json"], (path, status)
        assert schema == {"$ref": "#/components/schemas/Problem"}, (path, status)
    assert "HTTPValidationError" not in document["components"]["schemas"]


@pytest.mark.parametrize("mode", ["dev", "tokens", "hook"])
def test_the_document_names_bearer_tokens_where_they_decide_who_calls(
    tmp_path: Path, mode: str
) -> None:
    app = _app(tmp_path, "dev" if mode == "hook" else mode)
    api = create_app(app, auth=(lambda request: "alice") if mode == "hook" else None)
    document = api.openapi()
    schemes = document.get("components", {}).get("securitySchemes", {})
    if mode != "tokens":  # no credentials, or the host's own: the document names none
        assert not schemes and "security" not in document
        return
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer", "description": "an API token"}
    assert document["security"] == [{"bearer": []}]
    for path in ("/v1/events", "/v1/jobs/{job_id}/events"):  # (a ticket: an EventSource's)
        assert document["paths"][path]["get"]["security"] == [{"bearer": []}, {"ticket": []}]
    for path in ("/healthz", "/readyz", "/files/{key}"):
        assert document["paths"][path]["get"]["security"] == []
