"""OpenTelemetry tracing: the producer, consumer and delivery spans, and the envelope's trace.

One trace follows a job from the request that submitted it to its webhook or email:

    POST /v1/jobs/{kind}          SERVER    (FastAPI's own telemetry, or its instrumentation)
    └─ send {queue}               PRODUCER  App.enqueue / enqueue_many / enqueue_in / submit
       └─ process {queue}         CONSUMER  the worker, one span per attempt; its handler's
          │                                 spans are its children (threads included)
          └─ process offload.notify         the delivery job the job's end enqueued
             └─ POST  |  send email  CLIENT the webhook request or the email handed to SMTP

The producer injects its W3C `traceparent` (and `tracestate`) into the envelope's `trace`,
which every backend stores with the job. The consumer span takes that context as its parent
(one message per span, so the trace reads as one tree) and links to it too, as the messaging
semantic conventions ask of every process span. Attribute names follow those conventions
(`messaging.*`), with `offload.job.kind` and `offload.job.attempt` of our own.

Only the API (`opentelemetry-api`, the `otel` extra) is imported. Spans are made only when a
real tracer provider (an SDK) was the global one at the last `resolve`, which an App does as
it opens: the hooks then read one module global, and while tracing is off each returns at
once and envelopes carry no trace. `bench/tracing.py` measures what the hooks cost.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from .contract import Envelope, JobState, Lease, Outcome

try:
    from opentelemetry import context as _context
    from opentelemetry import trace as _api
    from opentelemetry.context import Context as _Context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    _API = True
except ImportError:  # pragma: no cover - the `otel` extra is not installed
    _API = False
#: Whether OpenTelemetry's API is installed (spans need an SDK besides: `active`).
API = _API

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

#: The instrumentation scope of offload's spans, and the `messaging.system` they name.
TRACER_NAME = "offload"
#: Outcomes of an attempt that mark its process span as an error.
_ERROR_STATES = frozenset({JobState.RETRYING, JobState.FAILED, JobState.DEAD})

if _API:
    #: The API's own providers: no SDK is configured while the global one is one of these.
    _UNCONFIGURED: tuple[type, ...] = (_api.ProxyTracerProvider, _api.NoOpTracerProvider)
    #: The envelope's `trace` is W3C Trace Context, whatever the process's global propagator.
    _W3C = TraceContextTextMapPropagator()
#: offload's tracer while an SDK is configured, else None: what every hook reads.
_tracer: Tracer | None = None


def resolve() -> bool:
    """Look up whether an SDK is configured (a tracer provider other than the API's own is
    the global one), for every hook to read. An App does it when it opens (the web tier's
    start, a worker's start, the first enqueue); call it again after configuring (or
    replacing) the SDK later than that. Returns whether spans are made now."""
    global _tracer
    _tracer = None
    if _API:
        provider = _api.get_tracer_provider()
        if not isinstance(provider, _UNCONFIGURED):
            from . import __version__

            _tracer = provider.get_tracer(TRACER_NAME, __version__)
    return _tracer is not None


def active() -> bool:
    """Whether offload makes spans (as of the last `resolve`)."""
    return _tracer is not None


def current() -> Context | None:
    """The caller's context, to parent a producer span that starts on another thread
    (`App.enqueue_sync`); None while tracing is off."""
    return None if _tracer is None else _context.get_current()


def inject(carrier: dict[str, str]) -> None:
    """Add the current span's `traceparent` (and `tracestate`) to `carrier`, e.g. the
    headers of a webhook request; nothing while tracing is off."""
    if _tracer is not None:
        _W3C.inject(carrier)


# -- the producer ----------------------------------------------------------------------------


def send(
    envelopes: Sequence[Envelope], parent: Context | None = None
) -> AbstractContextManager[Sequence[Envelope]]:
    """The producer span `send {queue}` around storing `envelopes` (one batch), a child of
    the current span (or of `parent`). Entering it gives the envelopes to store: each carries
    the span's context in `trace` (one given a trace already keeps its own). While tracing is
    off, the envelopes as they are."""
    tracer = _tracer
    if tracer is None or not envelopes:
        return nullcontext(envelopes)
    return _send(tracer, envelopes, parent)


@contextlib.contextmanager
def _send(
    tracer: Tracer, envelopes: Sequence[Envelope], parent: Context | None
) -> Iterator[Sequence[Envelope]]:
    first = envelopes[0]
    queues, kinds = {e.queue for e in envelopes}, {e.kind for e in envelopes}
    one = first.id if len(envelopes) == 1 else None
    with _producer(tracer, queues, kinds, len(envelopes), one, parent) as carrier:
        yield [e if e.trace else dataclasses.replace(e, trace=dict(carrier)) for e in envelopes]


def send_stamping(
    queues: Collection[str], kinds: Collection[str], count: int
) -> AbstractContextManager[dict[str, str] | None]:
    """`send` for a batch of `count` jobs stamped inside the span (a streamed bulk
    enqueue): entering it gives the `trace` each envelope is to carry, None while tracing
    is off."""
    tracer = _tracer
    if tracer is None or not count:
        return nullcontext(None)
    return _producer(tracer, queues, kinds, count, None, None)


@contextlib.contextmanager
def _producer(
    tracer: Tracer,
    queues: Collection[str],
    kinds: Collection[str],
    count: int,
    message_id: str | None,
    parent: Context | None,
) -> Iterator[dict[str, str]]:
    """The producer span of a batch; gives its W3C context, for the envelopes."""
    queue = next(iter(queues)) if len(queues) == 1 else None
    attributes: dict[str, Any] = {
        "messaging.system": TRACER_NAME,
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
    }
    if queue is not None:
        attributes["messaging.destination.name"] = queue
    if message_id is not None:
        attributes["messaging.message.id"] = message_id
    else:
        attributes["messaging.batch.message_count"] = count
    if len(kinds) == 1:
        attributes["offload.job.kind"] = next(iter(kinds))
    name = "send" if queue is None else f"send {queue}"
    with tracer.start_as_current_span(
        name, context=parent, kind=_api.SpanKind.PRODUCER, attributes=attributes
    ):
        carrier: dict[str, str] = {}
        _W3C.inject(carrier)
        yield carrier


# -- the consumer ----------------------------------------------------------------------------


def process(lease: Lease) -> AbstractContextManager[Span | None]:
    """The consumer span `process {queue}` of one attempt: its parent is the producer's
    context from the envelope (none: a new trace), and it links to it. Code run inside it
    (the handler) makes its spans children of it. Gives the span (None while tracing is off)
    for `ended`."""
    tracer = _tracer
    if tracer is None:
        return nullcontext(None)
    return _process(tracer, lease)


@contextlib.contextmanager
def _process(tracer: Tracer, lease: Lease) -> Iterator[Span]:
    env = lease.envelope
    # From an empty context, never the worker's own: a job's span belongs to its trace.
    producer = _W3C.extract(env.trace or {}, context=_Context())
    sent = _api.get_current_span(producer).get_span_context()
    attributes: dict[str, Any] = {
        "messaging.system": TRACER_NAME,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": env.queue,
        "messaging.message.id": env.id,
        "messaging.client.id": lease.worker,
        "offload.job.kind": env.kind,
        "offload.job.attempt": env.attempt,
    }
    with tracer.start_as_current_span(
        f"process {env.queue}",
        context=producer,
        kind=_api.SpanKind.CONSUMER,
        attributes=attributes,
        links=[_api.Link(sent)] if sent.is_valid else None,
        record_exception=False,  # an attempt's failure is recorded from its outcome
        set_status_on_exception=False,
    ) as span:
        yield span


def ended(span: Span | None, outcome: Outcome) -> dict[str, str] | None:
    """Record how the attempt of `span` ended (a failure: status ERROR and an `exception`
    event from the stored error) and give the span's context, to carry to the deliveries
    its end enqueues; None while tracing is off."""
    if span is None:
        return None
    span.set_attribute("offload.job.state", outcome.state.value)
    error = outcome.error
    if outcome.state in _ERROR_STATES and error:
        kind, message = str(error.get("type", "Error")), str(error.get("message", ""))
        span.add_event(
            "exception",
            {
                "exception.type": kind,
                "exception.message": message,
                "exception.stacktrace": str(error.get("traceback", "")),
            },
        )
        span.set_attribute("error.type", kind)
        span.set_status(_api.Status(_api.StatusCode.ERROR, f"{kind}: {message}"))
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=_api.set_span_in_context(span))
    return carrier or None


# -- deliveries ------------------------------------------------------------------------------


def deliver(
    channel: str, target: str, *, job_id: str, notification: str
) -> AbstractContextManager[Span | None]:
    """The CLIENT span of one delivery attempt: `POST` for a webhook (HTTP client attributes;
    `target` is the URL as it may be shown, without credentials or query), `send email` for
    an email (the address is not recorded). A failure sets status ERROR and records the
    exception. Gives the span (None while tracing is off) for `delivered`."""
    tracer = _tracer
    if tracer is None:
        return nullcontext(None)
    return _deliver(tracer, channel, target, job_id=job_id, notification=notification)


@contextlib.contextmanager
def _deliver(
    tracer: Tracer, channel: str, target: str, *, job_id: str, notification: str
) -> Iterator[Span]:
    attributes: dict[str, Any] = {
        "offload.delivery.channel": channel,
        "offload.notification.id": notification,
        "offload.job.id": job_id,
    }
    name = "send email"
    if channel == "webhook":
        name = "POST"
        parts = urlsplit(target)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        attributes.update(
            {
                "http.request.method": "POST",
                "url.full": target,
                "server.address": parts.hostname or "",
                "server.port": port,
            }
        )
    with tracer.start_as_current_span(
        name, kind=_api.SpanKind.CLIENT, attributes=attributes
    ) as span:
        try:
            yield span
        except Exception as exc:
            span.set_attribute("error.type", type(exc).__name__)
            code = getattr(exc, "code", None)
            if channel == "webhook" and isinstance(code, int):
                span.set_attribute("http.response.status_code", code)
            raise


def delivered(span: Span | None, channel: str, code: int | None) -> None:
    """Record the receiver's answer to a delivery (the HTTP status, or the SMTP reply)."""
    if span is None or code is None:
        return
    key = "http.response.status_code" if channel == "webhook" else "offload.smtp.reply_code"
    span.set_attribute(key, code)


# -- the request's own span --------------------------------------------------------------------

#: Query parameters of offload's routes that carry a secret or an address: a stream's
#: ticket, a download's signature, a job's `callback_url` (credentials, tokens) and
#: `notify_email`, the dashboard notice's MAC (and `email`, which none reads).
SECRET_QUERY_KEYS = frozenset(
    {"ticket", "signature", "callback_url", "notify_email", "email", "nmac"}
)


def redact_query(query_string: bytes) -> None:
    """Rewrite the current span's `url.query` (the request's SERVER span, which FastAPI's
    telemetry or an ASGI instrumentation records as sent) with the values of
    `SECRET_QUERY_KEYS` replaced by `REDACTED`, as offload's access log leaves out the
    query. Keys are compared as the routes read them, decoded (`tick%65t` is `ticket`).
    Nothing unless such a key is there and the span records."""
    if not _API or not query_string:
        return
    span = _api.get_current_span()
    if not span.is_recording():
        return
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    if not any(k in SECRET_QUERY_KEYS for k, _ in pairs):
        return
    span.set_attribute(
        "url.query",
        urlencode([(k, "REDACTED" if k in SECRET_QUERY_KEYS else v) for k, v in pairs]),
    )
