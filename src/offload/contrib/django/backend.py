"""OffloadBackend: Django's `django.tasks` on offload's durable queue and workers."""

from __future__ import annotations

import functools
import os
from typing import Any

from django.core.checks import Error
from django.db import connections, transaction
from django.tasks import Task, TaskResult
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.exceptions import TaskResultDoesNotExist
from django.tasks.signals import task_enqueued
from django.utils.json import normalize_json

from ..._claim_check import encoded
from ..._signing import key_bytes, short_secret
from ...app import App
from ...contract import Envelope, JobRow
from ...settings import fallbacks_fault, parse_key_fallbacks
from .calls import TaskCall, check_arguments, kind_of
from .config import TaskConfig, app_for
from .principal import current_owner
from .results import priority_of, ready_result, result_of


class OffloadBackend(BaseTaskBackend):
    """A `django.tasks` backend: each task call is an offload job of kind
    `django.tasks.<queue>`, run by `manage.py offload_worker`.

    OPTIONS: `url` (offload's backend; default the OFFLOAD_URL setting, then the
    environment), `database` (the Django database whose transactions an enqueue follows,
    "default"), `same_transaction` (None: inside that transaction when `url` names the
    same PostgreSQL database, role and search_path, else after it commits),
    `max_attempts` (1), `timeout`.
    """

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.config = TaskConfig.of(self.options, self.queues)

    @property
    def app(self) -> App:
        """The process's offload App of this backend's configuration (shared by threads)."""
        return app_for(self.config)

    def check(self, **kwargs: Any) -> list[Error]:
        """`manage.py check` (and `runserver`, `migrate`): an OFFLOAD_SECRET_KEY that offload
        refuses (or one of its OFFLOAD_SECRET_KEY_FALLBACKS), which would otherwise fail the
        first request that enqueues a task."""
        secret = os.environ.get("OFFLOAD_SECRET_KEY")
        try:
            faults = [short_secret(key_bytes(secret)) if secret else None]
            fallbacks = parse_key_fallbacks(os.environ.get("OFFLOAD_SECRET_KEY_FALLBACKS"))
            faults.append(fallbacks_fault(fallbacks))
        except ValueError as exc:  # (hex:… with other than hex digits)
            faults = [str(exc)]
        where = f"TASKS[{self.alias!r}]"
        return [Error(fault, obj=where, id="offload.E002") for fault in faults if fault]

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        """Store the call as a job, inside the current transaction of the backend's
        database where offload shares it (PostgreSQL), else once it commits (at once
        outside a transaction): a rolled-back transaction enqueues nothing.

        Raises:
            InvalidTask: what `validate_task` refuses.
            TypeError: an argument JSON cannot carry (named).
            UnstorableMessage: a NUL character in an argument, which PostgreSQL cannot store
                (refused on every engine).
        """
        self.validate_task(task)
        check_arguments(task.module_path, args, kwargs)
        call = TaskCall.model_validate(
            {
                "task": task.module_path,
                # (checked: a tuple, as JSON gives it back, is all it changes)
                "args": normalize_json(args),
                "kwargs": normalize_json(kwargs),
                "run_after": task.run_after,
            }
        )
        options = {
            "priority": priority_of(task.priority),
            "run_at": task.run_after,
            "owner": current_owner(),
        }
        message = self.app.spec_of(kind_of(task.queue_name)).cls(**call.model_dump())
        db = connections[self.config.database]
        if self.config.joins(db):
            job = self.app.enqueue_in_sync(db, message, **options)
            enqueued_at = self.app.clock.now()
            job_id = job.id
        else:
            envelope = self.app.envelope(message, **options)
            # refused now, as the other way in refuses it, not once the caller committed
            encoded(envelope.kind, envelope.payload)
            transaction.on_commit(
                functools.partial(_store, self.app, envelope), using=self.config.database
            )
            job_id, enqueued_at = envelope.id, envelope.enqueued_at
        result = ready_result(task, job_id, call, enqueued_at)
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> TaskResult:
        """The result of a task enqueued through this backend's offload.

        Raises:
            TaskResultDoesNotExist: no such job (or one that is no task's).
        """
        row: JobRow | None = self.app._sync_call(lambda app: app.get(str(result_id)))
        if row is None:
            raise TaskResultDoesNotExist(result_id)
        return result_of(row, self.alias)

    async def aget_result(self, result_id: str) -> TaskResult:
        from asgiref.sync import sync_to_async

        # No database of Django's is touched: any thread will do, not the sensitive one.
        return await sync_to_async(self.get_result, thread_sensitive=False)(result_id)


def _store(app: App, envelope: Envelope) -> None:
    """Store a stamped job (on the App's own loop thread), as its transaction commits."""
    app._sync_call(lambda twin: twin.submit(envelope))
