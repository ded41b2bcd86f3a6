"""The stream of all the caller's jobs: server-sent events at /v1/events, a WebSocket at
/v1/ws, and the short-lived tickets that let browsers open them without headers."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request, WebSocket
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.websockets import WebSocketDisconnect

from .._signing import sign, verify
from ..brokers.base import Change
from ..clock import iso
from ..errors import BackendError
from .auth import (
    DEFAULT_CHALLENGE,
    TICKET_PRINCIPAL,
    authenticate_unless_ticket,
    authenticated_unless_ticket,
)
from .events import (
    EventStreamResponse,
    Hub,
    Place,
    follow_owner,
    job_events_response,
    owner_stream,
)
from .models import JobEvent, Ticket
from .origins import cross_site_guard, refuse_cross_site
from .present import presenter_of, root_of
from .problems import (
    JSONResponse,
    Problem,
    as_problem,
    backend_unavailable,
    job_not_found,
    out_of_resources,
    refuse_handshake,
    server_overloaded,
)
from .responses import API_ERRORS, STRING, header, problems
from .runtime import opened

log = logging.getLogger("offload.web")
router = APIRouter(
    prefix="/v1", dependencies=[Depends(opened), Depends(authenticated_unless_ticket)]
)

#: How long a WebSocket / event-stream ticket stays valid (seconds).
DEFAULT_TICKET_TTL_S = 60
#: Seconds a WebSocket may stay silent before the server sends a keep-alive message.
DEFAULT_WS_KEEPALIVE_S = 30.0
#: Seconds a stream refused as one too many is told to wait (Retry-After).
TOO_MANY_STREAMS_RETRY_AFTER_S = 5
#: Open files an event stream or WebSocket may not take, of the process's limit: a quarter
#: of it, 64 at least, for the backend's connections, the requests that come meanwhile
#: (a probe's, a POST's), files and blobs. A stream past the rest is a 503.
STREAM_FILES_KEPT = 64
#: Seconds between two warnings that streams are refused (one a minute, not one each).
_REFUSAL_WARNED_EVERY_S = 60.0
_warned_at = -_REFUSAL_WARNED_EVERY_S
_TICKET = "ws-ticket"


def is_digits(value: str) -> bool:
    """Only the digits 0-9 (`str.isdigit` also takes ² and other digits `int` refuses)."""
    return value.isascii() and value.isdigit()


def make_ticket(secret: bytes, principal: str, expires: int) -> str:
    """A ticket naming `principal`, valid until the epoch second `expires`."""
    who = base64.urlsafe_b64encode(principal.encode()).rstrip(b"=").decode()
    return f"{who}.{expires}.{sign(secret, _TICKET, principal, str(expires))}"


def read_ticket(keys: bytes | Sequence[bytes], ticket: str, now: float) -> str | None:
    """The principal a valid, unexpired ticket names (signed with one of `keys`); None for
    anything else."""
    who, _, rest = ticket.partition(".")
    expires, _, signature = rest.partition(".")
    if not is_digits(expires) or len(expires) > 12 or int(expires) < now:
        return None
    try:
        principal = base64.urlsafe_b64decode(who + "=" * (-len(who) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return principal if verify(keys, signature, _TICKET, principal, expires) else None


def principal_of(conn: HTTPConnection, ticket: str | None) -> str:
    """The caller: from a ticket (`?ticket=`) when given, else as on every /v1 route.

    Raises:
        Problem: 401 for a bad or expired ticket, or no valid credentials.
    """
    state = conn.app.state
    if ticket is None:
        principal: str = state.auth.principal(conn)
        return principal
    found = read_ticket(state.present.keys, ticket, time.time())
    if found is None:
        detail = "the ticket is invalid or has expired"
        challenge = {"WWW-Authenticate": DEFAULT_CHALLENGE}
        raise Problem(401, detail, slug="bad-ticket", headers=challenge)
    conn.scope.setdefault("state", {})[TICKET_PRINCIPAL] = found  # for the access log
    return found


#: A feed position, as Last-Event-ID and `since` give it (documented; checked by `cursor_of`):
#: at most 18 digits, so that every one fits the engines' 64-bit integers.
FEED_POSITION = {"pattern": "^[0-9]{0,18}$"}
MAX_FEED_POSITION = 10**18 - 1


async def within_feed(hub: Hub, cursor: int | None) -> int | None:
    """`cursor`, or the feed's newest position where it is past it (`Hub.within`): a
    stream resumed there sends every change from then on, none skipped."""
    return None if cursor is None else await hub.within(cursor)


def cursor_of(last_event_id: str | None, since: str | None) -> int | None:
    """The position to resume after (Last-Event-ID wins over `since`); None: from now on.

    Raises:
        Problem: 400 when either is not a feed position.
    """
    for name, value in (("Last-Event-ID", last_event_id), ("since", since)):
        if value is None or value == "":
            continue
        if not is_digits(value) or len(value) > 18:
            raise Problem(400, f"{name} must be an event id of this stream", slug="bad-event-id")
        return int(value)
    return None


@router.post(
    "/ws-ticket",
    status_code=201,
    dependencies=[Depends(cross_site_guard)],
    response_model=Ticket,
    response_description="A ticket, valid for 60 s",
    responses={
        201: {"headers": {"Cache-Control": header("`no-store`", STRING)}},
        **problems(*API_ERRORS, 403, 413),
    },
)
async def ws_ticket(request: Request) -> Response:
    """A ticket for /v1/ws, /v1/events and /v1/jobs/{id}/events (`?ticket=`), for clients
    that cannot send an Authorization header (browsers' WebSocket and EventSource). Valid
    for 60 s."""
    principal = request.app.state.auth.principal(request)
    expires = int(time.time()) + DEFAULT_TICKET_TTL_S
    ticket = make_ticket(request.app.state.present.secret, principal, expires)
    root = root_of(request)
    return JSONResponse(
        {
            "ticket": ticket,
            "expires_at": iso(expires),
            "websocket": f"{root}/v1/ws?ticket={ticket}",
            "events": f"{root}/v1/events?ticket={ticket}",
        },
        status_code=201,
        headers={"Cache-Control": "no-store"},
    )


def stream_limit(open_files: int) -> int:
    """The most event streams and WebSockets a process keeps open at once: what its limit
    of `open_files` (`RLIMIT_NOFILE`) leaves once `STREAM_FILES_KEPT` (or a quarter of it)
    is kept for everything else."""
    return max(0, open_files - max(STREAM_FILES_KEPT, open_files // 4))


def admit_stream(hub: Hub) -> Place | None:
    """Refuse a new event stream or WebSocket once as many are open as `stream_limit`
    allows: past it the process runs out of files, and then refused every connection,
    its probes' and POSTs' too, without a word (each accepted and closed at once).

    Raises:
        Problem: 503 (`too-many-streams`, with Retry-After).
    """
    import resource

    open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if open_files == resource.RLIM_INFINITY:
        return None
    place = hub.admit(stream_limit(open_files))
    if place is not None:
        return place
    global _warned_at
    now = time.monotonic()
    if now - _warned_at >= _REFUSAL_WARNED_EVERY_S:
        _warned_at = now
        log.warning(
            "refusing new event streams: %d are open, as many as this process's limit of "
            "open files (%d) leaves room for; raise it (ulimit -n, systemd's LimitNOFILE=) "
            "or serve from more processes",
            hub.streams,
            open_files,
            extra={"action": "streams_refused", "open": hub.streams, "open_files": open_files},
        )
    raise Problem(
        503,
        f"this server has {hub.streams} event streams open, the most it can keep; try again "
        "shortly",
        slug="too-many-streams",
        # closed, not kept alive: each refused client would hold a file meanwhile, of those
        # kept for POSTs and probes
        headers={"Retry-After": str(TOO_MANY_STREAMS_RETRY_AFTER_S), "Connection": "close"},
    )


@contextlib.contextmanager
def opening(hub: Hub) -> Iterator[Place | None]:
    """`admit_stream`, for a block that opens the stream: its place is given back if the
    block fails (a position refused, the backend out of reach)."""
    place = admit_stream(hub)
    try:
        yield place
    except BaseException:
        hub.release(place)
        raise


def unless_streaming(hub: Hub, place: Place | None, response: Response) -> Response:
    """`response`, the place `opening` took given back when it opens no stream (a 204
    for a job that ended)."""
    if response.status_code == 204:
        hub.release(place)
    return response


@router.get(
    "/events",
    response_class=EventStreamResponse,
    response_description="Every change of every job of the caller, from now (or a position) on",
    responses={
        200: {"model": JobEvent},
        **problems(*API_ERRORS, 400, meaning={401: "No valid bearer token or ticket"}),
    },
)
async def events(
    request: Request,
    last_event_id: Annotated[str | None, Header(json_schema_extra=FEED_POSITION)] = None,
    since: Annotated[str | None, Query(json_schema_extra=FEED_POSITION)] = None,
    ticket: str | None = None,
) -> Response:
    """Server-sent events of every change of every job of the caller: `id` = feed position,
    `event` = state, `data` = status record. Resumable with Last-Event-ID (or `?since=`);
    without either it starts from now. Never closes on its own."""
    principal = principal_of(request, ticket)
    state = request.app.state
    position = cursor_of(last_event_id, since)
    # Once the 200 is sent the stream could only end: a backend that does not answer now
    # gets the 503 every /v1 route answers then (`within_feed` may read it too).
    await state.runtime.answering()
    with opening(state.runtime.hub) as place:
        cursor = await within_feed(state.runtime.hub, position)
    present = presenter_of(request)
    stream = owner_stream(
        state.runtime.hub, state.offload, principal, cursor, present.row, place=place
    )
    return EventStreamResponse(stream)


@router.get(
    "/jobs/{job_id}/events",
    response_class=EventStreamResponse,
    response_description="Every change of the job until its final state, then the stream ends",
    responses={
        200: {"model": JobEvent},
        204: {
            "description": "The job is final and no change of it follows the position asked "
            "for (an EventSource that resumes after the stream ended stops reconnecting)"
        },
        **problems(*API_ERRORS, 400, 404, 422, meaning={401: "No valid bearer token or ticket"}),
    },
)
async def job_events(
    request: Request,
    job_id: str,
    last_event_id: Annotated[str | None, Header(json_schema_extra=FEED_POSITION)] = None,
    since: Annotated[str | None, Query(pattern="^[0-9]{1,18}$")] = None,
    ticket: str | None = None,
) -> Response:
    """Server-sent events of every change of the job, until its final state; 204 when it is
    final and nothing follows the position asked for. A browser's EventSource passes a
    ticket (`?ticket=`, as on /v1/events) where it cannot send an Authorization header."""
    principal = principal_of(request, ticket)
    state = request.app.state
    row = await state.offload.get(job_id, owner=principal)
    if row is None:
        raise job_not_found(job_id)
    resumed = cursor_of(last_event_id, None)  # Last-Event-ID wins; 400 if it is no position
    hub = state.runtime.hub
    if resumed is None and since is not None:
        resumed = int(since)  # (digits only: `+1` and ` 1` are 422s, as on int they were not)
    with opening(hub) as place:
        cursor = await within_feed(hub, resumed) or 0
        present = presenter_of(request).row
        response = await job_events_response(hub, state.offload, row, cursor, present, place)
    return unless_streaming(hub, place, response)


def _message(change: Change, present: Any) -> str:
    data = {
        "type": "change",
        "id": change.seq,
        "event": change.row.state.value,
        "data": present(change.row),
    }
    return orjson.dumps(data).decode()


async def _opened(websocket: WebSocket) -> Hub:
    """The hub, once the web tier is open; a 503 problem while the backend is unreachable."""
    try:
        hub: Hub = await websocket.app.state.runtime.ensure()
        await websocket.app.state.runtime.answering()  # refused now, not accepted to close
        return hub
    except BackendError as exc:
        raise backend_unavailable(exc) from None


async def _handshake(websocket: WebSocket) -> tuple[Hub, str, int | None, Place | None] | None:
    """The hub, the caller, the position to resume after and the stream's place among
    the process's (`Hub.admit`), once the handshake passes every check; None once it is
    refused (a problem document, where the server can)."""
    query = websocket.query_params
    try:
        refuse_cross_site(websocket)  # no CORS for WebSockets: another site could read
        hub = await _opened(websocket)
        await authenticate_unless_ticket(websocket)
        principal = principal_of(websocket, query.get("ticket"))
        with opening(hub) as place:
            cursor = await within_feed(hub, cursor_of(None, query.get("since")))
            return hub, principal, cursor, place
    except HTTPException as refused:  # a Problem, or the auth hook's own answer (its 401)
        await refuse_handshake(websocket, as_problem(refused))
    except BackendError as exc:
        await refuse_handshake(websocket, backend_unavailable(exc))
    except Exception as exc:  # the auth hook's crash: a logged 500, as on every route
        if out_of_resources(exc):  # (as `on_crash` answers a request: no fault of its)
            await refuse_handshake(websocket, server_overloaded(exc, "WebSocket"))
            return None
        log.exception("unhandled error", extra={"action": "web_error"})
        await refuse_handshake(websocket, Problem(500, "internal error"))
    return None


@router.websocket("/ws")
async def ws(websocket: WebSocket) -> None:
    """Every change of every job of the caller, as JSON text messages.

    The first message is `{"type": "hello", "cursor": n}`; then one `{"type": "change",
    "id": seq, "event": state, "data": record}` per change. Resume with `?since=<id>`.
    Authenticate with `Authorization: Bearer …` or `?ticket=` from POST /v1/ws-ticket.
    """
    opened = await _handshake(websocket)
    if opened is None:
        return  # refused
    hub, principal, cursor, place = opened
    state = websocket.app.state
    feed = state.offload
    present = presenter_of(websocket)
    with hub.subscribe(owner=principal, place=place) as sub:
        try:
            last = await hub.now() if cursor is None else cursor
        except BackendError as exc:
            await refuse_handshake(websocket, backend_unavailable(exc))
            return
        await websocket.accept()
        await websocket.send_text(orjson.dumps({"type": "hello", "cursor": last}).decode())

        async def pump() -> None:
            changes = follow_owner(
                hub,
                feed,
                sub,
                principal,
                last,
                replay=cursor is not None,
                keepalive_s=DEFAULT_WS_KEEPALIVE_S,
            )
            async with contextlib.aclosing(changes):
                async for change in changes:
                    if change is None:
                        await websocket.send_text('{"type":"keepalive"}')
                    else:
                        await websocket.send_text(_message(change, present.row))

        async def drain() -> None:  # client messages are not used; this notices the close
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass

        tasks = [asyncio.create_task(pump()), asyncio.create_task(drain())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.warning(
                    "websocket stream ended: %s", task.exception(), extra={"action": "ws_error"}
                )
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):  # closed already, or gone
        await websocket.close()
