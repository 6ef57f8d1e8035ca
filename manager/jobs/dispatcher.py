"""Running queued jobs: any Manager process claims them and sends each through a ready replica.

A claim is one statement (``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)``) that
marks the jobs running under this process's lease; the lease is renewed while they run. A process
that dies leaves its jobs to be claimed again once their lease expires: at least once, never lost.

Jobs never starve sync traffic: each ready replica runs at most ``jobs_per_replica`` jobs from a
process at a time (sync requests have no such bound), and a job's request counts in the replica's
outstanding requests like a sync one, so the gateway's least-outstanding choice sees it.

The database stays off each job's path: a process claims up to twice what its replicas' job
slots hold (the rest wait in memory, under the lease, for a slot), and results are written in
batches, each one transaction for every result finished meanwhile (with their webhook
deliveries).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from typing import cast

from sqlalchemy import Table, and_, bindparam, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.dml import Update
from sqlalchemy.sql.elements import ColumnElement

from ik_contracts.forwarding import GATEWAY_HEADER, REPLICA_HEADER
from ik_contracts.logs import ids
from ik_contracts.upstream import UpstreamClient, UpstreamError
from manager import notify
from manager.db.models import Job
from manager.gateway.routes import ReplicaTarget, RouteTable, WorkloadRoute
from manager.settings import Settings
from manager.webhooks.deliverer import enqueue_deliveries

from .service import FAILED, QUEUED, RUNNING, SUCCEEDED

log = logging.getLogger("inferencekey.jobs")

IDLE_WAIT_S = 1.0  # without a notification, look for claimable jobs this often
RETRY_SOON_S = 2.0  # a job whose replica could not be reached is claimable again after this
CLAIM_AHEAD = 8  # claim up to this many times the free job slots
GATHER_S = 0.002  # after a wake-up, let a burst of submits arrive so one claim takes them all
SLOT_WAIT_S = 1.0  # a claimed job waiting for a slot looks at the replicas again this often


@dataclass(frozen=True)
class Claimed:
    id: str
    workload_id: str
    route: str
    body: bytes
    content_type: str
    attempts: int


def claimable() -> ColumnElement[bool]:
    """Jobs waiting for a run: queued, or running under a lease that expired."""
    return or_(
        Job.status == QUEUED,
        and_(Job.status == RUNNING, Job.lease_until < func.now()),
    )


class JobDispatcher:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        routes: RouteTable,
        client: UpstreamClient,
        settings: Settings,
        hub: notify.NotificationHub,
        manager_id: str,
    ) -> None:
        self.sessions = sessions
        self.routes = routes
        self.client = client
        self.settings = settings
        self.hub = hub
        self.manager_id = manager_id
        self.running: dict[str, set[str]] = defaultdict(set)  # workload id -> job ids
        self.on_replica: dict[str, int] = defaultdict(int)  # replica id -> jobs running
        self._tasks: set[asyncio.Task[None]] = set()
        # Set by a new job anywhere (the JOBS notification) and by a job finishing here (room).
        self._wake = asyncio.Event()
        self._slot_freed = asyncio.Event()  # set (and replaced) when a job slot comes free
        self._results = ResultWriter(sessions, manager_id)

    async def run_forever(self) -> None:
        renewing = asyncio.create_task(self._renew_leases(), name="job-leases")
        writing = asyncio.create_task(self._results.run_forever(), name="job-results")
        self.hub.on(notify.JOBS, lambda _payload: self._wake.set())
        try:
            while True:
                self._wake.clear()  # before claiming: a wake-up during the claim is kept
                try:
                    await self.claim_once()
                except Exception:
                    log.exception("claiming jobs failed; retrying")
                if await notify.wait_for(self._wake, IDLE_WAIT_S):
                    await asyncio.sleep(GATHER_S)
        finally:
            renewing.cancel()
            writing.cancel()
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def claim_once(self) -> int:
        """Claim what this process has room for; returns how many jobs it started."""
        by_id = {id_: route for id_, route in self.routes.by_id.items() if route.replicas}
        if not by_id:
            return 0
        async with self.sessions() as session:
            # Every workload with claimable jobs (read from the index of unfinished jobs alone),
            # then those this process can route: a fleet's thousands of routable workloads are
            # never sent as parameters.
            waiting = (
                await session.execute(select(Job.workload_id).where(claimable()).distinct())
            ).scalars()
            claimed: list[Claimed] = []
            for workload_id in list(waiting):
                route = by_id.get(workload_id)
                if route is None:
                    continue
                slots = len(route.replicas) * self.settings.jobs_per_replica
                room = slots * CLAIM_AHEAD - len(self.running[workload_id])
                if room > 0:
                    claimed += await self._claim(session, workload_id, room)
            await session.commit()
        # Run only once the claim is committed: a result written before would miss the row
        # (its committed version is not yet claimed by this process).
        for job in claimed:
            self.running[job.workload_id].add(job.id)
            task = asyncio.create_task(self._run(job), name=f"job-{job.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(claimed)

    async def _claim(self, session: AsyncSession, workload_id: str, limit: int) -> list[Claimed]:
        mine = self.running[workload_id]
        oldest = (
            select(Job.id)
            .where(Job.workload_id == workload_id, claimable())
            .order_by(Job.created_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        if mine:  # its own, whose lease lapsed while it waited: they are still this process's
            oldest = oldest.where(Job.id.not_in(list(mine)))
        # Materialized: the UPDATE takes exactly the rows the one locking SELECT chose (a
        # subquery the planner re-ran could lock and claim more than ``limit``).
        due = oldest.cte("due").prefix_with("MATERIALIZED")
        rows = await session.execute(
            update(Job)
            .where(Job.id == due.c.id)
            .values(
                status=RUNNING,
                attempts=Job.attempts + 1,
                claimed_by=self.manager_id,
                lease_until=func.now() + timedelta(seconds=self.settings.job_lease_s),
                started_at=func.coalesce(Job.started_at, func.now()),
            )
            .returning(Job.id, Job.workload_id, Job.route, Job.body, Job.content_type, Job.attempts)
            .execution_options(synchronize_session=False)
        )
        return [Claimed(*row) for row in rows.all()]

    async def _run(self, job: Claimed) -> None:
        try:
            if job.attempts > self.settings.job_max_attempts:
                await self._finish(job, FAILED, error=f"gave up after {job.attempts - 1} attempts")
                return
            route = self.routes.by_id.get(job.workload_id)
            if route is None:
                await self._finish(job, FAILED, error="the workload was deleted")
                return
            await self._send(job, route)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "job %s failed in the dispatcher", job.id, extra=ids(workload_id=job.workload_id)
            )
            await self._release(job, sent=True)
        finally:
            running = self.running[job.workload_id]
            running.discard(job.id)
            # Claim again once half the claimed-ahead jobs are gone (one claim for many jobs).
            route = self.routes.by_id.get(job.workload_id)
            slots = len(route.replicas) * self.settings.jobs_per_replica if route else 0
            if len(running) <= slots * CLAIM_AHEAD // 2:
                self._wake.set()

    async def _slot(self, job: Claimed, route: WorkloadRoute) -> ReplicaTarget | None:
        """The gateway's choice (least outstanding, ejected ones skipped) among the replicas
        with a free job slot, once one has: a job claimed ahead waits here, under the lease the
        dispatcher renews. None when no replica is usable (the job goes back to the queue)."""
        per_replica = self.settings.jobs_per_replica
        while True:
            now = time.monotonic()
            full = {r.id for r in route.replicas if self.on_replica[r.id] >= per_replica}
            replica = route.pick(now, full)
            if replica is not None:
                return replica
            if route.pick(now, set()) is None:
                return None
            await notify.wait_for(self._slot_freed, SLOT_WAIT_S)
            route = self.routes.by_id.get(job.workload_id) or route

    def _free_slot(self, replica: ReplicaTarget) -> None:
        """Wake every job waiting for a slot (each looks again; a new event for the next)."""
        self.on_replica[replica.id] -= 1
        freed, self._slot_freed = self._slot_freed, asyncio.Event()
        freed.set()

    async def _send(self, job: Claimed, route: WorkloadRoute) -> None:
        replica = await self._slot(job, route)
        if replica is None:
            await self._release(job, sent=False)
            return
        replica.outstanding += 1
        self.on_replica[replica.id] += 1
        try:
            response = await self.client.request(
                replica.host,
                replica.port,
                "POST",
                f"/endpoint/{route.project_slug}/{route.slug}/{job.route}",
                [
                    (b"content-type", job.content_type.encode("latin-1")),
                    (GATEWAY_HEADER, replica.gateway_secret),
                    (REPLICA_HEADER, replica.id.encode()),
                ],
                job.body,
                connect_timeout=self.settings.gateway_connect_timeout_s,
                first_byte_timeout=self.settings.gateway_first_byte_timeout_s,
                idle_timeout=self.settings.gateway_idle_timeout_s,
            )
            try:
                result = await response.read()
            finally:
                response.close()
        except UpstreamError as error:
            replica.last_error = f"worker {replica.worker_id}: {error}"
            log.warning(
                "job %s: %s; it runs again", job.id, error, extra=ids(workload_id=job.workload_id)
            )
            await self._release(job, sent=True)
            return
        finally:
            replica.outstanding -= 1
            self._free_slot(replica)
        content_type = response.header(b"content-type")
        ok = 200 <= response.status < 300
        await self._finish(
            job,
            SUCCEEDED if ok else FAILED,
            result=result,
            content_type=content_type.decode("latin-1") if content_type else None,
            status_code=response.status,
            error=None if ok else f"the engine answered {response.status}: {result[:300]!r}",
        )

    async def _finish(
        self,
        job: Claimed,
        status: str,
        *,
        result: bytes | None = None,
        content_type: str | None = None,
        status_code: int | None = None,
        error: str | None = None,
    ) -> None:
        await self._results.write(
            {
                "b_id": job.id,
                "b_attempts": job.attempts,
                "b_status": status,
                "b_result": result,
                "b_content_type": content_type,
                "b_status_code": status_code,
                "b_error": error,
            }
        )

    async def _release(self, job: Claimed, *, sent: bool) -> None:
        """Give the job back to be claimed again shortly (by any process). A job never sent
        (no replica was usable) gets its attempt back: only runs count toward the limit."""
        async with self.sessions() as session:
            await session.execute(
                update(Job)
                .where(*_this_claim(job, self.manager_id))
                .values(
                    lease_until=func.now() + timedelta(seconds=RETRY_SOON_S),
                    attempts=Job.attempts if sent else Job.attempts - 1,
                )
                .execution_options(synchronize_session=False)
            )
            await session.commit()

    async def _renew_leases(self) -> None:
        every = max(self.settings.job_lease_s / 3, 0.1)
        while True:
            await asyncio.sleep(every)
            mine = [job_id for jobs in self.running.values() for job_id in jobs]
            if not mine:
                continue
            # Locked in id order, skipping rows a result write holds (they are finishing):
            # the result writer locks in id order too, so the two never deadlock.
            renewed = (
                select(Job.id)
                .where(Job.id.in_(mine), Job.claimed_by == self.manager_id, Job.status == RUNNING)
                .order_by(Job.id)
                .with_for_update(skip_locked=True, key_share=True)
                .cte("renewed")
                .prefix_with("MATERIALIZED")
            )
            try:
                async with self.sessions() as session:
                    await session.execute(
                        update(Job)
                        .where(Job.id == renewed.c.id)
                        .values(
                            lease_until=func.now() + timedelta(seconds=self.settings.job_lease_s)
                        )
                        .execution_options(synchronize_session=False)
                    )
                    await session.commit()
            except Exception:
                log.exception("renewing job leases failed")


def _this_claim(job: Claimed, manager_id: str) -> tuple[ColumnElement[bool], ...]:
    """The job's row as this claim left it: a job claimed again since (by any process, this
    one included, after its lease lapsed) is no longer this claim's to release or finish."""
    return (
        Job.id == job.id,
        Job.claimed_by == manager_id,
        Job.status == RUNNING,
        Job.attempts == job.attempts,
    )


