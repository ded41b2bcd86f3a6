"""The web tier as an HTTP function: `create_app` behind Mangum (API Gateway, Lambda URLs)."""

from __future__ import annotations

import asyncio
from typing import Any

from mangum import Mangum
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...app import App
from ...web import AuthHook, create_app
from ._runtime import remaining_s, thread_loop

#: How long an event stream answers before it ends (the client's EventSource reconnects,
#: resuming from its last event's id): a buffered function answers only once it ends.
DEFAULT_STREAM_WINDOW_S = 10.0
#: A stream ends this long before the invocation's timeout, at the latest.
STREAM_MARGIN_S = 1.0


def http_handler(
    app: App,
    *,
    auth: AuthHook | None = None,
    stream_window_s: float = DEFAULT_STREAM_WINDOW_S,
    **mangum: Any,
) -> Mangum:
    """A Lambda handler `(event, context)` serving `create_app(app, auth=auth)`.

    The ASGI lifespan is off: the app opens its backend on the first request and keeps it
    open while the function stays warm (one event loop for the function's life). Routes,
    authentication and answers are the web tier's own; `mangum` options (for example
    `api_gateway_base_path`) go to Mangum. A function's answer is sent whole, once it ends,
    so a server-sent event stream ends after `stream_window_s` (or 1 s before the
    invocation's timeout): the client reconnects with the last event's id and resumes.
    """
    thread_loop()  # Mangum takes the thread's loop; make it without a deprecation warning
    mangum.setdefault("lifespan", "off")
    return Mangum(_StreamsEnd(create_app(app, auth=auth), stream_window_s), **mangum)


class _StreamsEnd:
    """ASGI middleware: a `text/event-stream` answer ends after `window_s` (or before the
    invocation's end), where it would follow the job until the function was killed."""

    def __init__(self, app: ASGIApp, window_s: float) -> None:
        self.app = app
        self.window_s = window_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        streaming = asyncio.Event()

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                if headers.get(b"content-type", b"").startswith(b"text/event-stream"):
                    streaming.set()
            await send(message)

        answer: asyncio.Future[None] = asyncio.ensure_future(self.app(scope, receive, watched))
        stream: asyncio.Future[Any] = asyncio.ensure_future(streaming.wait())
        try:
            await asyncio.wait({answer, stream}, return_when=asyncio.FIRST_COMPLETED)
            if not answer.done():
                left = remaining_s(scope.get("aws.context"))
                window = (
                    self.window_s if left is None else min(self.window_s, left - STREAM_MARGIN_S)
                )
                await asyncio.wait({answer}, timeout=max(window, 0.0))
            if answer.done():
                answer.result()
                return
            answer.cancel()
            await asyncio.gather(answer, return_exceptions=True)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            stream.cancel()
            answer.cancel()
