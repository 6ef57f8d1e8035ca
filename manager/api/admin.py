"""Operator routes under /api/admin: projects, SDK tokens, live keys. ``ik_admin_`` only."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import PlainTextResponse, StreamingResponse
from inferencekey.wire import WorkloadList
from pydantic import BaseModel, ConfigDict, StrictBool, StrictFloat, StrictInt, StrictStr

from manager import wire
from manager.api.border import BorderRoute, outside_the_queue
from manager.api.workloads import stream_engine_log
from manager.openapi import ENGINE_LOG_RESPONSES, ERROR_RESPONSES
from manager.services import (
    endpoint_toggles,
    gpu_catalog,
    projects,
    tokens,
    usage,
    workers,
    workloads,
)

from .deps import AdminCaller, Session

router = APIRouter(prefix="/api/admin", route_class=BorderRoute, responses=ERROR_RESPONSES)


class CreateProjectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slug: StrictStr
    name: StrictStr | None = None


class CreateSdkTokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project: StrictStr
    read_only: StrictBool = False
    name: StrictStr | None = None


class CreateLiveKeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project: StrictStr
    workloads: list[StrictStr] | None = None
    all: StrictBool = False
    name: StrictStr | None = None


class CreateWorkerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr | None = None
    project: StrictStr | None = None


class SetGpuPriceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr
    usd_per_hour: StrictFloat | StrictInt


@router.put("/gpu-prices")
async def set_gpu_price(
    body: SetGpuPriceRequest, caller: AdminCaller, session: Session
) -> wire.GpuCatalogEntry:
    """What `inferencekey admin gpu-price set NAME USD` sends: a GPU display name's hourly price,
    which cost ceilings (max_hourly_cost_usd) count; the name joins the GPU catalog."""
    entry = await gpu_catalog.set_price(session, body.name, body.usd_per_hour)
    await session.commit()
    return entry


# Views leave out what does not apply (a token kind's own keys, a secret not minted now).
@router.post("/workers", status_code=status.HTTP_201_CREATED, response_model_exclude_unset=True)
async def create_worker(
    body: CreateWorkerRequest, caller: AdminCaller, session: Session
) -> wire.Worker:
    """A worker and its ik_agent_ credential (shown once); private to ``project`` if given."""
    project = await projects.get_project(session, body.project) if body.project else None
    worker, secret = await workers.create_worker(session, name=body.name, project=project)
    await session.commit()
    return workers.worker_view(worker, [], token=secret)


@router.post("/projects", status_code=status.HTTP_201_CREATED)
async def create_project(
    body: CreateProjectRequest, caller: AdminCaller, session: Session
) -> wire.Project:
    project = await projects.create_project(session, body.slug, body.name)
    await session.commit()
    return projects.project_view(project)


@router.get("/projects")
async def list_projects(caller: AdminCaller, session: Session) -> wire.ProjectList:
    rows = await projects.list_projects(session)
    return wire.ProjectList(projects=[projects.project_view(p) for p in rows])


@router.get("/workloads")
async def list_all_workloads(caller: AdminCaller, session: Session) -> WorkloadList:
    """Every project's workloads with their phase: what `inferencekey status` shows."""
    rows = await workloads.list_all_workloads(session)
    return WorkloadList(workloads=[workloads.workload_view(w, p) for w, p in rows])


@router.get("/projects/{project}/usage", response_model_exclude_unset=True)
async def project_usage(
    project: str,
    caller: AdminCaller,
    session: Session,
    start: str | None = Query(None, alias="from", description=usage.FROM_HELP),
    to: str | None = Query(None, description=usage.TO_HELP),
    group_by: str = Query("workload", description=usage.GROUP_BY_HELP),
) -> wire.UsageReport:
    """What `inferencekey usage PROJECT` reads: any project's usage."""
    owner = await projects.get_project(session, project)
    return await usage.usage_report(session, owner, start, to, group_by)


@router.get(
    "/workloads/{project}/{workload_slug}/logs",
    response_class=PlainTextResponse,
    responses=ENGINE_LOG_RESPONSES,
)
@outside_the_queue  # it connects to the replica's agent
async def workload_logs(
    project: str,
    workload_slug: str,
    caller: AdminCaller,
    request: Request,
    session: Session,
    replica: str | None = None,
) -> StreamingResponse:
    """What `inferencekey logs PROJECT/WORKLOAD` reads: one replica's engine log (the given
    one, or the newest that should run, a ready one first)."""
    owner = await projects.get_project(session, project)
    workload = await workloads.find_live_workload(session, owner, workload_slug)
    return await stream_engine_log(request, session, workload, replica)


@router.get("/workloads/{project}/{workload_slug}/endpoints")
async def workload_endpoints(
    project: str, workload_slug: str, caller: AdminCaller, session: Session
) -> wire.EndpointToggles:
    """What `inferencekey endpoints PROJECT/WORKLOAD` shows: the workload's endpoint toggles."""
    owner = await projects.get_project(session, project)
    workload = await workloads.find_live_workload(session, owner, workload_slug)
    return endpoint_toggles.toggles_view(workload)


@router.patch("/workloads/{project}/{workload_slug}/endpoints")
async def switch_workload_endpoints(
    project: str,
    workload_slug: str,
    body: wire.UpdateEndpointToggles,
    caller: AdminCaller,
    session: Session,
) -> wire.EndpointToggles:
    """`inferencekey endpoints PROJECT/WORKLOAD --on/--off NAME`."""
    owner = await projects.get_project(session, project)
    workload = await workloads.find_live_workload(session, owner, workload_slug, for_update=True)
    view = await endpoint_toggles.set_toggles(session, workload, body.endpoints)
    await session.commit()
    return view


@router.post("/tokens", status_code=status.HTTP_201_CREATED, response_model_exclude_unset=True)
async def create_sdk_token(
    body: CreateSdkTokenRequest, caller: AdminCaller, session: Session
) -> wire.Token:
    project = await projects.get_project(session, body.project)
    row, secret = await tokens.create_sdk_token(
        session, project, read_only=body.read_only, name=body.name
    )
    await session.commit()
    return tokens.token_view(row, project.slug, secret)


@router.post("/keys", status_code=status.HTTP_201_CREATED, response_model_exclude_unset=True)
async def create_live_key(
    body: CreateLiveKeyRequest, caller: AdminCaller, session: Session
) -> wire.Token:
    project = await projects.get_project(session, body.project)
    row, secret = await tokens.create_live_key(
        session, project, workloads=body.workloads, all_workloads=body.all, name=body.name
    )
    await session.commit()
    return tokens.token_view(row, project.slug, secret)


@router.get("/tokens", response_model_exclude_unset=True)
async def list_tokens(
    caller: AdminCaller,
    session: Session,
    project: str | None = None,
    kind: wire.TokenKindName | None = None,
) -> wire.TokenList:
    owner = await projects.get_project(session, project) if project else None
    rows = await tokens.list_tokens(session, project_id=owner.id if owner else None, kind=kind)
    slugs = await _project_slugs(session)
    return wire.TokenList(
        tokens=[tokens.token_view(row, slugs.get(row.project_id or "")) for row in rows]
    )


@router.delete("/tokens/{token_ref}", response_model_exclude_unset=True)
async def revoke_token(token_ref: str, caller: AdminCaller, session: Session) -> wire.Token:
    row = await tokens.revoke_token(session, token_ref)
    await session.commit()
    slugs = await _project_slugs(session)
    return tokens.token_view(row, slugs.get(row.project_id or ""))


async def _project_slugs(session: Session) -> dict[str, str]:
    return {p.id: p.slug for p in await projects.list_projects(session)}
