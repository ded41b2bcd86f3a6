"""One line per log record where offload sets the root's handler up (`offload worker`,
`manage.py offload_worker`), as text or as JSON (`JsonLines`).

A library may give its own logger a console handler that also propagates to the root:
Django's default LOGGING gives `django` one (shown when DEBUG is on). A `django.tasks` line
would print twice: once plain, once formatted by offload's root handler.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson


class ShownAbove(logging.Filter):
    """Drops, at a root handler, a record that a console handler (a StreamHandler, not a
    file) of a logger between the record's and the root already printed."""

    def filter(self, record: logging.LogRecord) -> bool:
        logger: logging.Logger | None = logging.getLogger(record.name)
        root = logging.getLogger()
        while logger is not None and logger is not root:
            for handler in logger.handlers:
                if _prints(handler, record):
                    return False
            logger = logger.parent if logger.propagate else None
        return True


def _prints(handler: logging.Handler, record: logging.LogRecord) -> bool:
    console = isinstance(handler, logging.StreamHandler) and not isinstance(
        handler, logging.FileHandler
    )
    return console and record.levelno >= handler.level and bool(handler.filter(record))


def print_once() -> None:
    """Give every root handler the `ShownAbove` filter (once): the one offload sets up, and
    those a project set up before (Django's `manage.py offload_worker` calls it as it
    imports the worker's app, before offload's own handler is there)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, ShownAbove) for f in handler.filters):
            handler.addFilter(ShownAbove())


#: What every LogRecord has: the rest of its attributes are the `extra` fields a caller gave.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonLines(logging.Formatter):
    """One JSON object per record (`OFFLOAD_LOG_FORMAT=json`): `time` (RFC 3339, UTC),
    `level`, `logger`, `message`, every `extra` field (`action`, `job_id`, ...), `trace_id`
    and `span_id` where the record was written inside a span (OpenTelemetry's), and
    `exception` (the traceback) where there is one; a field JSON cannot carry is its text."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _RECORD_FIELDS and name not in line:
                line[name] = value
        _trace_of(line)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return orjson.dumps(line, default=str).decode()


def _trace_of(line: dict[str, Any]) -> None:
    """Add the ids of the span the record was written in (a job's `process` span, a
    request's), in the W3C hex form tracing backends search by: a log line leads to its
    trace. Nothing where OpenTelemetry's API was never imported (no cost to import it)."""
    api = sys.modules.get("opentelemetry.trace")
    if api is None:
        return
    context = api.get_current_span().get_span_context()
    if context.is_valid and "trace_id" not in line and "span_id" not in line:
        # (the caller's own `extra` of either name stays, and no id of ours is paired with it)
        line["trace_id"] = format(context.trace_id, "032x")
        line["span_id"] = format(context.span_id, "016x")
