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
#: What a head's end looks like (the blank line after its last field).
_HEAD_END = b"\r\n\r\n"
#: After a refusal, how long what the client still sends is read and dropped before the
#: connection closes: closed with unread bytes, a socket resets the connection, and the
#: client may lose the answer (a "lingering close", as nginx makes).
LINGER_S = 2.0


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
    `MAX_HEAD_BYTES` is a 431, else h11's bound makes it a 400."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # no httptools: h11, which bounds what it buffers
        return {"http": _h11_protocol(), "h11_max_incomplete_event_size": MAX_HEAD_BYTES}
    return {"http": _bounded(HttpToolsProtocol), "h11_max_incomplete_event_size": MAX_HEAD_BYTES}


class _Refusing:
    """What both protocols share: a refusal sent, then a lingering close."""

    transport: asyncio.Transport
    _refused: bool = False
    _linger: asyncio.TimerHandle | None = None

    def refuse(self, answer: bytes) -> None:
        """Send `answer`, stop reading requests, and close once the client had time to read
        it (or at once, when it closes its end)."""
        self._refused = True
        self.transport.write(answer)
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the answer is whole: the client may read it to EOF
        self._linger = asyncio.get_running_loop().call_later(LINGER_S, self.transport.close)

    def send_400_response(self, msg: str) -> None:
        self.refuse(refusal(400, *_MALFORMED))

    def eof_received(self) -> None:
        if self._refused:  # the client is done sending: nothing to wait for
            self.transport.close()
            return
        super().eof_received()  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger is not None:
            self._linger.cancel()
        super().connection_lost(exc)  # type: ignore[misc]


@functools.cache
def _h11_protocol() -> type:
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class ProblemH11(_Refusing, H11Protocol):
        def data_received(self, data: bytes) -> None:
            if not self._refused:  # else dropped while the connection lingers
                super().data_received(data)

    return ProblemH11


@functools.cache
def _bounded(base: type) -> type:
    class BoundedHead(_Refusing, base):  # type: ignore[misc]
        """httptools' protocol, counting each request's head as it arrives: past
        `MAX_HEAD_BYTES` without its end, the request is refused (431) before the parser
        buffers more of it."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._in_head = True  # a connection begins with a request's head
            self._head_bytes = 0
            self._tail = b""  # the last bytes read, where a head's end may begin

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head, self._head_bytes, self._tail = True, 0, b""

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def data_received(self, data: bytes) -> None:
            if self._refused:  # dropped while the connection lingers
                return
            if self._in_head and self._head_bytes + len(data) > MAX_HEAD_BYTES:
                room = MAX_HEAD_BYTES - self._head_bytes
                if _HEAD_END not in self._tail + data[:room]:
                    self.logger.warning("request head over %d bytes: refused", MAX_HEAD_BYTES)
                    detail = f"the request's line and headers exceed {MAX_HEAD_BYTES} bytes"
                    self.refuse(refusal(431, detail, "request-head-too-large"))
                    return
            super().data_received(data)
            if self._in_head:
                self._head_bytes += len(data)
                self._tail = (self._tail + data)[-(len(_HEAD_END) - 1) :]

    return BoundedHead
