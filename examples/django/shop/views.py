"""The pages: a button that enqueues the export, and the export's status page."""

from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.tasks import TaskResultStatus
from django.urls import reverse
from django.views.decorators.http import require_POST

from shop.models import Export
from shop.tasks import export_report


class SeeOther(HttpResponseRedirect):
    """303 See Other: after a POST, the browser GETs the status page."""

    status_code = 303


@login_required
def home(request: HttpRequest) -> HttpResponse:
    exports = request.user.exports.all()[:10]
    return render(request, "shop/home.html", {"exports": exports})


@login_required
@require_POST
def export(request: HttpRequest) -> HttpResponse:
    # The Export row and the task commit together: if anything in this block fails, neither
    # exists (offload stores the job when the transaction commits, owned by request.user).
    with transaction.atomic():
        result = export_report.enqueue(request.user.pk)
        Export.objects.create(user=request.user, result_id=result.id)
    return SeeOther(reverse("export-status", args=[result.id]))


@login_required
def export_status(request: HttpRequest, result_id: str) -> HttpResponse:
    # Another user's export is not found, as if it did not exist.
    get_object_or_404(Export, result_id=result_id, user=request.user)
    result = export_report.get_result(result_id)
    finished = result.status in (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED)
    context = {
        "result": result,
        "finished": finished,
        "value": result.return_value if result.status == TaskResultStatus.SUCCESSFUL else None,
    }
    return render(request, "shop/status.html", context)
