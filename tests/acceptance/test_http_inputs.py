"""What a client may choose over HTTP: only kinds open to it (`http=False` closes one), and
no field the web tier fills from the caller (`FromPrincipal`)."""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any

import httpx
import orjson
import pytest
from pydantic import Field, Json, ValidationError

import offload
from offload import App, ConfigurationError, FromPrincipal, Message, Settings
from offload.contract import MAX_NESTING, UnstorableMessage
from offload.web import create_app
from tests.web_clients import clients_of

pytestmark = pytest.mark.anyio
TOKENS = {"alice": "tok-alice", "bob": "tok-bob"}


class Report(Message):
    user_id: Annotated[str, FromPrincipal(), Field(max_length=64)]
    period: str


class Receipt(Message):
    user_id: str
    text: str


class Note(Message):
    text: str


class Anything(Message):
    data: Any


class Encoded(Message):
    data: Json[Any]  # JSON text in the body, nested once validated


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        url=f"sqlite:///{tmp_path / 'jobs.db'}",
        blobs_url=str(tmp_path / "blobs"),
        secret_key=b"test-secret-of-32-bytes-or-more!",
        api_tokens={token: principal for principal, token in TOKENS.items()},
    )


@pytest.fixture
def app(settings: Settings) -> App:
    app = App("inputs", settings=settings)
    app.message("t.report", queue="reports")(Report)
    app.message("t.receipt", queue="mail", http=False)(Receipt)
    app.message("t.note", queue="reports")(Note)
    app.message("t.any", queue="reports")(Anything)
    app.message("t.encoded", queue="reports")(Encoded)
    return app


@pytest.fixture
async def clients(app: App) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    async with clients_of(app, TOKENS) as out:
        yield out


async def stored(app: App) -> list[offload.JobRow]:
    return await app.list_jobs(owner=None, limit=100)


def nested(levels: int) -> Any:
    """`levels` arrays, one inside the other."""
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


# -- how deep a body nests ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("t.any", {"data": nested(MAX_NESTING)}),  # a valid message, one level too deep
        ("t.any", {"data": nested(253)}),  # stored, it could no longer be served (500s)
        ("t.note", {"text": nested(300)}),  # invalid: its refusal echoed it (a 500)
    ],
)
async def test_a_body_nested_too_deep_is_refused_and_nothing_is_enqueued(
    app: App, clients: dict[str, httpx.AsyncClient], kind: str, body: dict[str, Any]
) -> None:
    answer = await clients["alice"].post(f"/v1/jobs/{kind}", json=body)
    assert answer.status_code == 422, answer.text
    problem = answer.json()
    assert problem["type"].endswith("/invalid-payload")
    assert problem["detail"] == "the body nests objects and arrays more than 100 levels deep"
    assert await stored(app) == []
    with pytest.raises(ValueError, match="more than 100 levels deep"):
        await app.enqueue(Anything(data=nested(MAX_NESTING)))
    assert await stored(app) == []


