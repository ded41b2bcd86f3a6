"""The operators' dashboard at /dashboard: server-rendered pages over the App (queues,
workers, jobs), live through the change feed, with CSRF-protected actions. Admins only."""

from __future__ import annotations

from fastapi import APIRouter

from . import actions, pages

router = APIRouter()
router.include_router(pages.router)
router.include_router(actions.router)

__all__ = ["router"]
