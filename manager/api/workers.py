"""Workers and GPU resources: the operator sees all; an SDK token its project's and the pool."""

from __future__ import annotations

from fastapi import APIRouter, Request

from manager.api.border import BorderRoute, authenticated
from manager.auth import Principal, Scope, TokenKind, require_scope
from manager.errors import WrongCredentialType
from manager.openapi import ERROR_RESPONSES
from manager.services import gpu_catalog, workers
from manager.wire import GpuCatalog, GpuResourceList, WorkerList

from .deps import Session

router = APIRouter(prefix="/api", route_class=BorderRoute, responses=ERROR_RESPONSES)


async def _viewer(request: Request) -> Principal:
    principal = await authenticated(request)
    if principal.kind is TokenKind.SDK:
        require_scope(principal, Scope.WORKLOAD_READ)
    elif principal.kind is not TokenKind.ADMIN:
        raise WrongCredentialType(
            "workers and GPU resources need an ik_sdk_ token or the ik_admin_ credential; "
            f"got {principal.display}"
        )
    return principal


@router.get("/workers", response_model_exclude_unset=True)  # no worker's token, not even null
async def list_workers(request: Request, session: Session) -> WorkerList:
    viewer = await _viewer(request)
    rows = await workers.visible_workers(session, viewer.project_id)
    gpus = await workers.gpus_of(session, [w.id for w in rows])
    return WorkerList(workers=[workers.worker_view(w, gpus) for w in rows])


@router.get("/gpu-resources")
async def list_gpu_resources(request: Request, session: Session) -> GpuResourceList:
    viewer = await _viewer(request)
    rows = await workers.visible_workers(session, viewer.project_id)
    gpus = await workers.gpus_of(session, [w.id for w in rows])
    names = {w.id: w.name for w in rows}
    return GpuResourceList(
        gpu_resources=[workers.pool_gpu_view(g, names[g.worker_id]) for g in gpus]
    )


@router.get("/gpu-catalog")
async def show_gpu_catalog(request: Request, session: Session) -> GpuCatalog:
    """The shared pool's GPU display names (what ``gpu_pool`` takes), how many are free, and
    the operator's hourly price of each."""
    await _viewer(request)
    return await gpu_catalog.catalog(session)
