"""offload's status API inside a Django project's ASGI app, the session user as principal."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user
from django.db import close_old_connections
from django.http import HttpRequest
from django.tasks import task_backends
from starlette.requests import Request
from starlette.routing import Mount, Router
from starlette.types import ASGIApp

from ...errors import ConfigurationError
from ...web.auth import Admin
from .backend import OffloadBackend
from .principal import principal_of

#: Where `mount` puts offload's routes by default (`/offload/v1/jobs/{id}` …).
DEFAULT_PREFIX = "/offload"


def session_principal(request: Request) -> str | None:
    """The auth hook of the mounted API: the principal (`principal_of`) of the Django user
    signed in on the request's session cookie (an `Admin` for a superuser: offload's
    dashboard is theirs), or None (401). offload runs it in its
    thread pool, so the session and user reads use that thread's connections, closed
    after as Django closes a request's."""
    from importlib import import_module

    engine = import_module(settings.SESSION_ENGINE)
    django_request = HttpRequest()
    django_request.session = engine.SessionStore(request.cookies.get(settings.SESSION_COOKIE_NAME))
    close_old_connections()
    try:
        user = get_user(django_request)
        name = principal_of(user)
        return Admin(name) if name is not None and user.is_superuser else name
    finally:
        close_old_connections()


def mount(django_app: ASGIApp, *, prefix: str = DEFAULT_PREFIX, backend: str = "default") -> Any:
    """`django_app` (`get_asgi_application()`) with offload's status API at `prefix`, whose
    callers are the session's Django users: each sees their own tasks' jobs only.

    Everything outside `prefix` goes to Django; the lifespan (which Django's ASGI handler
    refuses) is answered here, and offload opens its backend on the first request.

    Raises:
        ConfigurationError: TASKS[backend] is not an OffloadBackend.
    """
    from ...web import create_app

    found = task_backends[backend]
    if not isinstance(found, OffloadBackend):
        raise ConfigurationError(f"TASKS[{backend!r}] is not offload's OffloadBackend")
    api = create_app(found.app, auth=session_principal)
    return Router(routes=[Mount(prefix.rstrip("/"), app=api)], default=django_app)
