"""GET /v1/kinds: the kinds the caller may post, each with its version, queue and the JSON
Schema of its body, so a client can validate a message before posting it."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from ..app import App, MessageSpec
from ..contracts import client_schema
from .auth import authenticated
from .origins import cross_site_guard
from .present import root_of
from .responses import API_ERRORS, problems
from .runtime import opened

#: The dependencies of every /v1 route (see routes.py): a read is never refused cross-site,
#: and while the backend is down it answers 503 like the others.
router = APIRouter(
    prefix="/v1",
    dependencies=[Depends(cross_site_guard), Depends(opened), Depends(authenticated)],
)


class KindLinks(BaseModel):
    submit: str = Field(description="where to POST a message of this kind")


class UniqueRule(BaseModel):
    """How a kind declared unique answers a repeat (see the README's Unique jobs)."""

    mode: Literal["queued", "active"] = Field(
        description="queued: while a job with the same key waits for its first start, a post "
        "answers 200 with that job; active: the same while it waits or runs"
    )
    key: list[str] = Field(
        description="the message fields the key is made of, beside the kind and the caller "
        "(empty: the whole message)"
    )


class Kind(BaseModel):
    """A kind the caller may post."""

    kind: str
    version: int = Field(description="the version of the message a post is read as")
    queue: str
    json_schema: dict[str, Any] = Field(
        alias="schema",
        description="the JSON Schema of the body, without the fields the server fills from "
        "the caller (a body that carries one is refused)",
    )
    unique: UniqueRule | None = Field(
        default=None, description="set for a kind declared unique; null otherwise"
    )
    fair: bool = Field(
        default=False,
        description="its queue is fair: jobs are claimed in turn across owners",
    )
    links: KindLinks


class KindList(BaseModel):
    kinds: list[Kind] = Field(description="sorted by kind")


@router.get(
    "/kinds",
    response_model=KindList,
    responses=problems(*API_ERRORS),
)
async def kinds(request: Request) -> KindList:
    """The kinds the caller may post (`POST /v1/jobs/{kind}`), each with its current
    version, its queue and the JSON Schema its body must satisfy. Kinds declared
    `http=False`, and those a token limited to kinds may not post, are not listed."""
    auth = request.app.state.auth
    auth.principal(request)  # 401 for a caller who is not signed in
    app: App = request.app.state.offload
    root = root_of(request)
    fair_queues = {spec.queue for spec in app.kinds.values() if spec.fair}
    listed = [
        {
            "kind": kind,
            "version": spec.version,
            "queue": spec.queue,
            "schema": client_schema(spec),
            "unique": None if spec.unique is None else _unique_rule(spec),
            "fair": spec.queue in fair_queues,
            "links": {"submit": f"{root}/v1/jobs/{quote(kind, safe='')}"},
        }
        for kind, spec in sorted(app.kinds.items())
        if auth.offers(request, spec)
    ]
    return KindList.model_validate({"kinds": listed})


def _unique_rule(spec: MessageSpec) -> dict[str, Any]:
    return {"mode": spec.unique, "key": list(spec.unique_key)}
