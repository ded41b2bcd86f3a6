"""The shop's tasks: a report export, one that fails, an async one."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.tasks import TaskContext, task


@task(takes_context=True)
def export_report(context: TaskContext, period: str, *, rows: int = 3) -> dict[str, Any]:
    # The ORM works in the worker (Django set up, this thread's connection).
    return {
        "period": period,
        "rows": rows,
        "users": User.objects.count(),
        "attempt": context.attempt,
    }


@task(queue_name="reports", priority=50)
def broken_report(period: str) -> None:
    raise ValueError(f"no data for {period}")


@task()
async def async_report(period: str) -> str:
    count = await User.objects.acount()
    return f"{period}:{count}"
