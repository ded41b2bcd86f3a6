"""Whose jobs: the Django user as offload's principal, for enqueues and the status API."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from ..._options import DEFAULT_OWNER

_owner: ContextVar[str] = ContextVar("offload_django_owner", default=DEFAULT_OWNER)


def principal_of(user: Any) -> str | None:
    """The principal of a Django user, `user:<pk>`, or None for an anonymous one."""
    if user is None or not user.is_authenticated:
        return None
    return f"user:{user.pk}"


def current_owner() -> str:
    """The owner of a task enqueued now: the request's user (`PrincipalMiddleware`), the one
    `owner()` names, else offload's default (`local`)."""
    return _owner.get()


@contextlib.contextmanager
def owner(principal: str) -> Iterator[None]:
    """Tasks enqueued inside belong to `principal` (code outside a request: commands)."""
    token = _owner.set(str(principal))
    try:
        yield
    finally:
        _owner.reset(token)


class PrincipalMiddleware:
    """Tasks a request enqueues belong to its signed-in user (after Django's
    AuthenticationMiddleware in MIDDLEWARE); their status is theirs alone in the API."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self.is_async:
            return self._acall(request)
        with owner(principal_of(request.user) or DEFAULT_OWNER):
            return self.get_response(request)

    async def _acall(self, request: Any) -> Any:
        user = await request.auser()
        with owner(principal_of(user) or DEFAULT_OWNER):
            response: Awaitable[Any] = self.get_response(request)
            return await response
