"""What the HTTP server `offload web` runs (uvicorn) needs beyond its defaults: a bound on a
request's head (its line and header fields), and the server's own refusals, made before any
route runs, as problem documents like every other error of the API.

uvicorn's httptools parser reads header fields of any size (a 50 MB header was taken, and
held in memory until it ended); its h11 parser bounds them, with a plain-text 400.
"""

from __future__ import annotations

import asyncio
import functools
from http import HTTPStatus
from typing import Any

from .problems import problem

#: The most a request's line and header fields may take, in bytes: eight times what
#: browsers send at most in practice, and the bound of common proxies' large header buffers.
MAX_HEAD_BYTES = 64 * 1024
#: The most a WebSocket client's message may take, in bytes: /v1/ws reads none (it only
#: notices the close), so a larger one closes the connection (1009) rather than being read
#: whole up to uvicorn's 16 MiB.
MAX_WS_MESSAGE_BYTES = 4 * 1024
#: What a head's end looks like (the blank line after its last field).
_HEAD_END = b"\r\n\r\n"
#: After a refusal, how long what the client still sends is read and dropped before the
#: connection closes: closed with unread bytes, a socket resets the connection, and the
#: client may lose the answer (a "lingering close", as nginx makes).
LINGER_S = 2.0
#: How long a request's head may take to arrive whole, from the connection's start or the
#: previous answer's end (seconds): past it, a connection that sent nothing is closed and
#: one that sent part of a head is answered 408. uvicorn bounds no head in time, so a
#: client that opens connections and sends nothing, or a byte now and then, would hold them
#: (and the process's file descriptors) for ever.
HEAD_TIMEOUT_S = 10.0
#: How long a request's body may go without a byte arriving (seconds), while the server
#: waits for it (not while it paused reading itself): past it, the connection is closed,
#: and the route reading it sees the client gone.
BODY_IDLE_S = 30.0


def refusal(status: int, detail: str, slug: str) -> bytes:
    """A whole HTTP/1.1 answer that refuses a request before any route: a problem document,
    and the connection closed (what follows the head cannot be read as a request)."""
    body = problem(status, detail, slug=slug).body
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "content-type: application/problem+json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + bytes(body)


#: The detail and type of a request the server cannot parse.
_MALFORMED = ("the request is not valid HTTP/1.1", "malformed-request")


def server_options() -> dict[str, Any]:
    """The `uvicorn.Config` options that bound a request's head and answer the server's own
    refusals as problem documents: with httptools (the `speed` extra) a head over
    `MAX_HEAD_BYTES` is a 431, else h11's bound makes it a 400; and that bound a WebSocket
    client's message (`MAX_WS_MESSAGE_BYTES`)."""
    bounds = {"h11_max_incomplete_event_size": MAX_HEAD_BYTES, "ws_max_size": MAX_WS_MESSAGE_BYTES}
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # no httptools: h11, which bounds what it buffers
        return {"http": _h11_protocol(), **bounds}
    return {"http": _bounded(HttpToolsProtocol), **bounds}


