"""offload as a Django 6 `django.tasks` backend, its worker command and its status API.

```python
INSTALLED_APPS = [..., "offload.contrib.django"]
TASKS = {"default": {"BACKEND": "offload.contrib.django.OffloadBackend",
                     "OPTIONS": {"url": "postgresql://…/mydb"}}}
```
"""

from __future__ import annotations

from .backend import OffloadBackend
from .principal import owner, principal_of

__all__ = ["OffloadBackend", "owner", "principal_of"]
