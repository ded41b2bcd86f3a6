"""offload as a Django 6 `django.tasks` backend, its worker command and its status API.

```python
INSTALLED_APPS = [..., "offload.contrib.django"]
TASKS = {"default": {"BACKEND": "offload.contrib.django.OffloadBackend",
                     "OPTIONS": {"url": "postgresql://…/mydb"}}}
```
"""

from __future__ import annotations

try:
    from .backend import OffloadBackend
    from .principal import owner, principal_of
except ModuleNotFoundError as exc:  # Django not installed: say which extra brings it
    if (exc.name or "").partition(".")[0] != "django":
        raise
    raise ImportError(
        "offload.contrib.django needs Django 6 (Python 3.12 or later): "
        "pip install 'offload[django]'"
    ) from exc

__all__ = ["OffloadBackend", "owner", "principal_of"]
