"""A task backend's OPTIONS, and the one offload App per configuration in a process."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings

from ...app import App
from ...errors import ConfigurationError
from ._same_db import same_database
from .calls import TaskCall, kind_of

#: Attempts a task gets: one, as Django's tasks promise (OPTIONS `max_attempts` raises it).
DEFAULT_MAX_ATTEMPTS = 1
#: The Django database whose transactions an enqueue follows (OPTIONS `database`).
DEFAULT_DATABASE = "default"
#: The environment variable naming the task backend (alias in TASKS) a worker serves.
BACKEND_ENV = "OFFLOAD_DJANGO_BACKEND"
_KNOWN = {"url", "database", "same_transaction", "max_attempts", "timeout"}


@dataclass(frozen=True, slots=True)
class TaskConfig:
    """What one `TASKS` entry of `OffloadBackend` says.

    Attributes:
        url: the offload backend's URL: OPTIONS `url`, else the `OFFLOAD_URL` setting, else
            None (offload's own default: the OFFLOAD_URL environment variable).
        database: the Django database alias whose transactions an enqueue follows.
        same_transaction: enqueue inside that database's transaction (True), after it
            commits (False), or None: inside it when `url` names the same PostgreSQL
            database and search_path.
        max_attempts: attempts a task gets before it is FAILED.
        timeout: seconds one attempt may run (None: no limit).
        queues: the backend's QUEUES (one offload kind each).
    """

    url: str | None
    database: str
    same_transaction: bool | None
    max_attempts: int
    timeout: float | None
    queues: tuple[str, ...]

    @classmethod
    def of(cls, options: dict[str, Any], queues: set[str]) -> TaskConfig:
        """The configuration of OPTIONS and QUEUES.

        Raises:
            ConfigurationError: an unknown option, or one of the wrong type.
        """
        unknown = set(options) - _KNOWN
        if unknown:
            raise ConfigurationError(f"OffloadBackend has no option {sorted(unknown)[0]!r}")
        attempts = options.get("max_attempts", DEFAULT_MAX_ATTEMPTS)
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ConfigurationError(f"max_attempts must be an int of at least 1: {attempts!r}")
        timeout = options.get("timeout")
        if isinstance(timeout, timedelta):
            timeout = timeout.total_seconds()
        return cls(
            url=options.get("url") or getattr(settings, "OFFLOAD_URL", None),
            database=options.get("database", DEFAULT_DATABASE),
            same_transaction=options.get("same_transaction"),
            max_attempts=attempts,
            timeout=None if timeout is None else float(timeout),
            queues=tuple(sorted(queues)) or ("default",),
        )

    def joins(self, db: Any) -> bool:
        """Whether an enqueue goes inside the transaction of Django's connection `db` (else
        after it commits): the option, or whether `url` names `db`'s PostgreSQL database
        with the same `options` (search_path): anything else, or unsure, is after."""
        if self.same_transaction is not None:
            return self.same_transaction
        if db.vendor != "postgresql" or self.url is None:
            return False
        return same_database(self.url, db.settings_dict)


_apps: dict[TaskConfig, App] = {}
_lock = threading.Lock()


def app_for(config: TaskConfig) -> App:
    """The process's App of `config` (Django makes a backend per thread; they share it):
    one kind per queue, `http=False` (a task is enqueued by Python code, never by a
    request naming a function)."""
    with _lock:
        app = _apps.get(config)
        if app is None:
            app = App("django", url=config.url)
            for queue in config.queues:
                message = type(f"TaskCall_{queue}", (TaskCall,), {"__module__": __name__})
                app.message(
                    kind_of(queue),
                    queue=queue,
                    max_attempts=config.max_attempts,
                    timeout=config.timeout,
                    http=False,
                )(message)
            _apps[config] = app
        return app
