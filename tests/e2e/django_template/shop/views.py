"""Views: a page with an export button, the POST that enqueues, the result poll."""

from __future__ import annotations

from datetime import datetime

from django.contrib.auth import login
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.tasks.exceptions import TaskResultDoesNotExist
from django.views.decorators.http import require_POST

from shop import tasks

TASKS = {t.name: t for t in (tasks.export_report, tasks.broken_report, tasks.async_report)}


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse(
        '<form method="post" action="/export/"><input type="hidden" name="task" '
        'value="export_report"><button>Export my report</button></form>'
    )


def login_as(request: HttpRequest, name: str) -> JsonResponse:
    user, _ = User.objects.get_or_create(username=name)
    login(request, user)
    return JsonResponse({"user": user.pk})


@require_POST
def export(request: HttpRequest) -> JsonResponse:
    task = TASKS[request.POST.get("task", "export_report")]
    period = request.POST.get("period", "2026-11")
    args: list[object] = [datetime.now()] if request.POST.get("bad") else [period]
    try:
        with transaction.atomic():
            result = task.enqueue(*args)
    except TypeError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    return JsonResponse({"id": result.id, "status": result.status}, status=202)


class Undo(Exception):
    """Rolls the view's transaction back."""


@require_POST
def rollback(request: HttpRequest) -> JsonResponse:
    ids, inside = [], None
    try:
        with transaction.atomic():
            User.objects.create(username="rolled-back")
            ids.append(tasks.export_report.enqueue("2026-12").id)
            if connection.vendor == "postgresql":  # offload shares the database: the job
                with connection.cursor() as cur:  # is in this very transaction
                    cur.execute("SELECT count(*) FROM offload_jobs WHERE id = %s", [ids[0]])
                    inside = cur.fetchone()[0]
            raise Undo
    except Undo:
        pass
    kept = User.objects.filter(username="rolled-back").count()
    return JsonResponse({"id": ids[0], "users": kept, "inside": inside})


def result(request: HttpRequest, result_id: str) -> JsonResponse:
    try:
        found = tasks.export_report.get_backend().get_result(result_id)
    except TaskResultDoesNotExist:
        return JsonResponse({"error": "not found"}, status=404)
    body = {
        "id": found.id,
        "status": found.status,
        "task": found.task.module_path,
        "queue": found.task.queue_name,
        "priority": found.task.priority,
        "errors": [e.exception_class_path for e in found.errors],
        "return_value": found.return_value if found.status == "SUCCESSFUL" else None,
    }
    return JsonResponse(body)


@require_POST
async def aexport(request: HttpRequest) -> JsonResponse:
    result = await tasks.async_report.aenqueue("async-view")
    return JsonResponse({"id": result.id, "status": result.status}, status=202)


async def aresult(request: HttpRequest, result_id: str) -> JsonResponse:
    found = await tasks.async_report.aget_result(result_id)
    value = found.return_value if found.status == "SUCCESSFUL" else None
    return JsonResponse({"id": found.id, "status": found.status, "return_value": value})
