"""The agent protocol: heartbeats in, the desired replica set out (``ik_agent_`` only)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse

from ik_contracts.protocol import MAX_WAIT_S, Assignments, Heartbeat
from manager import notify
from manager.api.border import AgentBorderRoute, authenticated
from manager.auth import TokenKind, require_kind
from manager.custom_backends import service as custom_backends
from manager.db.models import Worker
from manager.openapi import CUSTOM_BACKEND_PACKAGE_RESPONSES, ERROR_RESPONSES
from manager.services import workers
from manager.services.timefmt import utcnow

router = APIRouter(prefix="/api/agent", route_class=AgentBorderRoute, responses=ERROR_RESPONSES)
WHERE = "the agent protocol (/api/agent)"
DISCONNECT_CHECK_S = 1.0


async def _agent_worker(request: Request) -> Worker:
    # Short-lived session: a long-poll must not hold a database connection while it waits.
    principal = await authenticated(request)
    require_kind(principal, TokenKind.AGENT, WHERE)
    async with request.app.state.sessions() as session:
        return await workers.worker_for_agent(session, principal)


# A dependency, so the credential is checked before the body: a wrong token gets 401/403 whatever
# it sent.
AgentWorker = Annotated[Worker, Depends(_agent_worker)]


async def _answer(request: Request, worker: Worker) -> Assignments:
    async with request.app.state.sessions() as session:
        replicas = await workers.assignments(session, worker)
    return Assignments(
        worker_id=worker.id,
        version=workers.assignments_version(replicas),
        heartbeat_interval_s=request.app.state.settings.heartbeat_interval_s,
        replicas=replicas,  # type: ignore[arg-type]
        gateway_secret=worker.gateway_secret,
    )


@router.post("/heartbeat")
async def heartbeat(request: Request, worker: AgentWorker, body: Heartbeat) -> Assignments:
    async with request.app.state.sessions() as session:
        row = await session.get(Worker, worker.id, with_for_update={"key_share": True})
        assert row is not None
        await workers.record_heartbeat(session, row, body.model_dump(), utcnow())
        await session.commit()
    return await _answer(request, worker)


@router.get("/assignments")
async def watch_assignments(
    request: Request,
    worker: AgentWorker,
    version: str = "",
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 25.0,
) -> Assignments:
    """Answers as soon as the desired set differs from ``version``, or after ``wait`` seconds."""
    hub: notify.NotificationHub = request.app.state.hub
    deadline = time.monotonic() + wait
    while True:
        with hub.subscription(notify.ASSIGNMENTS, worker.id) as changed:
            answer = await _answer(request, worker)
            remaining = deadline - time.monotonic()
            if answer.version != version or remaining <= 0:
                return answer
            # Wake at least every second to notice an agent that hung up, or a Manager that is
            # shutting down (the agent asks again, of another Manager or of this one restarted).
            await notify.wait_for(changed, min(remaining, DISCONNECT_CHECK_S))
            if request.app.state.stopping():
                return answer
            if not changed.is_set() and await request.is_disconnected():
                return answer


@router.get(
    "/custom-backends/{version_id}/package",
    response_class=Response,
    responses=CUSTOM_BACKEND_PACKAGE_RESPONSES,
)
async def custom_backend_package(
    version_id: str, request: Request, worker: AgentWorker
) -> StreamingResponse:
    """The package of a custom-backend version (``custom_backend.id`` of an assignment), as
    published; ``X-InferenceKey-Sha256`` is its SHA-256 for the agent to check."""
    async with request.app.state.sessions() as session:
        version = await custom_backends.package_for_worker(session, version_id, worker)
    extension = version.archive_format
    return StreamingResponse(
        custom_backends.package_pieces(request.app.state.sessions, version.id),
        media_type=custom_backends.CONTENT_TYPES[extension],
        headers={
            "Content-Length": str(version.size_bytes),
            "X-InferenceKey-Sha256": version.sha256,
            "Content-Disposition": (
                f'attachment; filename="{version.slug}-{version.version}.{extension}"'
            ),
        },
    )