async def test_a_message_nested_too_deep_once_validated_is_refused(
    app: App, clients: dict[str, httpx.AsyncClient]
) -> None:
    # The body is flat; the message it validates to is not (it answered 500)
    body = {"data": orjson.dumps(nested(120)).decode()}
    answer = await clients["alice"].post("/v1/jobs/t.encoded", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["type"].endswith("/invalid-payload")
    assert "more than 100 levels deep" in answer.json()["detail"]
    assert await stored(app) == []


# -- a NUL character ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [10, 300_000])  # inline, and past the claim check's size
async def test_a_nul_character_is_refused_on_every_engine_and_nothing_is_enqueued(
    app: App, clients: dict[str, httpx.AsyncClient], size: int
) -> None:
    # PostgreSQL refused it as a backend failure (a 503, retried for ever), the other
    # engines kept it, and on PostgreSQL too once the message was large enough to be
    # checked in to the blob store: every engine refuses it now, as a result's.
    text = "a\x00b" + "x" * size
    answer = await clients["alice"].post("/v1/jobs/t.any", json={"data": {"text": text}})
    assert answer.status_code == 422, answer.text
    problem = answer.json()
    assert problem["type"].endswith("/invalid-payload")
    assert problem["detail"].startswith("a t.any message holds a NUL character (\\u0000)")
    with pytest.raises(UnstorableMessage, match="NUL character"):
        await app.enqueue(Note(text=text))
    with pytest.raises(UnstorableMessage, match="NUL character"):
        await app.enqueue_many([Note(text="fine"), Anything(data=[b"\x00"])])
    assert await stored(app) == []
    # The six characters \u0000 are no NUL: they are taken.
    taken = await clients["alice"].post("/v1/jobs/t.note", json={"text": "\\u0000"})
    assert taken.status_code == 202, taken.text
    await app.enqueue(Note(text="\\\\u0000"))
    assert sorted(row.payload["text"] for row in await stored(app)) == ["\\\\u0000", "\\u0000"]


# -- numbers JSON cannot carry -------------------------------------------------------------------


class Ratio(Message):
    limit: float = 0.0
    ratio: float | None = None
    data: Any = None


@pytest.mark.parametrize(
    "message",
    [Ratio(limit=math.inf), Ratio(ratio=math.nan), Ratio(limit=-math.inf, ratio=1.0)],
)
async def test_a_float_nan_or_infinity_is_refused_and_nothing_is_enqueued(
    app: App, message: Ratio
) -> None:
    # (orjson wrote it as null: the job failed at every attempt, or got None for it)
    app.message("t.ratio")(Ratio)
    refused = r"a t\.ratio message holds a float NaN or infinity"
    with pytest.raises(UnstorableMessage, match=refused):
        await app.enqueue(message)
    assert await stored(app) == []
    await app.enqueue(Ratio(limit=1e308, ratio=None, data={"x": None}))  # null is no NaN
    assert len(await stored(app)) == 1


@pytest.mark.parametrize(
    "body",
    [
        b'{"data": 18446744073709551616}',
        b'{"data": [1, -9223372036854775809]}',
        b'{"data": {"n": 123456789012345678901234567890}}',
    ],
)
async def test_an_integer_past_64_bits_in_a_body_is_refused_not_rounded(
    app: App, clients: dict[str, httpx.AsyncClient], body: bytes
) -> None:
    # orjson read it as the nearest float: a field typed Any took it, changed.
    headers = {"content-type": "application/json"}
    answer = await clients["alice"].post("/v1/jobs/t.any", content=body, headers=headers)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"] == (
        "a t.any message cannot be stored as JSON: Integer exceeds 64-bit range"
    )
    assert await stored(app) == []


class Strings(Message):
    data: Json[list[str]]


@pytest.mark.parametrize(
    ("text", "echoed"), [("[1e400]", "Infinity"), ("[" + "9" * 400 + "]", "9" * 400)]
)
async def test_a_refusal_echoes_a_number_no_json_answer_carries_as_text(
    app: App, clients: dict[str, httpx.AsyncClient], text: str, echoed: str
) -> None:
    # A Json field's text held it: pydantic's error repeated it, and reading that back
    # failed, a 500 for what is the client's mistake.
    app.message("t.strings")(Strings)
    answer = await clients["alice"].post("/v1/jobs/t.strings", json={"data": text})
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["input"] == echoed
    # An unknown field's integer past 64 bits is echoed as its digits, not a rounded float.
    body = b'{"data": "[]", "n": 123456789012345678901234567890}'
    headers = {"content-type": "application/json"}
    refused = await clients["alice"].post("/v1/jobs/t.strings", content=body, headers=headers)
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"][0]["input"] == "123456789012345678901234567890"
    assert await stored(app) == []