class _Refusing:
    """What both protocols share: a refusal answered once the responses under way are sent,
    then a lingering close; and the time a request's head and body may take (`HEAD_TIMEOUT_S`,
    `BODY_IDLE_S`).

    A head is awaited from the connection's start and from each answer's end with nothing
    running; it has arrived once the protocol made a request of it (its `cycle`). A body is
    awaited while that request says more is to come."""

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    _refused: bool = False
    _owed: bytes | None = None
    _owed_body_of: Any = None  # the queued request whose body the refusal owed is about
    _linger: asyncio.TimerHandle | None = None
    _head_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None
    _head_bytes = 0  # of the head awaited, read so far
    _seen_cycle: Any = None  # the last request whose head arrived

    def connection_made(self, transport: asyncio.BaseTransport, *args: Any) -> None:
        super().connection_made(transport, *args)  # type: ignore[misc]
        self._await_head()

    def data_received(self, data: bytes) -> None:
        if self._head_timer is not None:
            self._head_bytes += len(data)
        super().data_received(data)  # type: ignore[misc]
        cycle = getattr(self, "cycle", None)
        if cycle is not self._seen_cycle:  # a request's head arrived whole
            self._seen_cycle = cycle
            self._stop("_head_timer")
        if cycle is not None and not self._request_ended():
            # A byte of its body came (read by the route, or dropped after an answer that
            # did not wait for it): its idle time starts again.
            self._stop("_body_timer")
            self._body_timer = self.loop.call_later(BODY_IDLE_S, self._body_late)
            return
        self._stop("_body_timer")
        if cycle is not None and cycle.response_complete and self._head_timer is None:
            self._await_next()  # the body of a request answered early has ended

    def _await_next(self) -> None:
        """Await the next request's head, unless the connection is done with, a request
        is being answered, or the last one's body is still coming (after an answer that did
        not wait for it: its end is awaited first, under `BODY_IDLE_S`)."""
        if self._refused or self._gone() or self._answering() or not self._request_ended():
            return
        self._await_head()

    def _request_ended(self) -> bool:
        """Whether the last request's body has all come (the protocol's parser says: its
        `cycle.more_body` stays true for a body that ends after the answer)."""
        raise NotImplementedError

    def _await_head(self) -> None:
        self._stop("_head_timer")
        self._head_bytes = 0
        # The request whose head arrived last: only one made after it is a new head (h11
        # makes a pipelined request's as the previous answer completes, not as it reads).
        self._seen_cycle = getattr(self, "cycle", None)
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_late)

    def _stop(self, name: str) -> None:
        timer = getattr(self, name)
        if timer is not None:
            timer.cancel()
            setattr(self, name, None)

    def _gone(self) -> bool:
        """Whether this connection is no longer this protocol's to act on: closing, or
        upgraded to a WebSocket (its transport handed to another protocol)."""
        protocol: object = self.transport.get_protocol()
        return self.transport.is_closing() or protocol is not self

    def _head_late(self) -> None:
        self._head_timer = None
        if self._gone() or self._refused or self._answering():
            return
        if not self._head_bytes:  # an idle connection: closed, as keep-alive's timeout does
            self.transport.close()
            return
        detail = f"the request's line and headers did not arrive within {HEAD_TIMEOUT_S:g} s"
        self.refuse(refusal(408, detail, "request-timeout"))

    def _body_late(self) -> None:
        self._body_timer = None
        if self._gone() or self._request_ended():
            return
        flow = getattr(self, "flow", None)
        if flow is not None and flow.read_paused:  # the route reads slowly, not the client
            self._body_timer = self.loop.call_later(BODY_IDLE_S, self._body_late)
            return
        self.transport.close()  # the route reading it sees the client gone

    def refuse(self, answer: bytes) -> None:
        """Read no more requests; answer `answer` once the responses under way are sent
        (written now, it would be read as theirs), and close once the client had time to
        read it."""
        self._refused = True
        if self._answering():
            self._owed = answer
        else:
            self._send_refusal(answer)

    def _answering(self) -> bool:
        cycle = getattr(self, "cycle", None)
        return cycle is not None and not cycle.response_complete

    def _send_refusal(self, answer: bytes) -> None:
        if self.transport.is_closing():
            return
        self.transport.write(answer)
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the answer is whole: the client may read it to EOF
        self._linger = asyncio.get_running_loop().call_later(LINGER_S, self.transport.close)
        flow = getattr(self, "flow", None)
        if flow is not None:  # paused for a pipelined request: read (and drop) again
            flow.resume_reading()

    def send_400_response(self, msg: str) -> None:
        cycle = getattr(self, "cycle", None)
        if cycle is None or not cycle.more_body or cycle.response_started:
            self.refuse(refusal(400, *_MALFORMED))
            return
        # The body of the last request does not parse (a chunk's size that is no number):
        # its route would wait for the rest, which cannot come, and the refusal for the
        # route. The route hears that its client is gone, and the refusal is its answer:
        # now, or, for a request queued behind one still being answered, once that one's
        # answer is sent.
        if self._queued(cycle):
            self._owed_body_of = cycle
            self.refuse(refusal(400, *_MALFORMED))
            return
        self._refused = True
        self._answer_for(cycle, refusal(400, *_MALFORMED))

    def _queued(self, cycle: Any) -> bool:
        """Whether `cycle`'s request waits behind others still being answered (httptools
        queues a pipelined request so, and starts the oldest as each answer ends)."""
        return any(c is cycle for c, _ in getattr(self, "pipeline", ()))

    def _answer_for(self, cycle: Any, answer: bytes) -> None:
        """Answer `answer` for the request of `cycle`, whose route is told that its client is
        gone (whatever it sends is dropped, a `100 Continue` too)."""
        cycle.disconnected = True
        cycle.waiting_for_100_continue = False
        cycle.message_event.set()
        self._send_refusal(answer)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if self._owed is not None and not self._answering():
            answer, self._owed = self._owed, None
            self._send_refusal(answer)
        elif (
            self._owed is not None
            and self._owed_body_of is not None
            and not self._queued(self._owed_body_of)
        ):
            answer, self._owed = self._owed, None  # (its request begins now: see above)
            cycle, self._owed_body_of = self._owed_body_of, None
            self._answer_for(cycle, answer)
        else:
            self._await_next()

    def connection_lost(self, exc: Exception | None) -> None:
        for name in ("_linger", "_head_timer", "_body_timer"):
            self._stop(name)
        super().connection_lost(exc)  # type: ignore[misc]


