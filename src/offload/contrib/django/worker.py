"""The worker half: `manage.py offload_worker` runs `offload worker --app` on this module.

Importing it sets Django up (DJANGO_SETTINGS_MODULE, as manage.py sets it) and gives
`app`: the offload App of the task backend named by OFFLOAD_DJANGO_BACKEND ("default"),
with a handler for each of its queues.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import django
from django.db import close_old_connections
from django.tasks import Task, TaskContext, TaskResultStatus, task_backends
from django.tasks.exceptions import TaskResultDoesNotExist
from django.tasks.signals import task_finished, task_started
from django.utils.json import normalize_json

from ..._logging import print_once
from ...app import App
from ...context import Context
from ...errors import ConfigurationError, _ForAnotherWorker, _Unstorable
from .backend import OffloadBackend
from .calls import TaskCall, kind_of
from .config import BACKEND_ENV
from .principal import owner
from .results import running_result, task_of


def run_call(call: TaskCall, ctx: Context) -> Any:
    """Run one task call, in the worker's thread pool, as Django runs a request: database
    connections that are unusable or past CONN_MAX_AGE are closed before and after (the
    connections are this thread's). An async task runs on an event loop of this thread
    (`Task.call`), so its ORM calls use this thread's connections too.

    Returns:
        The task's return value, made JSON as Django makes it (`normalize_json`).

    Raises:
        _Unstorable: a return value `normalize_json` refuses: the job fails for good.
    """
    close_old_connections()
    try:
        task = _known(call.task)
        return _run(task, call, ctx)
    finally:
        close_old_connections()


def _run(task: Task, call: TaskCall, ctx: Context) -> Any:
    """Run `task` as `run_call` does: tasks it enqueues belong to its own job's owner."""
    with owner(ctx.owner):
        result = running_result(task, ctx.job_id, call, ctx.attempt, _worker_id(ctx))
        sender = type(task.get_backend())
        task_started.send(sender, task_result=result)
        try:
            args = list(call.args)
            if task.takes_context:
                args.insert(0, TaskContext(task_result=result))
            raw = task.call(*args, **call.kwargs)
            try:
                value = normalize_json(raw)
            except (TypeError, ValueError) as exc:  # failed for good: it ran
                raise _Unstorable(exc) from exc
        except BaseException:
            object.__setattr__(result, "status", TaskResultStatus.FAILED)
            task_finished.send(sender, task_result=result)
            raise
        object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
        task_finished.send(sender, task_result=result)
        return value


def _unready(call: TaskCall) -> str | None:
    """Why this worker's code cannot run `call` (its task is unknown here), or None: the
    worker gives such a job back before it starts (`HandlerSpec.unready`)."""
    try:
        _known(call.task)
    except _ForAnotherWorker as signal:
        return signal.reason
    return None


def _known(path: str) -> Task:
    """The task `path` names in this worker's code.

    Raises:
        _ForAnotherWorker: none does (a task deployed to the web tier before this worker,
            or removed): the job is given back unspent, for a worker that knows the task.
    """
    try:
        return task_of(path)
    except TaskResultDoesNotExist:
        raise _ForAnotherWorker(
            f"{path} waits for a worker whose code has that task (this one's has not)"
        ) from None


def _worker_id(ctx: Context) -> str:
    return ctx.lease.worker or ""


def worker_app(alias: str) -> App:
    """The App of task backend `alias` with a handler for each of its queues.

    Raises:
        ConfigurationError: `alias` is not an OffloadBackend.
    """
    backend = task_backends[alias]
    if not isinstance(backend, OffloadBackend):
        raise ConfigurationError(
            f"TASKS[{alias!r}] is a {type(backend).__name__}, not offload's OffloadBackend"
        )
    app = backend.app
    for queue in backend.config.queues:
        kind = kind_of(queue)
        if kind not in app.handlers:
            app.handles(app.spec_of(kind).cls)(run_call)
            app.handlers[kind] = dataclasses.replace(app.handlers[kind], unready=_unready)
    return app


django.setup()
print_once()  # Django's console handler (DEBUG) and offload's root one: one line each
app = worker_app(os.environ.get(BACKEND_ENV, "default"))