async def test_an_integer_past_64_bits_sent_for_a_float_is_that_float(
    app: App, clients: dict[str, httpx.AsyncClient]
) -> None:
    # (JavaScript's JSON.stringify(1e20) writes 100000000000000000000)
    app.message("t.ratio")(Ratio)
    body = b'{"limit": 100000000000000000000, "ratio": -123456789012345678901234567890}'
    headers = {"content-type": "application/json"}
    answer = await clients["alice"].post("/v1/jobs/t.ratio", content=body, headers=headers)
    assert answer.status_code == 202, answer.text
    (row,) = await stored(app)
    assert row.payload == {"limit": 1e20, "ratio": -1.2345678901234568e29, "data": None}


async def test_long_numbers_within_64_bits_and_long_digits_in_text_are_taken(
    app: App, clients: dict[str, httpx.AsyncClient]
) -> None:
    body = (
        b'{"data": [18446744073709551615, -9223372036854775808, 1.2345678901234567890123,'
        b' 12345678901234567890123.5, "123456789012345678901234567890",'
        b' "a \\" 123456789012345678901234567890 \\""]}'
    )
    headers = {"content-type": "application/json"}
    answer = await clients["alice"].post("/v1/jobs/t.any", content=body, headers=headers)
    assert answer.status_code == 202, answer.text
    (row,) = await stored(app)
    assert row.payload["data"][:2] == [2**64 - 1, -(2**63)]
    assert row.payload["data"][4:] == [
        "123456789012345678901234567890",
        'a " 123456789012345678901234567890 "',
    ]


async def test_a_body_nested_as_deep_as_allowed_is_taken(
    app: App, clients: dict[str, httpx.AsyncClient]
) -> None:
    body = {"data": nested(MAX_NESTING - 1)}  # the body's own object is the 100th level
    answer = await clients["alice"].post("/v1/jobs/t.any", json=body)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    status = await clients["alice"].get(f"/v1/jobs/{job_id}")
    assert status.status_code == 200 and status.json()["id"] == job_id
    listed = await clients["alice"].get("/v1/jobs")
    assert listed.status_code == 200 and [j["id"] for j in listed.json()["items"]] == [job_id]
    row = await app.get(job_id)
    assert row is not None and row.payload == body


# -- http=False -------------------------------------------------------------------------------


async def test_a_kind_off_the_http_api_answers_404_as_an_unknown_kind_and_enqueues_nothing(
    app: App, clients: dict[str, httpx.AsyncClient]
) -> None:
    alice = clients["alice"]
    closed = await alice.post("/v1/jobs/t.receipt", json={"user_id": "alice", "text": "hi"})
    unknown = await alice.post("/v1/jobs/t.nothing", json={"user_id": "alice", "text": "hi"})
    assert closed.status_code == unknown.status_code == 404
    assert closed.headers["content-type"] == "application/problem+json"
    body, other = closed.json(), unknown.json()
    # Then nothing tells a closed kind from one that does not exist, but its name.
    assert body["type"] == other["type"] and body["type"].endswith("/unknown-kind")
    assert body["detail"] == other["detail"].replace("t.nothing", "t.receipt")
    assert {k for k in body} == {k for k in other}
    assert await stored(app) == []


async def test_a_kind_off_the_http_api_is_enqueued_from_python(
    app: App, clients: dict[str, httpx.AsyncClient]
) -> None:
    job = await app.enqueue(Receipt(user_id="alice", text="hi"), owner="alice")
    row = await app.get(job.id)
    assert row is not None and row.kind == "t.receipt" and row.queue == "mail"
    assert app.spec_of(Receipt).http is False and app.spec_of(Report).http is True
    # Its jobs are the owner's like any other: readable, just not submittable.
    shown = await clients["alice"].get(f"/v1/jobs/{job.id}")
    assert shown.status_code == 200 and shown.json()["kind"] == "t.receipt"


# -- FromPrincipal ------------------------------------------------------------------------------


