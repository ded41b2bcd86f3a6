"""A user's report exports: which task result is whose."""

from django.conf import settings
from django.db import models


class Export(models.Model):
    """One "Export my report" click: the user, and the id of the task's result."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="exports"
    )
    result_id = models.CharField(max_length=64, unique=True)
    requested_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-requested_at"]
