"""The web tier's check that a live worker runs the version it submits (opt-in)."""

from __future__ import annotations

from ..app import App, MessageSpec
from .problems import Problem

#: Seconds a client is told to wait when no live worker runs the version it submitted.
DEFAULT_NO_WORKER_RETRY_AFTER_S = 10


async def require_live_worker(app: App, spec: MessageSpec) -> None:
    """Refuse a submission of `spec`'s kind when no live worker runs its current version,
    under OFFLOAD_REQUIRE_WORKER_VERSION=1 (else accept it: it waits in its queue).

    The live versions come from `App.live_versions`, shared and reused for a second or two,
    so the check costs no query per submission.

    Raises:
        Problem: 503 with Retry-After; nothing is enqueued.
    """
    if not app.settings.require_worker_version:
        return
    if spec.version in (await app.live_versions()).get(spec.kind, ()):
        return
    raise Problem(
        503,
        f"no live worker runs {spec.kind} version {spec.version} yet; try again shortly",
        slug="no-worker-for-version",
        headers={"Retry-After": str(DEFAULT_NO_WORKER_RETRY_AFTER_S)},
        kind=spec.kind,
        version=spec.version,
    )
