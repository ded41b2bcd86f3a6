"""GET /metrics: offload's Prometheus metrics, for admins and the holder of the scrape token."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from ..app import App
from ..errors import BackendError
from ..metrics import CONTENT_TYPE, Metrics
from .auth import caller_is_admin
from .problems import Problem
from .responses import problems
from .routes import OPERATORS_ONLY

router = APIRouter()

#: What GET /metrics answers: the text format, or a problem.
_ANSWERS: dict[int | str, Any] = {
    200: {
        "description": "Every metric, in the Prometheus text format",
        "content": {CONTENT_TYPE: {"schema": {"type": "string"}}},
    },
    **problems(
        404,
        500,
        501,
        meaning={
            404: "The caller is neither an admin nor the holder of OFFLOAD_METRICS_TOKEN "
            "(as for a path that does not exist)"
        },
    ),
}


async def may_scrape(request: Request) -> bool:
    """Whether the caller may read the metrics: the bearer token is OFFLOAD_METRICS_TOKEN,
    or the caller is an admin (OFFLOAD_ADMIN_PRINCIPALS, an auth hook's `Admin`, or anyone
    in development mode)."""
    token = request.app.state.offload.settings.metrics_token
    scheme, _, sent = request.headers.get("authorization", "").partition(" ")
    if token and scheme.lower() == "bearer":
        if hmac.compare_digest(token.encode(), sent.strip().encode()):
            return True
    return await caller_is_admin(request)


#: An operators' route: without an admin's token or the metrics token it answers 404,
#: never 401, which the OpenAPI document says (the token is optional to it).
@router.get(
    "/metrics", response_class=Response, responses=_ANSWERS, openapi_extra={OPERATORS_ONLY: True}
)
async def metrics(request: Request) -> Response:
    """offload's Prometheus metrics: this process's counters and histograms, and the queue
    gauges from the backend's stats (read at most once a second, whoever scrapes). While the
    backend does not answer, the counters are served without the queue gauges, and
    `offload_queue_stats_up` is 0."""
    if not await may_scrape(request):
        raise Problem(404, "Not Found")  # the route tells no one else that it exists
    app: App = request.app.state.offload
    found = app.metrics
    if not isinstance(found, Metrics):
        raise Problem(
            501,
            "metrics are off: install prometheus-client (pip install 'offload[metrics]')",
            slug="metrics-unavailable",
        )
    try:
        await request.app.state.runtime.ensure()
    except BackendError:  # the counters are served all the same, the gauges said missing
        found.queues.up = False
    else:
        await found.queues.refresh(app.stats, app.clock.now)
    return Response(found.render(), media_type=CONTENT_TYPE)
