"""``GET /metrics``: Prometheus text, for the operator's admin credential.

Prometheus sends it with ``authorization: {type: Bearer, credentials_file: ...}``; or set
INFERENCEKEY_METRICS_ADDRESS to serve them without a credential on an address of their own.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from manager.api.border import BorderRoute, outside_the_queue

from .deps import AdminCaller

router = APIRouter(route_class=BorderRoute)


@router.get("/metrics", include_in_schema=False)
@outside_the_queue  # a scrape must answer when the API is busiest: that is when it is read
async def metrics(request: Request, caller: AdminCaller) -> Response:
    registry = request.app.state.metrics
    await registry.refresh(request.app.state.sessions)
    return Response(registry.render(), media_type=CONTENT_TYPE_LATEST)