async def test_a_from_principal_field_is_filled_from_the_caller(
    app: App, clients: dict[str, httpx.AsyncClient]
) -> None:
    ids = {}
    for who in ("alice", "bob"):
        answer = await clients[who].post("/v1/jobs/t.report", json={"period": "2026-10"})
        assert answer.status_code == 202, answer.text
        ids[who] = answer.json()["id"]
    for who, job_id in ids.items():
        row = await app.get(job_id)
        assert row is not None
        assert row.payload == {"user_id": who, "period": "2026-10"} and row.owner == who


@pytest.mark.parametrize("sent", ["bob", "alice", None, ""])
async def test_a_client_that_sends_a_from_principal_field_gets_422_and_nothing_is_enqueued(
    app: App, clients: dict[str, httpx.AsyncClient], sent: str | None
) -> None:
    # Even its own name: the field is not the client's to choose.
    answer = await clients["alice"].post(
        "/v1/jobs/t.report", json={"user_id": sent, "period": "2026-10"}
    )
    assert answer.status_code == 422
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["status"] == 422 and problem["type"].endswith("/invalid-payload")
    assert [e["loc"] for e in problem["errors"]] == [["user_id"]]
    assert "caller" in problem["errors"][0]["msg"]
    assert await stored(app) == []


async def test_a_principal_the_filled_field_does_not_accept_is_refused_not_the_body(
    app: App, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a principal longer than the field allows,
    long = "p" * 65
    app.configure(settings.with_(api_tokens={"tok-long": long}))
    api = create_app(app)
    async with api.router.lifespan_context(api):
        transport = httpx.ASGITransport(app=api)
        headers = {"Authorization": "Bearer tok-long"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://localhost", headers=headers
        ) as client:
            answer = await client.post("/v1/jobs/t.report", json={"period": "2026-10"})
    # then the field is validated as any other (as it would be from Python), and the
    # caller is refused, not its body (which it cannot mend): a 403 naming the field, the
    # operator told of a kind and an auth setting that disagree;
    assert answer.status_code == 403, answer.text
    problem = answer.json()
    assert problem["type"].endswith("/principal-refused")
    assert problem["detail"].startswith(
        "the caller's principal cannot own a t.report job (user_id:"
    )
    assert [e["loc"] for e in problem["errors"]] == [["user_id"]]
    assert long not in answer.text  # (the caller's own name, not echoed back)
    assert "does not fit the kind" in caplog.text and long in caplog.text
    # and nothing was stored.
    assert await stored(app) == []


async def test_python_code_sets_a_from_principal_field_explicitly(app: App) -> None:
    with pytest.raises(ValidationError):
        Report(period="2026-10")  # type: ignore[call-arg]
    job = await app.enqueue(Report(user_id="u1", period="2026-10"), owner="u1")
    row = await app.get(job.id)
    assert row is not None and row.payload["user_id"] == "u1"
    await app.close()


def test_from_principal_is_public() -> None:
    assert "FromPrincipal" in offload.__all__ and offload.FromPrincipal is FromPrincipal


def test_a_from_principal_field_must_be_a_string() -> None:
    app = App("inputs")

    class Numbered(Message):
        user_id: Annotated[int, FromPrincipal()]

    with pytest.raises(ConfigurationError, match="user_id"):
        app.message("t.numbered")(Numbered)


# -- job options and methods --------------------------------------------------------------------


@pytest.mark.parametrize(
    "run_at", ["1700000000", "0.5", "-1", "9999-12-31T23:59:59-23:59", "9999-12-31T23:59:59-00:01"]
)
async def test_run_at_is_a_date_time_not_a_number_nor_past_year_9999(
    app: App, clients: dict[str, httpx.AsyncClient], run_at: str
) -> None:
    answer = await clients["alice"].post(
        "/v1/jobs/t.report", params={"run_at": run_at}, json={"period": "2026-10"}
    )
    assert answer.status_code == 422
    assert [e["loc"] for e in answer.json()["errors"]] == [["query", "run_at"]]
    assert await stored(app) == []
    later = await clients["alice"].post(
        "/v1/jobs/t.report", params={"run_at": "2030-01-01T00:00:00Z"}, json={"period": "2026-10"}
    )
    assert later.status_code == 202


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/v1/jobs/0193a1c2", "DELETE, GET"),  # a job
        ("PATCH", "/v1/jobs/t.report", "POST"),  # a kind
        ("POST", "/v1/jobs", "GET"),
        ("DELETE", "/v1/queues", "GET"),
        ("POST", "/v1/kinds", "GET"),  # a route of a router of its own (its Allow was empty)
        ("HEAD", "/v1/kinds", "GET"),
    ],
)
async def test_a_405_names_every_method_of_the_resource(
    clients: dict[str, httpx.AsyncClient], method: str, path: str, allow: str
) -> None:
    answer = await clients["alice"].request(method, path)
    assert answer.status_code == 405
    assert answer.headers["allow"] == allow
    assert answer.headers["content-type"] == "application/problem+json"


