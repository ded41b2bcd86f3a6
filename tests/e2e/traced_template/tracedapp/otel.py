"""The OpenTelemetry SDK set up as a user would in each process, exporting every span as it
ends to the JSON-lines file the test reads (TRACE_FILE)."""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from tests.tracing_support import JsonLinesExporter


def configure(service: str) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(os.environ["TRACE_FILE"])))
    trace.set_tracer_provider(provider)
