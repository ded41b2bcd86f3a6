"""OpenTelemetry for tests: an SDK tracer provider installed for one test (in memory), and
a span exporter that appends JSON lines to a file (for processes the test starts)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

from offload import tracing


def reset_global_provider() -> None:
    # The API sets its global provider once per process; the SDK's own tests reset these
    # two globals the same way (opentelemetry.test.globals_test.reset_trace_globals).
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None


@contextmanager
def global_provider(exporter: SpanExporter) -> Iterator[TracerProvider]:
    """An SDK provider exporting every span to `exporter` as it ends, as the global one
    while the block runs; afterwards the process has no SDK again."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reset_global_provider()
    trace.set_tracer_provider(provider)
    tracing.resolve()  # an App already open looks again
    try:
        yield provider
    finally:
        provider.shutdown()
        reset_global_provider()
        tracing.resolve()


@contextmanager
def in_memory() -> Iterator[InMemorySpanExporter]:
    """Spans of the block, kept in memory (`exporter.get_finished_spans()`)."""
    exporter = InMemorySpanExporter()
    with global_provider(exporter):
        yield exporter


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """A finished span as plain JSON: ids in hex, kinds and status by name."""
    ctx = span.get_span_context()
    assert ctx is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": _hex(ctx.trace_id, 32),
        "span_id": _hex(ctx.span_id, 16),
        "parent_id": _hex(span.parent.span_id, 16) if span.parent else None,
        "links": [
            {"trace_id": _hex(link.context.trace_id, 32), "span_id": _hex(link.context.span_id, 16)}
            for link in span.links
        ],
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
        "events": [
            {"name": event.name, "attributes": dict(event.attributes or {})}
            for event in span.events
        ],
        "start": span.start_time,
        "end": span.end_time,
        "service": (span.resource.attributes.get("service.name") if span.resource else None),
        "pid": os.getpid(),
    }


class JsonLinesExporter(SpanExporter):
    """Appends each finished span as one JSON line to `path` (O_APPEND, one write each)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_record(s)) + "\n" for s in spans)
        with self._lock, open(self.path, "a") as f:
            f.write(lines)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def read_spans(path: Path) -> list[dict[str, Any]]:
    """The spans a JsonLinesExporter wrote so far (a line still being written is skipped)."""
    if not path.exists():
        return []
    spans = []
    for line in path.read_text().splitlines():
        try:
            spans.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return spans


def tree(spans: Sequence[dict[str, Any]]) -> str:
    """The spans of one trace as an indented tree (children by start time): name, kind and
    the process (service) that recorded each, and `link → name` for each link."""
    by_id = {s["span_id"]: s for s in spans}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for s in spans:
        parent = s["parent_id"] if s["parent_id"] in by_id else None
        children.setdefault(parent, []).append(s)
    lines: list[str] = []

    def walk(parent: str | None, prefix: str) -> None:
        kids = sorted(children.get(parent, []), key=lambda s: s["start"])
        for i, s in enumerate(kids):
            last = i == len(kids) - 1
            branch = "" if parent is None else ("└─ " if last else "├─ ")
            links = [by_id[k["span_id"]]["name"] for k in s["links"] if k["span_id"] in by_id]
            shown = "".join(f"  (link → {name})" for name in links)
            lines.append(f"{prefix}{branch}{s['name']}  [{s['kind']}, {s['service']}]{shown}")
            walk(s["span_id"], prefix + ("" if parent is None else ("   " if last else "│  ")))

    walk(None, "")
    return "\n".join(lines)
