"""The web process's entry (`offload web --app tracedapp.web:app`): tracing configured, then
the message classes. FastAPI traces each request itself once a tracer provider is set."""

from __future__ import annotations

from tracedapp.otel import configure

configure("web")

from tracedapp.contracts import app  # noqa: E402

__all__ = ["app"]
