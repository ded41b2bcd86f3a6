"""The Django app (`"offload.contrib.django"` in INSTALLED_APPS): `manage.py offload_worker`."""

from __future__ import annotations

from django.apps import AppConfig


class OffloadConfig(AppConfig):
    """offload's Django app: its management command, nothing stored in Django's database."""

    name = "offload.contrib.django"
    label = "offload"
    verbose_name = "offload"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers offload's system checks)
