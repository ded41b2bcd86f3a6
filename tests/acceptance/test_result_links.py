"""A result's `blob:` references become signed links only where they name the job itself:
a handler that puts a client's text into its result must not hand that client a link to
another owner's file (or to a key offload would refuse)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from offload import App, Context, Message, Settings
from offload._links import Presenter, linkable, result_refs
from tests.web_clients import clients_of

pytestmark = pytest.mark.anyio
TOKENS = {"tok-alice": "alice", "tok-bob": "bob"}
PRINCIPALS = {who: token for token, who in TOKENS.items()}


class Report(Message):
    title: str


class Echo(Message):
    tag: str


@pytest.fixture
def app(settings: Settings) -> App:
    app = App("links", settings=settings.with_(api_tokens=TOKENS))
    app.message("links.report")(Report)
    app.message("links.echo")(Echo)

    @app.handles(Report)
    async def report(msg: Report, ctx: Context) -> dict[str, Any]:
        ref = await ctx.blobs.put(f"reports/{ctx.job_id}.txt", msg.title.encode())
        return {"file": ref}

    @app.handles(Echo)
    async def echo(msg: Echo, ctx: Context) -> dict[str, Any]:
        return {"tag": msg.tag}  # a client's text, as many real handlers return some

    return app


@pytest.fixture
async def clients(app: App) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    async with clients_of(app, PRINCIPALS) as out:
        yield out


async def finished(client: httpx.AsyncClient, kind: str, body: dict[str, str]) -> dict[str, Any]:
    """Post a job and poll its record until it succeeds (within a deadline)."""
    job_id = (await client.post(f"/v1/jobs/{kind}", json=body)).json()["id"]
    async with asyncio.timeout(30):
        while True:
            record: dict[str, Any] = (await client.get(f"/v1/jobs/{job_id}")).json()
            if record["state"] == "succeeded":
                return record
            assert record["state"] not in ("failed", "dead", "cancelled"), record
            await asyncio.sleep(0.02)


async def test_a_result_cannot_link_another_owners_file(
    app: App, clients: dict[str, httpx.AsyncClient], start_worker: Callable[..., Any]
) -> None:
    await start_worker()
    alice, bob = clients["alice"], clients["bob"]
    # Given bob's report, its file linked in his result
    bobs = await finished(bob, "links.report", {"title": "bob's figures"})
    bobs_key = f"reports/{bobs['id']}.txt"
    assert bobs["result"]["file"].startswith(f"/files/reports/{bobs['id']}.txt?")
    assert (await bob.get(bobs["result"]["file"])).content == b"bob's figures"
    # When alice has a job echo a reference to bob's file (or to a key offload refuses)
    for tag in (f"blob:{bobs_key}", "blob:.signing-key", "blob:../jobs.db", "blob:"):
        echoed = await finished(alice, "links.echo", {"tag": tag})
        # Then her result shows the text as sent, no link, and her listing still answers
        assert echoed["result"] == {"tag": tag}
        result = await alice.get(f"/v1/jobs/{echoed['id']}/result")
        assert result.status_code == 200 and result.json()["result"] == {"tag": tag}
        listing = await alice.get("/v1/jobs")
        assert listing.status_code == 200
        assert {"tag": tag} in [item["result"] for item in listing.json()["items"]]
    # And bob's own result still links his file
    assert (await bob.get(f"/v1/jobs/{bobs['id']}/result")).status_code == 303


async def test_an_invalid_key_naming_the_job_is_left_as_text(
    app: App, clients: dict[str, httpx.AsyncClient], start_worker: Callable[..., Any]
) -> None:
    await start_worker()
    alice = clients["alice"]
    job = await app.enqueue(Echo(tag="x"), owner="alice")
    await job.wait(10)
    # A reference naming the job but with a key no store accepts: text, never an error
    presenter = Presenter(b"k", ttl_s=60)
    bad = f"blob:../{job.id}"
    assert presenter.sign_refs({"a": [bad]}, job.id) == {"a": [bad]}
    assert (await alice.get(f"/v1/jobs/{job.id}")).status_code == 200


@pytest.mark.parametrize(
    ("key", "job_id", "linked"),
    [
        ("reports/J1.pdf", "J1", True),
        ("thumbnails/J1/64.webp", "J1", True),
        ("J1", "J1", True),
        ("reports/J2.pdf", "J1", False),
        ("uploads/alice/original.png", "J1", False),
        ("../J1", "J1", False),
        ("reports//J1", "J1", False),
        (".signing-key", "J1", False),
        ("reports/J1.pdf", "", False),
    ],
)
def test_linkable(key: str, job_id: str, linked: bool) -> None:
    assert linkable(key, job_id) is linked
    assert result_refs({"f": [f"blob:{key}", "blob"]}, job_id) == ([key] if linked else [])
