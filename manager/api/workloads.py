"""Control-plane workload routes (contract section 1b)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import PlainTextResponse, StreamingResponse
from inferencekey.wire import CreateWorkloadRequest, UpdateWorkloadRequest, WorkloadPage
from inferencekey.wire import Workload as WorkloadView
from sqlalchemy.ext.asyncio import AsyncSession
from sse_starlette.sse import EventSourceResponse

from ik_contracts.forwarding import log_query
from manager.api.border import BorderRoute, outside_the_queue
from manager.db.models import Workload
from manager.errors import ValidationFailed
from manager.openapi import ENGINE_LOG_RESPONSES, ERROR_RESPONSES, READINESS_STREAM_RESPONSES
from manager.services import endpoint_toggles, engine_logs, events, usage, workloads
from manager.services.readiness_stream import readiness_stream
from manager.wire import (
    EndpointToggles,
    ReplicaList,
    UpdateEndpointToggles,
    UsageReport,
    WorkloadEventList,
)

from .deps import (
    ControlReader,
    ControlWriter,
    Limits,
    OwnProject,
    PathProject,
    ReadSession,
    Session,
)

router = APIRouter(prefix="/api", route_class=BorderRoute, responses=ERROR_RESPONSES)
KEEPALIVE_S = 15
LIST_ANSWER = (
    'without limit, every workload: {"workloads": [...]} (no next_cursor); with limit, a page: '
    '{"workloads": [...], "next_cursor": "..." | null}, null after the last page'
)


@router.get(
    "/projects/{project}/workloads",
    response_model=WorkloadPage,
    responses={status.HTTP_200_OK: {"description": LIST_ANSWER}},
)
async def list_workloads(
    request: Request,
    project: str,
    owner: PathProject,
    caller: ControlReader,
    session: Session,
    limit: int | None = Query(None, description=workloads.LIMIT_HELP),
    after: str | None = Query(None, description=workloads.AFTER_HELP),
) -> Response:
    """The project's live workloads in creation order: all of them, or a page with ``limit``."""
    listed = request.app.state.listed_workloads
    body = await workloads.list_workloads_json(session, owner, limit, after, listed)
    return Response(body, media_type="application/json")


@router.get("/projects/{project}/usage", response_model_exclude_unset=True)
async def project_usage(
    project: str,
    owner: PathProject,
    caller: ControlReader,
    session: Session,
    start: str | None = Query(None, alias="from", description=usage.FROM_HELP),
    to: str | None = Query(None, description=usage.TO_HELP),
    group_by: str = Query("workload", description=usage.GROUP_BY_HELP),
) -> UsageReport:
    """Tokens and requests of the project's data-plane traffic, as the engines reported them."""
    return await usage.usage_report(session, owner, start, to, group_by)


@router.post(
    "/projects/{project}/workloads",
    status_code=status.HTTP_201_CREATED,
    responses={
        status.HTTP_200_OK: {
            "model": WorkloadView,
            "description": "an identical spec already held the slug: that workload, unchanged",
        }
    },
)
async def create_workload(
    project: str,
    owner: PathProject,
    caller: ControlWriter,
    body: CreateWorkloadRequest,
    session: Session,
    limits: Limits,
    response: Response,
) -> WorkloadView:
    workload, created = await workloads.create_workload(session, caller, owner, body, limits)
    await session.commit()
    if not created:
        response.status_code = status.HTTP_200_OK  # an identical create: nothing new
    return workloads.workload_view(workload, owner)


@router.get("/workloads/{workload_ref}")
async def get_workload(
    workload_ref: str, owner: OwnProject, caller: ControlReader, session: ReadSession
) -> WorkloadView:
    workload = await workloads.find_workload(session, caller, owner, workload_ref, for_update=False)
    return workloads.workload_view(workload, owner)


@router.patch("/workloads/{workload_ref}")
async def update_workload(
    workload_ref: str,
    owner: OwnProject,
    caller: ControlWriter,
    body: UpdateWorkloadRequest,
    session: Session,
    limits: Limits,
) -> WorkloadView:
    workload = await workloads.find_workload(session, caller, owner, workload_ref, for_update=True)
    workload = await workloads.update_workload(session, caller, owner, workload, body, limits)
    await session.commit()
    return workloads.workload_view(workload, owner)