# -- the options of a submission --------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "headers", "errors"),
    [
        ("priority=abc", {}, [(["query", "priority"], "int_parsing")]),
        (
            "priority=5000&delay=-1",
            {},
            [
                (["query", "priority"], "less_than_equal"),
                (["query", "delay"], "greater_than_equal"),
            ],
        ),
        ("delay=", {}, [(["query", "delay"], "float_parsing")]),
        ("delay=nan", {}, [(["query", "delay"], "finite_number")]),
        ("priority=1&priority=x", {}, [(["query", "priority"], "int_parsing")]),  # the last
        # A misspelt option would otherwise be ignored: ?dealy=600 would run at once.
        (
            "dealy=600&prio=1",
            {},
            [(["query", "dealy"], "extra_forbidden"), (["query", "prio"], "extra_forbidden")],
        ),
        ("notify_email=" + "a" * 255, {}, [(["query", "notify_email"], "string_too_long")]),
        ("", {"Idempotency-Key": "k" * 256}, [(["header", "idempotency-key"], "string_too_long")]),
        # An empty key (a client's unset variable) would make every later post a repeat.
        ("", {"Idempotency-Key": ""}, [(["header", "idempotency-key"], "string_too_short")]),
    ],
)
async def test_invalid_options_answer_422_naming_each_and_enqueue_nothing(
    app: App,
    clients: dict[str, httpx.AsyncClient],
    query: str,
    headers: dict[str, str],
    errors: list[tuple[list[str], str]],
) -> None:
    answer = await clients["alice"].post(
        f"/v1/jobs/t.report?{query}", json={"period": "2026-10"}, headers=headers
    )
    assert answer.status_code == 422
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["type"].endswith("/invalid-request")
    assert [(e["loc"], e["type"]) for e in problem["errors"]] == errors
    assert await stored(app) == []


async def test_options_in_range_are_the_jobs(
    app: App, clients: dict[str, httpx.AsyncClient]
) -> None:
    answer = await clients["alice"].post(
        "/v1/jobs/t.report?priority=-1000&delay=5",
        json={"period": "2026-10"},
        headers={"Idempotency-Key": "k" * 255},
    )
    assert answer.status_code == 202
    (row,) = await stored(app)
    assert (row.priority, row.idempotency_key) == (-1000, "k" * 255)
    assert row.run_at >= row.enqueued_at + 5


class Memo(Message):
    text: str
    pages: int = 1
    tags: set[str] = set()
    meta: dict[str, int] = {}
    stamp: str = Field(default_factory=lambda: uuid.uuid4().hex)  # made anew each time


