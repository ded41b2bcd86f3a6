"""One line per log record where offload sets the root's handler up (`offload worker`,
`manage.py offload_worker`).

A library may give its own logger a console handler that also propagates to the root:
Django's default LOGGING gives `django` one (shown when DEBUG is on). A `django.tasks` line
would print twice: once plain, once formatted by offload's root handler.
"""

from __future__ import annotations

import logging


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
