"""Webhook destinations (add, list, change, delete, test), their deliveries (list, redeliver),
and a workload's jobs as the control plane shows them.

A URL is checked before anything is written, outside any transaction (it resolves the host).
Adding one counts and inserts under the workload's row lock (``FOR NO KEY UPDATE``, as every API
write of a workload), so concurrent adds never pass the limit. At most ``MAX_PINGS_IN_FLIGHT``
test pings are sent at once by one Manager process; one asked for past that is answered at once,
not sent, rather than queued behind the others.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from manager import notify
from manager.db.models import Job, WebhookDelivery, WebhookDestination, Workload
from manager.errors import (
    DeliveryNotFound,
    DeliveryNotTerminal,
    JobNotFound,
    ValidationFailed,
    WebhookLimitReached,
    WebhookNotFound,
    WorkloadNotFound,
)
from manager.ids import new_id
from manager.jobs.service import FAILED, QUEUED, RUNNING, SUCCEEDED, job_view
from manager.services.timefmt import rfc3339, utcnow
from manager.settings import Settings

from . import payload, sender, urls, wire
from .deliverer import MUTED, PENDING, SKIPPED, STATUSES, TERMINAL

MAX_DESTINATIONS = 10
SECRET_PREFIX_LENGTH = 12
DEFAULT_LIMIT, MAX_LIMIT = 50, 500
JOB_STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED)
MAX_PINGS_IN_FLIGHT = 8


@dataclass(frozen=True)
class UrlRules:
    allow_private: bool
    timeout_s: float

    @classmethod
    def of(cls, settings: Settings) -> UrlRules:
        return cls(settings.webhook_allow_private, settings.webhook_timeout_s)

    async def check(self, url: str) -> None:
        await urls.check_destination(
            url, allow_private=self.allow_private, timeout_s=self.timeout_s
        )


class InFlight:
    """How many of something run at once in this process, refusing one past ``limit`` rather
    than queueing it (one event loop: no lock needed)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def take(self) -> bool:
        if self.count >= self.limit:
            return False
        self.count += 1
        return True

    def release(self) -> None:
        self.count -= 1


_pings = InFlight(MAX_PINGS_IN_FLIGHT)


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


# --- destinations ---------------------------------------------------------------------------


async def add_destination(
    session: AsyncSession, workload: Workload, url: str, enabled: bool, rules: UrlRules
) -> wire.Webhook:
    """The new destination's view, with its secret (the only time it is shown)."""
    workload_id, project_id = workload.id, workload.project_id
    await session.rollback()  # the look-up's transaction ends: no DNS inside one
    await rules.check(url)
    locked = await session.scalar(
        select(Workload.id)
        .where(Workload.id == workload_id, Workload.deleted_at.is_(None))
        .with_for_update(key_share=True)
    )
    if locked is None:
        raise WorkloadNotFound(f'workload "{workload_id}" was deleted')
    count = await session.scalar(
        select(func.count())
        .select_from(WebhookDestination)
        .where(WebhookDestination.workload_id == workload_id)
    )
    if (count or 0) >= MAX_DESTINATIONS:
        raise WebhookLimitReached(
            f"a workload has at most {MAX_DESTINATIONS} webhook destinations; this one has "
            f"{count}: delete one first"
        )
    now = utcnow()
    destination = WebhookDestination(
        id=new_id("whd"),
        project_id=project_id,
        workload_id=workload_id,
        url=url,
        secret=new_secret(),
        enabled=enabled,
        created_at=now,
        updated_at=now,
    )
    session.add(destination)
    await session.flush()
    return destination_view(destination, with_secret=True)


async def list_destinations(session: AsyncSession, workload_id: str) -> wire.WebhookList:
    rows = await session.scalars(
        select(WebhookDestination)
        .where(WebhookDestination.workload_id == workload_id)
        .order_by(WebhookDestination.created_at, WebhookDestination.id)
    )
    return wire.WebhookList(webhooks=[destination_view(row) for row in rows])


