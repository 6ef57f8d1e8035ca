"""Delivering finished jobs to their workload's webhook destinations: queued in Postgres in the
transaction that finishes the job, sent by any Manager process, retried, never lost.

Each (job, destination) pair is one ``webhook_deliveries`` row. A deliverer claims due pending
rows with ``FOR UPDATE SKIP LOCKED`` (in a ``MATERIALIZED`` CTE, so the locking subquery runs
once and the claim never takes more than its room), counting the attempt and moving
``next_attempt_at`` past a lease in the same statement, then sends outside any transaction and
records the outcome only while its claim (``claim_token``) still holds. A process that dies
mid-attempt leaves the row to be claimed again when the lease passes. A failed attempt is
retried after the next of ``webhook_retry_delays_s``; the one after the last delay failing makes
the delivery terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import String, Table, bindparam, case, cast, func, literal, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.dml import ReturningInsert

from ik_contracts.endpoint_paths import JOBS_TOGGLE
from manager import notify
from manager.db.models import Job, Project, WebhookDelivery, WebhookDestination, Workload
from manager.jobs.service import FAILED, SUCCEEDED
from manager.services.timefmt import rfc3339, utcnow
from manager.settings import Settings

from . import payload, sender

log = logging.getLogger("inferencekey.webhooks")

PENDING, DELIVERED, TERMINAL, SKIPPED = "pending", "delivered", "terminal", "skipped"
STATUSES = (PENDING, DELIVERED, TERMINAL, SKIPPED)
MUTED = "destination muted"
JOBS_OFF = "the workload's jobs endpoint is switched off"
IDLE_WAIT_S = 1.0  # without a notification, look for due deliveries this often
MIN_WAIT_S = 0.02


async def enqueue_deliveries(session: AsyncSession, job_ids: Sequence[str]) -> int:
    """Queue a delivery of each finished job to each enabled destination of its workload, in the
    caller's transaction (the one that finishes the jobs), and wake the deliverers on commit.

    Nothing is queued for a workload whose ``jobs`` toggle is off, nor twice for one job and
    destination, nor for a destination deleted meanwhile (its row is locked ``FOR KEY SHARE`` as
    it is read; one a concurrent delete got first drops out once that delete commits, where the
    foreign key check would fail the caller's whole transaction). Returns how many were
    queued."""
    if not job_ids:
        return 0
    queued = await session.execute(_ENQUEUE, {"job_ids": list(job_ids)})
    workload_ids: list[str] = list(queued.scalars())
    for workload_id in sorted(set(workload_ids)):
        await notify.notify(session, notify.WEBHOOKS, workload_id)
    return len(workload_ids)


def _enqueue_statement() -> ReturningInsert[Any]:
    """``enqueue_deliveries``' one statement, built once: every finished job's batch runs it."""
    event = case(
        (Job.status == SUCCEEDED, literal(payload.JOB_COMPLETED)),
        else_=literal(payload.JOB_FAILED),
    )
    rows = (
        select(
            literal("whdl_") + func.replace(cast(func.gen_random_uuid(), String), "-", ""),
            Job.id,
            WebhookDestination.id,
            Job.workload_id,
            Job.project_id,
            event,
            literal(PENDING),
        )
        .select_from(Job)
        .join(Workload, Workload.id == Job.workload_id)
        .join(
            WebhookDestination,
            (WebhookDestination.workload_id == Job.workload_id) & WebhookDestination.enabled,
        )
        .where(
            Job.id.in_(bindparam("job_ids", expanding=True)),
            Job.status.in_((SUCCEEDED, FAILED)),
            ~(literal(JOBS_TOGGLE) == func.any(Workload.endpoints_off)),
        )
        # Locked as the foreign key check would lock them; it blocks only a delete (or a key
        # change), and under READ COMMITTED a row such a delete removed is skipped.
        .with_for_update(read=True, key_share=True, of=WebhookDestination)
    )
    columns = ["id", "job_id", "destination_id", "workload_id", "project_id", "event", "status"]
    deliveries: Table = WebhookDelivery.__table__  # type: ignore[assignment]  # Core: no ORM bulk path
    return (
        pg_insert(deliveries)
        .from_select(columns, rows)
        .on_conflict_do_nothing(index_elements=["job_id", "destination_id"])
        .returning(deliveries.c.workload_id)
    )


_ENQUEUE = _enqueue_statement()
# What a delivery's body is made of: every column of a finished job but its request (``body``)
# and its result, which is read apart, only for the jobs whose deliveries are sent.
_JOB_COLUMNS = (
    Job.id,
    Job.workload_id,
    Job.status,
    Job.context,
    Job.attempts,
    Job.created_at,
    Job.started_at,
    Job.finished_at,
    Job.result_status,
    Job.result_content_type,
    Job.error,
)


Places = dict[str, tuple[str, str, list[str]]]  # workload id -> project slug, slug, endpoints off


@dataclass(frozen=True)
class Claimed:
    id: str
    job_id: str
    destination_id: str
    attempt: int  # this attempt's number, counted when claimed
    token: str


@dataclass(frozen=True)
class Outgoing:
    """What one attempt sends, read in the claim's transaction."""

    claimed: Claimed
    url: str
    secret: str
    event: str
    context: str | None
    data: str


class WebhookDeliverer:
    """One per Manager process; any number of processes may run against one database."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: Settings,
        hub: notify.NotificationHub,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.hub = hub
        self.client = client or sender.make_client()
        self.max_attempts = len(settings.webhook_retry_delays_s) + 1
        # Longer than an attempt can take, so a live process never loses its claim.
        self.lease_s = max(settings.webhook_lease_s, settings.webhook_timeout_s + 2)
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()

    async def run_forever(self) -> None:
        self.hub.on(notify.WEBHOOKS, lambda _payload: self._wake.set())
        try:
            while True:
                self._wake.clear()  # before claiming: a wake-up during the claim is kept
                try:
                    await self.deliver_due()
                    wait = await self._until_next_due()
                except Exception:
                    log.exception("claiming webhook deliveries failed; retrying")
                    wait = IDLE_WAIT_S
                await notify.wait_for(self._wake, wait)
        finally:
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.client.aclose()

    async def deliver_due(self) -> int:
        """Claim what is due (as much as this process has room for) and start sending it."""
        room = self.settings.webhook_concurrency - len(self._tasks)
        if room <= 0:
            return 0
        outgoing = await self._claim(room)
        for item in outgoing:
            task = asyncio.create_task(self._attempt(item), name=f"webhook-{item.claimed.id}")
            self._tasks.add(task)
            task.add_done_callback(self._done)
        return len(outgoing)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()  # room for the next one, and maybe a retry to schedule

    async def _until_next_due(self) -> float:
        if len(self._tasks) >= self.settings.webhook_concurrency:
            return IDLE_WAIT_S  # no room: an attempt that ends wakes the loop
        async with self.sessions() as session:
            seconds = await session.scalar(
                select(
                    func.extract("epoch", func.min(WebhookDelivery.next_attempt_at) - func.now())
                ).where(WebhookDelivery.status == PENDING)
            )
        if seconds is None:
            return IDLE_WAIT_S
        return min(max(float(seconds), MIN_WAIT_S), IDLE_WAIT_S)

    async def _claim(self, limit: int) -> list[Outgoing]:
        token = uuid.uuid4().hex
        async with self.sessions() as session:
            due = (
                select(WebhookDelivery.id)
                .where(
                    WebhookDelivery.status == PENDING,
                    WebhookDelivery.next_attempt_at <= func.now(),
                )
                .order_by(WebhookDelivery.next_attempt_at)
                .limit(limit)
                .with_for_update(skip_locked=True, key_share=True)
                .cte("due")
                # Run once: a subquery the planner re-ran could lock and claim past the limit.
                .prefix_with("MATERIALIZED", dialect="postgresql")
            )
            rows = await session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == due.c.id)
                .values(
                    attempts=WebhookDelivery.attempts + 1,
                    claim_token=token,
                    next_attempt_at=func.now() + timedelta(seconds=self.lease_s),
                )
                .returning(
                    WebhookDelivery.id,
                    WebhookDelivery.job_id,
                    WebhookDelivery.destination_id,
                    WebhookDelivery.attempts,
                )
                .execution_options(synchronize_session=False)
            )
            claimed = [Claimed(*row, token=token) for row in rows.all()]
            outgoing = await self._prepare(session, claimed) if claimed else []
            await session.commit()
        return outgoing

    async def _prepare(self, session: AsyncSession, claimed: list[Claimed]) -> list[Outgoing]:
        """What to send for each claimed delivery; the ones not to send are settled here.

        A job's ``body`` is never read, and its result only where it is sent: a binary one over
        the ceiling is refused by its stored size and type, before it is read or encoded."""
        destinations = {
            row.id: row
            for row in await session.scalars(
                select(WebhookDestination).where(
                    WebhookDestination.id.in_({c.destination_id for c in claimed})
                )
            )
        }
        # Not ORM rows: transient Jobs (never in a session) of the columns read, and the size
        # of each one's result, whose bytes are read below only where they are sent.
        jobs: dict[str, Job] = {}
        sizes: dict[str, int] = {}
        for row in await session.execute(
            select(*_JOB_COLUMNS, func.octet_length(Job.result).label("result_bytes")).where(
                Job.id.in_({c.job_id for c in claimed})
            )
        ):
            columns = row._asdict()
            sizes[row.id] = columns.pop("result_bytes") or 0
            jobs[row.id] = Job(**columns)
        places: Places = {
            workload_id: (project_slug, slug, off)
            for workload_id, project_slug, slug, off in await session.execute(
                select(Workload.id, Project.slug, Workload.slug, Workload.endpoints_off)
                .join(Project, Project.id == Workload.project_id)
                .where(Workload.id.in_({job.workload_id for job in jobs.values()}))
            )
        }
        ceiling = self.settings.webhook_max_binary_bytes
        sendable: list[tuple[Claimed, WebhookDestination, Job]] = []
        for item in claimed:
            destination, job = destinations.get(item.destination_id), jobs.get(item.job_id)
            if destination is None or job is None or job.workload_id not in places:
                await self._settle(session, item, TERMINAL, "its job or destination is gone")
                continue
            off = places[job.workload_id][2]
            if not destination.enabled:
                await self._settle(session, item, SKIPPED, MUTED)
            elif JOBS_TOGGLE in (off or ()):
                await self._settle(session, item, SKIPPED, JOBS_OFF)
            elif item.attempt > self.max_attempts:
                # The last attempt's process stopped before it could record it.
                await self._settle(
                    session, item, TERMINAL, f"gave up after {self.max_attempts} attempts"
                )
            elif sizes[job.id] > ceiling and payload.binary_result(job.result_content_type):
                await self._settle(session, item, TERMINAL, self._over_ceiling(job, places))
            else:
                sendable.append((item, destination, job))
        if sendable:
            read = select(Job.id, Job.result).where(Job.id.in_({job.id for *_, job in sendable}))
            for job_id, result in await session.execute(read):
                jobs[job_id].result = result
        built: dict[str, payload.JobParts | str] = {}  # job id -> what it sends, or why not
        outgoing: list[Outgoing] = []
        for item, destination, job in sendable:
            if job.id not in built:
                built[job.id] = self._build(job, sizes[job.id], places)
            parts = built[job.id]
            if isinstance(parts, str):
                await self._settle(session, item, TERMINAL, parts)
                continue
            outgoing.append(
                Outgoing(
                    claimed=item,
                    url=destination.url,
                    secret=destination.secret,
                    event=parts.event,
                    context=parts.context,
                    data=parts.data,
                )
            )
        return outgoing

    def _build(self, job: Job, result_bytes: int, places: Places) -> payload.JobParts | str:
        """What every delivery of ``job`` sends, or why none can be sent (it ends them terminal:
        one job's body must not fail the claim of the batch)."""
        try:
            parts = payload.job_parts(job)
        except payload.Unbuildable as error:
            return str(error)
        except Exception as error:
            log.exception("building the webhook body of job %s failed", job.id)
            return f"its body cannot be built: {type(error).__name__}: {error}"
        # A JSON-typed result that does not parse goes as binary: only its data could tell.
        if parts.binary and result_bytes > self.settings.webhook_max_binary_bytes:
            return self._over_ceiling(job, places)
        return parts

    def _over_ceiling(self, job: Job, places: Places) -> str:
        project_slug, workload_slug, _ = places[job.workload_id]
        ceiling = _size(self.settings.webhook_max_binary_bytes)
        path = f"/endpoint/{project_slug}/{workload_slug}/jobs/{job.id}"
        return f"binary result over the {ceiling} delivery ceiling; read it with GET {path}"

    async def _settle(self, session: AsyncSession, item: Claimed, status: str, error: str) -> None:
        """End a claimed delivery without sending it (no attempt is counted)."""
        await session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == item.id, WebhookDelivery.claim_token == item.token)
            .values(
                status=status,
                attempts=WebhookDelivery.attempts - 1,
                claim_token=None,
                next_attempt_at=func.now(),
                last_error=error,
            )
            .execution_options(synchronize_session=False)
        )
        if status == TERMINAL:
            log.warning(
                "webhook delivery %s (job %s, destination %s) is terminal: %s",
                item.id,
                item.job_id,
                item.destination_id,
                error,
            )

    async def _attempt(self, item: Outgoing) -> None:
        try:
            at = utcnow()
            body = payload.job_body(
                event=item.event,
                at=at,
                job_id=item.claimed.job_id,
                context=item.context,
                data=item.data,
            )
            headers = payload.headers(
                body,
                secret=item.secret,
                at=at,
                event=payload.JOB_EVENT_HEADER,
                job_id=item.claimed.job_id,
            )
            attempt = await sender.send(
                self.client,
                item.url,
                body,
                headers,
                allow_private=self.settings.webhook_allow_private,
                timeout_s=self.settings.webhook_timeout_s,
            )
            await self._record(item.claimed, at, attempt)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Left to its lease: it is sent again once the lease passes.
            log.exception("webhook delivery %s failed in the deliverer", item.claimed.id)

    async def _record(self, item: Claimed, at: datetime, attempt: sender.Attempt) -> None:
        entry = {
            "attempt": item.attempt,
            "at": rfc3339(at),
            "status_code": attempt.status_code,
            "error": attempt.error,
            "duration_ms": attempt.duration_ms,
        }
        values: dict[str, Any] = {
            "claim_token": None,
            "last_status_code": attempt.status_code,
            "last_error": attempt.error,
            "attempt_log": WebhookDelivery.attempt_log.op("||")(literal([entry], JSONB)),
        }
        if attempt.delivered:
            values.update(status=DELIVERED, delivered_at=func.now(), next_attempt_at=func.now())
        elif item.attempt >= self.max_attempts:
            values.update(status=TERMINAL, next_attempt_at=func.now())
            log.warning(
                "webhook delivery %s (job %s, destination %s) is terminal after %d attempts: %s",
                item.id,
                item.job_id,
                item.destination_id,
                item.attempt,
                attempt.error,
            )
        else:
            delay = self.settings.webhook_retry_delays_s[item.attempt - 1]
            values["next_attempt_at"] = func.now() + timedelta(seconds=delay)
        async with self.sessions() as session:
            await session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == item.id, WebhookDelivery.claim_token == item.token)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            await session.commit()


def _size(n: int) -> str:
    mib = 1024 * 1024
    return f"{n // mib} MiB" if n and n % mib == 0 else f"{n} bytes"
