"""The web tier as an HTTP function: `create_app` behind Mangum (API Gateway, Lambda URLs)."""

from __future__ import annotations

from typing import Any

from mangum import Mangum

from ...app import App
from ...web import AuthHook, create_app
from ._runtime import thread_loop


def http_handler(app: App, *, auth: AuthHook | None = None, **mangum: Any) -> Mangum:
    """A Lambda handler `(event, context)` serving `create_app(app, auth=auth)`.

    The ASGI lifespan is off: the app opens its backend on the first request and keeps it
    open while the function stays warm (one event loop for the function's life). Routes,
    authentication and answers are the web tier's own; `mangum` options (for example
    `api_gateway_base_path`) go to Mangum.
    """
    thread_loop()  # Mangum takes the thread's loop; make it without a deprecation warning
    mangum.setdefault("lifespan", "off")
    return Mangum(create_app(app, auth=auth), **mangum)
