"""The operators' dashboard at /dashboard: server-rendered pages over the App (queues,
workers, jobs), live through the change feed, with CSRF-protected actions. Admins only."""

from __future__ import annotations

from fastapi import APIRouter

from . import actions, pages
from .site import DASHBOARD_PATH

#: Every method, for the routes that answer what no page or action does.
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

router = APIRouter()
router.include_router(pages.router)
router.include_router(actions.router)
# Last: a path under /dashboard that no route serves, or a method it does not answer, is 404
# for everyone (for non-admins `admin_only` says so first). Without it a 405 would tell
# anyone that a page exists there.
router.add_api_route(
    DASHBOARD_PATH,
    pages.nothing,
    methods=_METHODS,
    dependencies=pages.GUARDS,
    include_in_schema=False,
)
router.add_api_route(
    DASHBOARD_PATH + "/{rest:path}",
    pages.nothing,
    methods=_METHODS,
    dependencies=pages.GUARDS,
    include_in_schema=False,
)

__all__ = ["router"]