async def update_destination(
    session: AsyncSession,
    workload_id: str,
    destination_id: str,
    change: wire.UpdateWebhookRequest,
    rules: UrlRules,
) -> wire.Webhook:
    """A muted destination's pending deliveries are skipped (not sent); a new URL is checked
    like a new destination's, and pending deliveries go to it."""
    for field in ("url", "enabled"):
        if field in change.model_fields_set and getattr(change, field) is None:
            raise ValidationFailed(f"{field} must not be null", field=field)
    await _destination(session, workload_id, destination_id, for_update=False)  # 404 first
    if change.url is not None:
        await session.rollback()
        await rules.check(change.url)
    destination = await _destination(session, workload_id, destination_id, for_update=True)
    if change.url is not None:
        destination.url = change.url
    if change.enabled is not None:
        destination.enabled = change.enabled
        if not change.enabled:
            await session.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.destination_id == destination_id,
                    WebhookDelivery.status == PENDING,
                )
                .values(status=SKIPPED, last_error=MUTED, claim_token=None)
                .execution_options(synchronize_session=False)
            )
    destination.updated_at = utcnow()
    await session.flush()
    return destination_view(destination)


async def delete_destination(session: AsyncSession, workload_id: str, destination_id: str) -> None:
    """Its deliveries go with it (ON DELETE CASCADE), pending ones included."""
    # The destination's row first, as a mute takes it; then its deliveries in id order: the
    # cascade would lock them in whatever order it finds them, and deadlock with a deliverer
    # settling two of them the other way round.
    await _destination(session, workload_id, destination_id, for_update=True)
    await session.execute(
        select(WebhookDelivery.id)
        .where(WebhookDelivery.destination_id == destination_id)
        .order_by(WebhookDelivery.id)
        .with_for_update()
    )
    deleted = await session.scalar(
        delete(WebhookDestination)
        .where(
            WebhookDestination.id == destination_id,
            WebhookDestination.workload_id == workload_id,
        )
        .returning(WebhookDestination.id)
    )
    if deleted is None:
        raise _no_destination(destination_id)


async def ping_destination(
    session: AsyncSession, workload_id: str, destination_id: str, rules: UrlRules
) -> wire.WebhookTestResult:
    """Send a signed ``ping`` now (muted or not) and say what happened."""
    destination = await _destination(session, workload_id, destination_id, for_update=False)
    url, secret = destination.url, destination.secret
    await session.rollback()  # no transaction waits on the receiver
    if not _pings.take():
        return wire.WebhookTestResult(
            delivered=False,
            status_code=None,
            error=f"not sent: {_pings.limit} test pings are being sent already; try again shortly",
            duration_ms=0.0,
        )
    try:
        at = utcnow()
        body = payload.ping_body(at=at, destination_id=destination_id)
        headers = payload.headers(
            body, secret=secret, at=at, event=payload.PING_EVENT_HEADER, job_id=None
        )
        async with sender.make_client() as client:
            attempt = await sender.send(
                client,
                url,
                body,
                headers,
                allow_private=rules.allow_private,
                timeout_s=rules.timeout_s,
            )
    finally:
        _pings.release()
    return wire.WebhookTestResult(
        delivered=attempt.delivered,
        status_code=attempt.status_code,
        error=attempt.error,
        duration_ms=attempt.duration_ms,
    )


async def _destination(
    session: AsyncSession, workload_id: str, destination_id: str, *, for_update: bool
) -> WebhookDestination:
    query = select(WebhookDestination).where(
        WebhookDestination.id == destination_id, WebhookDestination.workload_id == workload_id
    )
    if for_update:
        query = query.with_for_update(key_share=True)  # deliveries reference it (FOR KEY SHARE)
    destination = await session.scalar(query)
    if destination is None:
        raise _no_destination(destination_id)
    return destination


def _no_destination(destination_id: str) -> WebhookNotFound:
    return WebhookNotFound(f'webhook destination "{destination_id}" not found in this workload')