@functools.cache
def _h11_protocol() -> type:
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class ProblemH11(_Refusing, H11Protocol):
        def _request_ended(self) -> bool:
            return bool(self.conn.their_state is not h11.SEND_BODY)

        def data_received(self, data: bytes) -> None:
            if not self._refused:  # else dropped while the connection lingers
                super().data_received(data)

    return ProblemH11


class _HeadBound(_Refusing):
    """httptools' protocol (the class after this one), bounding each request's head as it
    arrives: past `MAX_HEAD_BYTES` without its end, the request is refused (431) before the
    parser buffers more of it. The head is what the parser has passed on of it (its target
    and fields) and what came since it last passed anything on: the parser's events tell
    where a head begins and ends, whatever else one read carries."""

    logger: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # a connection begins with a request's head
        self._fields = 0  # bytes of the head the parser has passed on
        self._since = 0  # bytes read since the parser last passed anything on
        self._tail = b""  # the last bytes read, where a head's end may begin

    def on_message_begin(self) -> None:
        super().on_message_begin()  # type: ignore[misc]
        self._since = self._fields = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)  # type: ignore[misc]
        self._since, self._fields = 0, self._fields + len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)  # type: ignore[misc]
        self._since, self._fields = 0, self._fields + len(name) + len(value) + 4

    def _request_ended(self) -> bool:
        return self._in_head  # (its body's end begins the next head)

    def on_headers_complete(self) -> None:
        self._in_head, self._since = False, 0
        super().on_headers_complete()  # type: ignore[misc]

    def on_body(self, body: bytes) -> None:
        super().on_body(body)  # type: ignore[misc]
        self._since = 0

    def on_message_complete(self) -> None:
        super().on_message_complete()  # type: ignore[misc]
        self._in_head, self._since, self._fields = True, 0, 0

    def data_received(self, data: bytes) -> None:
        if self._refused:  # dropped while the connection lingers
            return
        if self._in_head:
            if self._past_bound(data):
                self.logger.warning("request head over %d bytes: refused", MAX_HEAD_BYTES)
                detail = f"the request's line and headers exceed {MAX_HEAD_BYTES} bytes"
                self.refuse(refusal(431, detail, "request-head-too-large"))
                return
            self._since += len(data)  # back to 0 when the parser passes something on
        super().data_received(data)
        tail = len(_HEAD_END) - 1
        self._tail = data[-tail:] if len(data) >= tail else (self._tail + data)[-tail:]

    def _past_bound(self, data: bytes) -> bool:
        """Whether `data` takes the head past `MAX_HEAD_BYTES` before it ends."""
        used = self._fields + self._since
        if used + len(data) <= MAX_HEAD_BYTES:
            return False
        room = max(0, MAX_HEAD_BYTES - used)
        return _HEAD_END not in self._tail + data[:room]


@functools.cache
def _bounded(base: type) -> type:
    """httptools' protocol `base`, its requests' heads bounded (`_HeadBound`)."""
    return type("BoundedHead", (_HeadBound, base), {})