@router.delete(
    "/workloads/{workload_ref}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response
)
async def delete_workload(
    workload_ref: str, owner: OwnProject, caller: ControlWriter, session: Session
) -> Response:
    workload = await workloads.find_workload(session, caller, owner, workload_ref, for_update=True)
    await workloads.delete_workload(session, caller, workload)
    await session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/workloads/{workload_ref}/endpoints")
async def get_endpoint_toggles(
    workload_ref: str, owner: OwnProject, caller: ControlReader, session: ReadSession
) -> EndpointToggles:
    """Which of the workload's routes, and whether its async jobs, are served."""
    workload = await workloads.find_workload(session, caller, owner, workload_ref, for_update=False)
    return endpoint_toggles.toggles_view(workload)


@router.patch("/workloads/{workload_ref}/endpoints")
async def update_endpoint_toggles(
    workload_ref: str,
    owner: OwnProject,
    caller: ControlWriter,
    body: UpdateEndpointToggles,
    session: Session,
) -> EndpointToggles:
    """Switch endpoints on or off; a route switched off also refuses its async twin."""
    workload = await workloads.find_workload(session, caller, owner, workload_ref, for_update=True)
    view = await endpoint_toggles.set_toggles(session, workload, body.endpoints)
    await session.commit()
    return view


@router.get("/workloads/{workload_ref}/events")
async def list_workload_events(
    workload_ref: str, owner: OwnProject, caller: ControlReader, session: ReadSession
) -> WorkloadEventList:
    workload = await workloads.find_workload(session, caller, owner, workload_ref, for_update=False)
    rows = await events.list_events(session, workload.id)
    return WorkloadEventList(events=[events.event_view(row) for row in rows])


@router.get(
    "/projects/{project}/workloads/{workload_slug}/readiness-events",
    response_class=EventSourceResponse,
    responses=READINESS_STREAM_RESPONSES,
)
async def readiness_events(
    project: str,
    workload_slug: str,
    owner: PathProject,
    caller: ControlReader,
    request: Request,
    session: ReadSession,
) -> EventSourceResponse:
    """SSE of ``{phase, message, elapsed_ms, step?}``: a snapshot now, then each change."""
    workload = await workloads.find_workload(
        session, caller, owner, workload_slug, for_update=False
    )
    await session.close()  # the stream reads with short sessions of its own
    frames = readiness_stream(request.app, workload.id, workload.updated_at)
    return EventSourceResponse(frames, ping=KEEPALIVE_S, send_timeout=30)


@router.get(
    "/workloads/{workload_ref}/replicas/{replica_id}/logs",
    response_class=PlainTextResponse,
    responses=ENGINE_LOG_RESPONSES,
)
@outside_the_queue  # it connects to the replica's agent
async def replica_logs(
    workload_ref: str,
    replica_id: str,
    owner: OwnProject,
    caller: ControlReader,
    request: Request,
    session: ReadSession,
) -> StreamingResponse:
    """The engine's log: the last ``tail`` lines (default 100), then, with ``follow=1``, what
    it writes next, as plain text until the client goes."""
    workload = await workloads.find_workload(session, caller, owner, workload_ref, for_update=False)
    return await stream_engine_log(request, session, workload, replica_id)


async def stream_engine_log(
    request: Request, session: AsyncSession, workload: Workload, replica_id: str | None
) -> StreamingResponse:
    """The log of one of ``workload``'s replicas, relayed from its agent (both log routes)."""
    tail, follow = _log_query(request)
    source = await engine_logs.locate(session, workload, replica_id)
    await session.close()  # the stream may run for hours; it needs no database
    pieces = await engine_logs.open_stream(source, tail, follow)
    return StreamingResponse(
        pieces,
        media_type="text/plain; charset=utf-8",
        headers={"X-InferenceKey-Replica": source.replica_id},
    )


def _log_query(request: Request) -> tuple[int, bool]:
    try:
        return log_query(request.url.query.encode())
    except ValueError as error:
        raise ValidationFailed(str(error)) from None


@router.get("/workloads/{workload_ref}/replicas")
async def list_workload_replicas(
    workload_ref: str, owner: OwnProject, caller: ControlReader, session: ReadSession
) -> ReplicaList:
    workload = await workloads.find_workload(session, caller, owner, workload_ref, for_update=False)
    rows = await workloads.list_replicas(session, workload.id)
    return ReplicaList(replicas=[workloads.replica_view(row) for row in rows])
