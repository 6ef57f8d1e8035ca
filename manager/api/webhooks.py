"""Webhook destinations, their deliveries and a workload's jobs (contract section 8).

The control plane's routes (``/api/workloads/{ref}/...``, an ``ik_sdk_`` token: read scope for
GETs, write scope for the rest) and the operator's twins of the webhook ones
(``/api/admin/workloads/{project}/{workload}/...``, what ``inferencekey webhooks`` calls) run the
same services.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response, status

from manager.api.border import BorderRoute, outside_the_queue
from manager.db.models import Workload
from manager.openapi import ERROR_RESPONSES
from manager.services import projects, workloads
from manager.webhooks import service
from manager.webhooks.service import UrlRules
from manager.webhooks.wire import (
    CreateWebhookRequest,
    JobList,
    JobWithDeliveries,
    UpdateWebhookRequest,
    Webhook,
    WebhookDelivery,
    WebhookDeliveryList,
    WebhookList,
    WebhookTestResult,
)

from .deps import AdminCaller, ControlReader, ControlWriter, OwnProject, Session

router = APIRouter(prefix="/api", route_class=BorderRoute, responses=ERROR_RESPONSES)
admin_router = APIRouter(prefix="/api/admin", route_class=BorderRoute, responses=ERROR_RESPONSES)

STATUS_HELP = "only deliveries in this state: pending, delivered, terminal or skipped"
LIMIT_HELP = "at most this many, newest first (default 50, at most 500)"


async def _rules(request: Request) -> UrlRules:
    return UrlRules.of(request.app.state.settings)


Rules = Annotated[UrlRules, Depends(_rules)]


async def _readable(
    workload_ref: str, owner: OwnProject, caller: ControlReader, session: Session
) -> Workload:
    return await workloads.find_workload(session, caller, owner, workload_ref, for_update=False)


async def _writable(
    workload_ref: str, owner: OwnProject, caller: ControlWriter, session: Session
) -> Workload:
    return await workloads.find_workload(session, caller, owner, workload_ref, for_update=False)


async def _operated(
    project: str, workload_slug: str, caller: AdminCaller, session: Session
) -> Workload:
    owner = await projects.get_project(session, project)
    return await workloads.find_live_workload(session, owner, workload_slug)


WorkloadLookup = Callable[..., Awaitable[Workload]]


def _webhook_routes(
    on: APIRouter, prefix: str, readable: WorkloadLookup, writable: WorkloadLookup
) -> None:
    """The destination and delivery routes under ``prefix`` (a workload's path). This module
    does without ``from __future__ import annotations``: these annotations name the lookups."""
    Readable = Annotated[Workload, Depends(readable)]
    Writable = Annotated[Workload, Depends(writable)]

    @on.post(
        f"{prefix}/webhooks",
        status_code=status.HTTP_201_CREATED,
        response_model_exclude_unset=True,
    )
    async def add_webhook(
        body: CreateWebhookRequest,
        session: Session,
        rules: Rules,
        workload: Writable,
    ) -> Webhook:
        """Add a destination; the answer holds its signing secret, shown this once."""
        view = await service.add_destination(session, workload, body.url, body.enabled, rules)
        await session.commit()
        return view

    @on.get(f"{prefix}/webhooks", response_model_exclude_unset=True)
    async def list_webhooks(session: Session, workload: Readable) -> WebhookList:
        return await service.list_destinations(session, workload.id)

    @on.patch(f"{prefix}/webhooks/{{webhook_id}}", response_model_exclude_unset=True)
    async def update_webhook(
        webhook_id: str,
        body: UpdateWebhookRequest,
        session: Session,
        rules: Rules,
        workload: Writable,
    ) -> Webhook:
        """Mute (``enabled: false``: its pending deliveries are skipped), unmute, or move it."""
        view = await service.update_destination(session, workload.id, webhook_id, body, rules)
        await session.commit()
        return view

    @on.delete(
        f"{prefix}/webhooks/{{webhook_id}}",
        status_code=status.HTTP_204_NO_CONTENT,
        response_class=Response,
    )
    async def delete_webhook(webhook_id: str, session: Session, workload: Writable) -> Response:
        """Delete a destination and its deliveries."""
        await service.delete_destination(session, workload.id, webhook_id)
        await session.commit()
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @on.post(f"{prefix}/webhooks/{{webhook_id}}/test")
    @outside_the_queue  # it waits for the destination's answer, not for this process
    async def test_webhook(
        webhook_id: str, session: Session, rules: Rules, workload: Writable
    ) -> WebhookTestResult:
        """Send a signed ping now (``X-InferenceKey-Event: ping``) and say how it went."""
        return await service.ping_destination(session, workload.id, webhook_id, rules)

    @on.get(f"{prefix}/deliveries")
    async def list_deliveries(
        session: Session,
        workload: Readable,
        delivery_status: str | None = Query(None, alias="status", description=STATUS_HELP),
        limit: int | None = Query(None, description=LIMIT_HELP),
    ) -> WebhookDeliveryList:
        return await service.list_deliveries(session, workload.id, delivery_status, limit)

    @on.post(f"{prefix}/deliveries/{{delivery_id}}/redeliver")
    async def redeliver(delivery_id: str, session: Session, workload: Writable) -> WebhookDelivery:
        """Send a terminal or skipped delivery again: pending, no attempts, due now."""
        view = await service.redeliver(session, workload.id, delivery_id)
        await session.commit()
        return view


_webhook_routes(router, "/workloads/{workload_ref}", _readable, _writable)
_webhook_routes(admin_router, "/workloads/{project}/{workload_slug}", _operated, _operated)


@router.get("/workloads/{workload_ref}/jobs", response_model_exclude_unset=True)
async def list_jobs(
    workload_ref: str,
    session: Session,
    workload: Annotated[Workload, Depends(_readable)],
    job_status: str | None = Query(
        None, alias="status", description="queued, running, succeeded or failed"
    ),
    limit: int | None = Query(None, description=LIMIT_HELP),
) -> JobList:
    """The workload's async jobs, newest first, as ``GET /endpoint/.../jobs/{id}`` shows them."""
    return await service.list_jobs(session, workload.id, job_status, limit)


@router.get("/workloads/{workload_ref}/jobs/{job_id}", response_model_exclude_unset=True)
async def get_job(
    workload_ref: str,
    job_id: str,
    session: Session,
    workload: Annotated[Workload, Depends(_readable)],
) -> JobWithDeliveries:
    """One job, with the deliveries of its result."""
    return await service.job_with_deliveries(session, workload.id, job_id)
