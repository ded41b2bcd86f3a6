"""The shop's task: a user's report, written as a CSV file by a worker."""

import csv
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.tasks import TaskContext, task


@task(takes_context=True)
def export_report(context: TaskContext, user_id: int) -> dict[str, Any]:
    """Write the user's export history to REPORTS_DIR; the return value (JSON) names the file."""
    user = get_user_model().objects.get(pk=user_id)  # the ORM works here: Django is set up
    exports = list(user.exports.order_by("requested_at"))
    settings.REPORTS_DIR.mkdir(parents=True, exist_ok=True)
    name = f"report-{context.task_result.id}.csv"
    with open(settings.REPORTS_DIR / name, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["requested_at", "result_id"])
        writer.writerows([e.requested_at.isoformat(), e.result_id] for e in exports)
    return {"user": user.get_username(), "file": name, "rows": len(exports)}