class ResultWriter:
    """Writes finished jobs' results in batches: each write waits for the batch it joined to be
    committed, and a batch is every result finished while the one before was being written."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], manager_id: str) -> None:
        self.sessions = sessions
        self.manager_id = manager_id
        self._waiting: list[tuple[dict[str, object], asyncio.Future[None]]] = []
        self._arrived = asyncio.Event()
        self._statement = _finish_statement(manager_id)

    async def write(self, values: dict[str, object]) -> None:
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((values, done))
        self._arrived.set()
        await done

    async def run_forever(self) -> None:
        try:
            while True:
                await self._arrived.wait()
                self._arrived.clear()
                batch, self._waiting = self._waiting, []
                try:
                    await self._write(batch)
                except Exception as error:
                    log.exception("writing %d job results failed", len(batch))
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(error)
                else:
                    for _, done in batch:
                        if not done.done():
                            done.set_result(None)
        finally:
            for _, done in self._waiting:
                done.cancel()

    async def _write(self, batch: list[tuple[dict[str, object], asyncio.Future[None]]]) -> None:
        async with self.sessions() as session:
            # In id order, as lease renewal locks them: the two never deadlock.
            rows = sorted((values for values, _ in batch), key=lambda values: str(values["b_id"]))
            await session.execute(self._statement, rows)
            await enqueue_deliveries(session, [str(values["b_id"]) for values in rows])
            await session.commit()


def _finish_statement(manager_id: str) -> Update:
    """One result's write, run as one executemany over a batch (Core: no ORM bulk machinery).
    Only this claim is finished (``_this_claim``): a job claimed again since, its lease having
    lapsed, is left to that claim."""
    jobs = cast(Table, Job.__table__)
    return (
        update(jobs)
        .where(
            jobs.c.id == bindparam("b_id"),
            jobs.c.claimed_by == manager_id,
            jobs.c.status == RUNNING,
            jobs.c.attempts == bindparam("b_attempts"),
        )
        .values(
            status=bindparam("b_status"),
            result=bindparam("b_result"),
            result_content_type=bindparam("b_content_type"),
            result_status=bindparam("b_status_code"),
            error=bindparam("b_error"),
            lease_until=None,
            finished_at=func.now(),
        )
    )


async def queued_jobs(session: AsyncSession) -> dict[str, int]:
    """Unfinished jobs per workload: demand for the autoscaler, and what keeps a cron run."""
    rows = await session.execute(
        select(Job.workload_id, func.count())
        .where(Job.status.in_((QUEUED, RUNNING)))
        .group_by(Job.workload_id)
    )
    return {workload_id: int(count) for workload_id, count in rows.all()}