@pytest.mark.parametrize("claim_check_bytes", [0, 64], ids=["in-the-row", "claim-checked"])
async def test_an_idempotency_key_replays_the_same_message_only(
    settings: Settings, claim_check_bytes: int
) -> None:
    # Given a kind whose bodies may be spelt differently (key order, a set's order, a default
    # sent or not, a default made anew each time), stored in the row, or in the blob store
    # for a large one (its claim check in the row),
    app = App("inputs", settings=dataclasses.replace(settings, claim_check_bytes=claim_check_bytes))
    app.message("t.memo", queue="reports")(Memo)
    text = "x" * 100
    key = {"Idempotency-Key": "K1"}
    async with clients_of(app, TOKENS) as clients:
        alice = clients["alice"]
        body = {"text": text, "tags": ["a", "b"], "meta": {"x": 1, "y": 2}}
        first = await alice.post("/v1/jobs/t.memo", json=body, headers=key)
        assert first.status_code == 202
        # when the request is sent again with the same message spelt otherwise, it is a repeat
        for again_body in (
            f'{{"meta": {{"y": 2, "x": 1}}, "pages": 1, "tags": ["b", "a"], "text": "{text}"}}',
            f'{{"text": "{text}"}}',  # (what a repeat leaves out is not compared)
        ):
            again = await alice.post(
                "/v1/jobs/t.memo",
                content=again_body,
                headers={**key, "Content-Type": "application/json"},
            )
            assert again.status_code == 202, again.text
            assert again.headers["idempotent-replayed"] == "true"
            assert again.json()["id"] == first.json()["id"]
        # but with another message under the same key: 409, nothing stored
        for other_body in ({**body, "pages": 2}, {**body, "tags": ["a"]}):
            other = await alice.post("/v1/jobs/t.memo", json=other_body, headers=key)
            assert other.status_code == 409, other.text
            assert other.headers["content-type"] == "application/problem+json"
            problem = other.json()
            assert problem["type"].endswith("/idempotency-key-reused")
            assert first.json()["id"] in problem["detail"] and "same body" in problem["detail"]
        (row,) = await stored(app)
        assert row.id == first.json()["id"]
        # and the same key from another principal is theirs: a request of its own
        bob = await clients["bob"].post("/v1/jobs/t.memo", json={"text": "y"}, headers=key)
        assert bob.status_code == 202 and "idempotent-replayed" not in bob.headers
    await app.close()


async def test_a_repeat_across_a_version_bump_is_not_compared(settings: Settings) -> None:
    # Given a request stored at version 1 of a kind (its body without `pages`),
    class MemoV1(Message):
        text: str

    key = {"Idempotency-Key": "K1"}
    before = App("inputs", settings=settings)
    before.message("t.memo", queue="reports")(MemoV1)
    async with clients_of(before, TOKENS) as clients:
        first = await clients["alice"].post("/v1/jobs/t.memo", json={"text": "a"}, headers=key)
    await before.close()
    assert first.status_code == 202
    # when its client retries after a deploy made the kind's version 2 (`pages` added),
    after = App("inputs", settings=settings)
    after.message("t.memo", queue="reports", version=2)(Memo)
    after.upgrade("t.memo", 1)(lambda payload: {**payload, "pages": 1})
    async with clients_of(after, TOKENS) as clients:
        again = await clients["alice"].post("/v1/jobs/t.memo", json={"text": "a"}, headers=key)
        # then it is the repeat: its body is the new version's, the stored one the old one's
        assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
        assert again.json()["id"] == first.json()["id"]
        assert len(await stored(after)) == 1
    await after.close()


async def test_an_idempotency_key_replays_its_own_kind_only(
    app: App, clients: dict[str, httpx.AsyncClient]
) -> None:
    alice = clients["alice"]
    key = {"Idempotency-Key": "K1"}
    first = await alice.post("/v1/jobs/t.report", json={"period": "2026-10"}, headers=key)
    assert first.status_code == 202
    # The same key sent for another kind is no repeat of that request: 409, nothing stored
    other = await alice.post("/v1/jobs/t.note", json={"text": "hi"}, headers=key)
    assert other.status_code == 409
    assert other.headers["content-type"] == "application/problem+json"
    assert other.json()["type"].endswith("/idempotency-key-reused")
    assert "t.report" in other.json()["detail"]
    assert first.json()["id"] in other.json()["detail"]  # (naming the first job)
    assert len(await stored(app)) == 1
    # and the repeat of the first request is answered with its job, as before
    again = await alice.post("/v1/jobs/t.report", json={"period": "2026-10"}, headers=key)
    assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]


