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


class AssignmentCache:
    """Each worker's last computed answer, until the reconciler says its desired set changed
    (``NOTIFY ik_assignments``, heard by every Manager process) or ``MAX_AGE_S`` passes (a
    notification lost while the listening connection was down). Heartbeats and long-polls of
    a steady fleet then cost no query of their own."""

    MAX_AGE_S = 10.0

    def __init__(self) -> None:
        self._answers: dict[str, tuple[float, Assignments]] = {}
        self._generation: dict[str, int] = {}

    def invalidate(self, worker_id: str) -> None:
        if worker_id == notify.ANY:  # the listening connection came back: anything may have
            self.clear()  # changed meanwhile
            return
        self._answers.pop(worker_id, None)
        self._generation[worker_id] = self._generation.get(worker_id, 0) + 1

    def clear(self) -> None:
        for worker_id in list(self._answers):
            self.invalidate(worker_id)
        self._answers.clear()

    async def answer(self, request: Request, worker: Worker) -> Assignments:
        now = time.monotonic()
        cached = self._answers.get(worker.id)
        if cached is not None and now - cached[0] < self.MAX_AGE_S:
            return cached[1]
        generation = self._generation.get(worker.id, 0)
        async with request.app.state.sessions() as session:
            replicas = await workers.assignments(session, worker)
        answer = Assignments(
            worker_id=worker.id,
            version=workers.assignments_version(replicas),
            heartbeat_interval_s=request.app.state.settings.heartbeat_interval_s,
            replicas=replicas,  # type: ignore[arg-type]
            gateway_secret=worker.gateway_secret,
        )
        # Kept only if no change was announced while it was read.
        if self._generation.get(worker.id, 0) == generation:
            self._answers[worker.id] = (now, answer)
        return answer


async def _answer(request: Request, worker: Worker) -> Assignments:
    cache: AssignmentCache = request.app.state.assignment_cache
    return await cache.answer(request, worker)


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
    with hub.subscription(notify.ASSIGNMENTS, worker.id) as changed:
        answer = await _answer(request, worker)
        while answer.version == version:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return answer
            # Wake at least every second to notice an agent that hung up, or a Manager that is
            # shutting down (the agent asks again, of another Manager or of this one restarted);
            # the answer is read again only when the reconciler announced a change.
            if await notify.wait_for(changed, min(remaining, DISCONNECT_CHECK_S)):
                changed.clear()
                answer = await _answer(request, worker)
            elif request.app.state.stopping() or await request.is_disconnected():
                return answer
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