def destination_view(row: WebhookDestination, *, with_secret: bool = False) -> wire.Webhook:
    view = wire.Webhook(
        id=row.id,
        workload_id=row.workload_id,
        url=row.url,
        enabled=row.enabled,
        secret_prefix=row.secret[:SECRET_PREFIX_LENGTH],
        created_at=rfc3339(row.created_at),
        updated_at=rfc3339(row.updated_at),
    )
    if with_secret:
        view.secret = row.secret
    return view


# --- deliveries -----------------------------------------------------------------------------


async def list_deliveries(
    session: AsyncSession, workload_id: str, status: str | None, limit: int | None
) -> wire.WebhookDeliveryList:
    """Newest first."""
    query = select(WebhookDelivery).where(WebhookDelivery.workload_id == workload_id)
    if status is not None:
        query = query.where(WebhookDelivery.status == _one_of("status", status, STATUSES))
    rows = await session.scalars(
        query.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id).limit(_limit(limit))
    )
    return wire.WebhookDeliveryList(deliveries=[delivery_view(row) for row in rows])


async def redeliver(
    session: AsyncSession, workload_id: str, delivery_id: str
) -> wire.WebhookDelivery:
    """A terminal or skipped delivery starts over: pending, no attempts, due now."""
    delivery = await session.scalar(
        select(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.workload_id == workload_id)
        .with_for_update(key_share=True)
    )
    if delivery is None:
        raise DeliveryNotFound(f'delivery "{delivery_id}" not found in this workload')
    if delivery.status not in (TERMINAL, SKIPPED):
        raise DeliveryNotTerminal(
            f"delivery {delivery_id} is {delivery.status}: only a terminal or skipped delivery "
            "can be redelivered"
        )
    now = utcnow()
    delivery.status = PENDING
    delivery.attempts = 0
    delivery.next_attempt_at = now
    delivery.claim_token = None
    delivery.last_status_code = None
    delivery.last_error = None
    delivery.attempt_log = []
    delivery.delivered_at = None
    await session.flush()
    await notify.notify(session, notify.WEBHOOKS, workload_id)
    return delivery_view(delivery)


def delivery_view(row: WebhookDelivery) -> wire.WebhookDelivery:
    return wire.WebhookDelivery(
        id=row.id,
        job_id=row.job_id,
        destination_id=row.destination_id,
        event=row.event,
        status=row.status,  # type: ignore[arg-type]
        attempts=row.attempts,
        next_attempt_at=rfc3339(row.next_attempt_at) if row.status == PENDING else None,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        attempt_log=[wire.WebhookAttempt.model_validate(entry) for entry in row.attempt_log],
        created_at=rfc3339(row.created_at),
        delivered_at=rfc3339(row.delivered_at),
    )


# --- jobs -----------------------------------------------------------------------------------


async def list_jobs(
    session: AsyncSession, workload_id: str, status: str | None, limit: int | None
) -> wire.JobList:
    """Newest first (index ``jobs_workload_created``); never reads a job's request."""
    query = select(Job).options(defer(Job.body)).where(Job.workload_id == workload_id)
    if status is not None:
        query = query.where(Job.status == _one_of("status", status, JOB_STATUSES))
    rows = await session.scalars(query.order_by(Job.created_at.desc(), Job.id).limit(_limit(limit)))
    return wire.JobList(jobs=[wire.Job.model_validate(job_view(row)) for row in rows])


async def job_with_deliveries(
    session: AsyncSession, workload_id: str, job_id: str
) -> wire.JobWithDeliveries:
    job = await session.scalar(
        select(Job).options(defer(Job.body)).where(Job.id == job_id, Job.workload_id == workload_id)
    )
    if job is None:
        raise JobNotFound(f'job "{job_id}" not found in this workload')
    deliveries = await session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.job_id == job_id)
        .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
    )
    view: dict[str, Any] = job_view(job)
    return wire.JobWithDeliveries.model_validate(
        {**view, "deliveries": [delivery_view(row) for row in deliveries]}
    )


def _one_of(field: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValidationFailed(
            f"{field} must be one of {', '.join(allowed)}; got {value[:40]!r}", field=field
        )
    return value


def _limit(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_LIMIT
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationFailed(f"limit must be from 1 to {MAX_LIMIT}", field="limit")
    return limit
