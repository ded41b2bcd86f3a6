"""`manage.py check` of offload's Django settings: mistakes that would otherwise show only
as a failed request."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, register

#: The middleware whose `request.user` PrincipalMiddleware reads.
AUTHENTICATION = "django.contrib.auth.middleware.AuthenticationMiddleware"
PRINCIPAL = "offload.contrib.django.principal.PrincipalMiddleware"


@register(Tags.compatibility)  # type: ignore[untyped-decorator]
def check_middleware(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """PrincipalMiddleware after Django's AuthenticationMiddleware: before it (or without
    it), every request that enqueues a task fails, as `request.user` is not yet set."""
    middleware = list(getattr(settings, "MIDDLEWARE", None) or [])
    if PRINCIPAL not in middleware:
        return []
    here = middleware.index(PRINCIPAL)
    if AUTHENTICATION in middleware[:here] or any(map(_authenticates, middleware[:here])):
        return []
    if AUTHENTICATION in middleware or any(map(_authenticates, middleware)):
        problem = "PrincipalMiddleware is before AuthenticationMiddleware in MIDDLEWARE"
    else:
        problem = "PrincipalMiddleware is in MIDDLEWARE without AuthenticationMiddleware"
    return [
        Error(
            problem,
            hint=f"put {PRINCIPAL!r} after {AUTHENTICATION!r}: it reads request.user",
            obj="MIDDLEWARE",
            id="offload.E001",
        )
    ]


def _authenticates(path: str) -> bool:
    """Whether the middleware at `path` is Django's AuthenticationMiddleware or a subclass
    of it (one that cannot be imported is left to Django's own checks)."""
    if path == AUTHENTICATION:
        return True
    from django.utils.module_loading import import_string

    try:  # (without django.contrib.auth installed, importing its middleware raises)
        from django.contrib.auth.middleware import AuthenticationMiddleware

        found = import_string(path)
    except Exception:  # (a module that cannot be imported now is Django's to report)
        return False
    return isinstance(found, type) and issubclass(found, AuthenticationMiddleware)