@pytest.mark.parametrize("short_of", ["memory", "threads"])
async def test_a_server_short_of_memory_or_threads_answers_503_not_a_refusal_of_the_body(
    app: App, monkeypatch: pytest.MonkeyPatch, short_of: str
) -> None:
    # Under a memory limit orjson refused a fine body as "not JSON" (a 422: the client gave
    # up on it for good); a thread that could not start (a blob written aside) was a 500.
    from offload.web import create_app
    from offload.web import submit as submit_module

    if short_of == "memory":

        def loads(_body: Any) -> Any:
            raise orjson.JSONDecodeError("Not enough memory to allocate buffer for parsing", "", 0)

        fake = SimpleNamespace(**{**vars(orjson), "loads": loads})
        monkeypatch.setattr(submit_module, "orjson", fake)
    else:

        async def submit(*_args: Any, **_kwargs: Any) -> Any:
            raise RuntimeError("can't start new thread")

        monkeypatch.setattr(app, "submit", submit)
    from offload.metrics import Metrics
    from tests.scrape import parse

    app.metrics = metrics = Metrics()
    api = create_app(app)
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    headers = {"Authorization": f"Bearer {TOKENS['alice']}"}
    async with (
        api.router.lifespan_context(api),
        httpx.AsyncClient(transport=transport, base_url="http://localhost") as client,
    ):
        answer = await client.post("/v1/jobs/t.note", json={"text": "fine"}, headers=headers)
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["type"].endswith("/server-overloaded")
    assert answer.headers["retry-after"] == "5"
    assert answer.headers["connection"] == "close"
    assert await stored(app) == []
    # (counted as answered: a 503, not a 500)
    found = parse(metrics.render().decode())
    requests = "offload_http_requests_total"
    assert found.value(requests, method="POST", route="/v1/jobs/{kind}", status="503") == 1


async def test_an_idempotency_key_in_utf8_is_read_as_written(
    app: App, clients: dict[str, httpx.AsyncClient]
) -> None:
    # Given a key of 255 non-ASCII characters, sent as a client writes it (UTF-8 bytes)
    key = "é" * 254 + "✓"
    alice = clients["alice"]
    sent = {"Idempotency-Key": key.encode()}
    first = await alice.post("/v1/jobs/t.report", json={"period": "2026-10"}, headers=sent)
    # Then it is taken (it was 510 characters read as Latin-1: a 422), stored as written,
    assert first.status_code == 202, first.text
    row = await app.get(first.json()["id"])
    assert row is not None and row.idempotency_key == key
    # and its repeat answers the first job
    again = await alice.post("/v1/jobs/t.report", json={"period": "2026-10"}, headers=sent)
    assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    # while bytes that are no UTF-8 are read as HTTP reads them, one character each
    latin = await alice.post(
        "/v1/jobs/t.report", json={"period": "2026-11"}, headers={"Idempotency-Key": b"\xe9"}
    )
    assert latin.status_code == 202, latin.text
    row = await app.get(latin.json()["id"])
    assert row is not None and row.idempotency_key == "é"


async def test_only_a_unique_kind_declares_the_200_of_a_held_key(
    clients: dict[str, httpx.AsyncClient],
) -> None:
    paths = (await clients["alice"].get("/openapi.json")).json()["paths"]
    assert "200" not in paths["/v1/jobs/t.report"]["post"]["responses"]
    assert "202" in paths["/v1/jobs/t.report"]["post"]["responses"]
