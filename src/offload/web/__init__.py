"""The web tier: an ASGI app that validates, enqueues, answers 202, and reports status."""

from __future__ import annotations

from .app import check_bind, create_app
from .auth import Admin, AuthHook, TokenAuth
from .handlers import problem_details
from .jobs import Jobs, OffloadJobs, offload_jobs
from .responses import problems as problem_responses
from .runtime import lifespan

__all__ = [
    "Admin",
    "AuthHook",
    "Jobs",
    "OffloadJobs",
    "TokenAuth",
    "check_bind",
    "create_app",
    "lifespan",
    "offload_jobs",
    "problem_details",
    "problem_responses",
]
