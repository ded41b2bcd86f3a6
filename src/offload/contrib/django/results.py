"""TaskResult from an offload job: statuses, times, errors and the return value mapped."""

from __future__ import annotations

import builtins
from datetime import UTC, datetime
from typing import Any

from django.tasks import Task, TaskResult, TaskResultStatus
from django.tasks.base import TaskError
from django.tasks.exceptions import TaskResultDoesNotExist
from django.utils.module_loading import import_string

from ... import errors
from ...contract import JobRow, JobState
from .calls import KIND_PREFIX, TaskCall

#: Django's status of each offload state: waiting (a retry's wait included) is READY, a
#: final state other than succeeded is FAILED.
STATUS_OF = {
    JobState.QUEUED: TaskResultStatus.READY,
    JobState.RETRYING: TaskResultStatus.READY,
    JobState.RUNNING: TaskResultStatus.RUNNING,
    JobState.SUCCEEDED: TaskResultStatus.SUCCESSFUL,
    JobState.FAILED: TaskResultStatus.FAILED,
    JobState.CANCELLED: TaskResultStatus.FAILED,
    JobState.DEAD: TaskResultStatus.FAILED,
}


def priority_of(task_priority: int) -> int:
    """offload's priority (lower runs first) of Django's (-100..100, higher runs first)."""
    return -task_priority


def task_of(path: str) -> Task:
    """The task a module path names.

    Raises:
        TaskResultDoesNotExist: nothing there is a Task (moved or renamed since).
    """
    try:
        found = import_string(path)
    except ImportError:
        found = None
    if not isinstance(found, Task):
        raise TaskResultDoesNotExist(f"{path!r} is not a task (any more)")
    return found


def _when(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def _class_path(error: dict[str, Any]) -> str:
    """A TaskError's class path from offload's error (its type is a class name), one Django
    can import: the traceback's last line names the class with its module
    (`shop.tasks.ReportError: …`) except for builtins (`builtins.ValueError`); offload's
    own records name one of `offload.errors` (a task cancelled while it ran: `Cancel`), or
    no class (a lease lost, a task given back: `JobError`, the name kept in the traceback)."""
    name = str(error.get("type") or "Exception")
    lines = str(error.get("traceback") or "").strip().splitlines()
    head = lines[-1].partition(":")[0].strip() if lines else ""
    if head.endswith(f".{name}") and " " not in head:
        return head
    name = _OWN_TYPES.get(name, name)
    for module, where in ((builtins, "builtins"), (errors, "offload.errors")):
        known = getattr(module, name, None)
        if isinstance(known, type) and issubclass(known, BaseException):
            return f"{where}.{name}"
    return "offload.errors.JobError"


#: The types of offload's own error records that are no class's name.
_OWN_TYPES = {"Cancelled": "Cancel"}


def _errors(row: JobRow) -> list[TaskError]:
    if row.error is None or row.state is JobState.SUCCEEDED:
        return []
    path = _class_path(row.error)
    said = f"{row.error.get('type') or 'Exception'}: {row.error.get('message', '')}"
    trace = row.error.get("traceback") or said
    return [TaskError(exception_class_path=path, traceback=trace)]


def result_of(row: JobRow, backend: str) -> TaskResult:
    """The TaskResult of a stored job of a `django.tasks.*` kind.

    Raises:
        TaskResultDoesNotExist: a job of another kind, or of a task that is gone.
    """
    if not row.kind.startswith(KIND_PREFIX):
        raise TaskResultDoesNotExist(row.id)
    call = TaskCall.model_validate(row.payload)
    task = task_of(call.task).using(
        priority=-row.priority, queue_name=row.queue, run_after=call.run_after, backend=backend
    )
    result = TaskResult(
        task=task,
        id=row.id,
        status=STATUS_OF[row.state],
        enqueued_at=_when(row.enqueued_at),
        started_at=_when(row.started_at),
        finished_at=_when(row.finished_at) if row.state.final else None,
        last_attempted_at=_when(row.started_at),
        args=list(call.args),
        kwargs=dict(call.kwargs),
        backend=backend,
        errors=_errors(row),
        worker_ids=[row.worker or ""] * row.attempt,
    )
    if row.state is JobState.SUCCEEDED:
        object.__setattr__(result, "_return_value", row.result)
    return result


def ready_result(task: Task, job_id: str, call: TaskCall, enqueued_at: float) -> TaskResult:
    """The TaskResult `enqueue` answers: READY, nothing run yet."""
    return TaskResult(
        task=task,
        id=job_id,
        status=TaskResultStatus.READY,
        enqueued_at=_when(enqueued_at),
        started_at=None,
        finished_at=None,
        last_attempted_at=None,
        args=list(call.args),
        kwargs=dict(call.kwargs),
        backend=task.backend,
        errors=[],
        worker_ids=[],
    )


def running_result(task: Task, job_id: str, call: TaskCall, attempt: int, worker: str) -> Any:
    """The TaskResult a running task sees in its TaskContext."""
    now = datetime.now(UTC)
    result = ready_result(task, job_id, call, now.timestamp())
    object.__setattr__(result, "status", TaskResultStatus.RUNNING)
    object.__setattr__(result, "started_at", now)
    object.__setattr__(result, "last_attempted_at", now)
    object.__setattr__(result, "worker_ids", [worker] * max(attempt, 1))
    return result
