"""The reconcile loop: compare desired with observed, act on the difference.

One Manager process leads at a time (a Postgres advisory lock held on its own connection); the
others wait to take over. Each pass is level-triggered: it reads the whole state, decides, and
writes, so a pass never depends on having seen an earlier event.

A pass holds no row lock while it reads or decides ("Locking" in docs/DESIGN.md): it reads a
snapshot in one transaction that locks nothing, asks `manager.planning` what each workload needs,
and writes each workload's actions in a short transaction of its own. So an agent's heartbeat
waits at most for one workload's writes, never for a pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import asyncpg
from inferencekey.enums import WorkloadPhase
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ik_contracts.engines import BUILTIN_BACKENDS
from ik_contracts.logs import ids
from ik_contracts.protocol import ReplicaState
from manager import notify, placement, planning
from manager.custom_backends import service as custom_backends
from manager.db.models import GpuPrice, GpuResource, Project, Replica, Worker, Workload
from manager.db.queries import one_of
from manager.gateway.demand import fresh_demand
from manager.ids import new_id
from manager.jobs.dispatcher import queued_jobs
from manager.metrics import ManagerMetrics
from manager.policies import DemandFigures
from manager.services import events
from manager.settings import Settings
from manager.states import DesiredState, WorkerState

log = logging.getLogger("inferencekey.reconciler")
LEADER_LOCK_KEY = 0x1C_0000_0003


NO_DEMAND = DemandFigures()


@dataclass(frozen=True)
class WorkerRecord:
    """A worker's liveness columns as the snapshot read them: what a state change is judged by."""

    id: str
    last_heartbeat_at: datetime | None
    state: str
    state_reason: str | None


@dataclass
class Snapshot:
    """One pass's view of the world, read in one transaction and held as plain values."""

    now: datetime
    workers: list[WorkerRecord]
    slots: list[placement.WorkerSlot]
    workloads: list[planning.WorkloadView]
    replicas_by_workload: dict[str, list[planning.ReplicaView]]
    demand: dict[str, DemandFigures]


def as_workload_view(
    workload: Workload, custom_backend: planning.CustomBackendChoice | None = None
) -> planning.WorkloadView:
    return planning.WorkloadView(
        id=workload.id,
        project_id=workload.project_id,
        generation=workload.generation,
        backend=workload.backend,
        task_type=workload.task_type,
        model_name=workload.model_name,
        config=workload.config or {},
        execution_policy=workload.execution_policy,
        execution_policy_config=workload.execution_policy_config or {},
        worker_pin=workload.worker_id,
        gpu_pin=workload.gpu_resource_id,
        deleted=workload.deleted_at is not None,
        phase=workload.phase,
        phase_reason=workload.phase_reason,
        desired_replicas=workload.desired_replicas,
        ready_replicas=workload.ready_replicas,
        last_scaled_at=workload.last_scaled_at,
        custom_backend=custom_backend,
    )


async def custom_backend_choices(
    session: AsyncSession, rows: list[tuple[Workload, str]]
) -> dict[str, planning.CustomBackendChoice]:
    """For each workload (with its tenant id) on a custom backend, the version new replicas
    run: the newest of its tenant's backend of that slug, all read in one query."""
    keys = {(tenant_id, w.backend) for w, tenant_id in rows if w.backend not in BUILTIN_BACKENDS}
    newest = await custom_backends.newest_versions(session, keys)
    choices = {}
    for workload, tenant_id in rows:
        version = newest.get((tenant_id, workload.backend))
        if version is not None:
            choices[workload.id] = planning.CustomBackendChoice(version.id, version.cpu_only)
    return choices


def as_replica_view(replica: Replica) -> planning.ReplicaView:
    return planning.ReplicaView(
        id=replica.id,
        workload_id=replica.workload_id,
        worker_id=replica.worker_id,
        spec=replica.spec,
        gpu_resource_ids=tuple(replica.gpu_resource_ids),
        claim_memory_mb=replica.claim_memory_mb,
        desired_state=replica.desired_state,
        state=replica.state,
        reason=replica.reason,
        created_at=replica.created_at,
        engine_requests=(
            None
            if replica.engine_running is None and replica.engine_waiting is None
            else (replica.engine_running or 0) + (replica.engine_waiting or 0)
        ),
    )


def with_jobs(demand: dict[str, DemandFigures], jobs: dict[str, int]) -> dict[str, DemandFigures]:
    """The gateways' figures with each workload's unfinished async jobs added."""
    merged = dict(demand)
    for workload_id, count in jobs.items():
        merged[workload_id] = replace(merged.get(workload_id, NO_DEMAND), queued_jobs=count)
    return merged


def worker_slots(
    workers: list[Worker], gpus: list[GpuResource], prices: dict[str, float] | None = None
) -> list[placement.WorkerSlot]:
    """Each worker with its GPUs and their prices, nothing claimed yet
    (`planning.claim_existing` does that)."""
    prices = prices or {}
    slots = {
        w.id: placement.WorkerSlot(
            id=w.id,
            name=w.name,
            project_id=w.project_id,
            state=w.state,
            state_reason=w.state_reason,
            gpus=[],
            model_files=dict((w.inventory or {}).get("model_files") or {}),
            cuda_version=(w.inventory or {}).get("cuda_version"),
        )
        for w in workers
    }
    for gpu in gpus:
        if gpu.worker_id in slots:
            slots[gpu.worker_id].gpus.append(
                placement.GpuSlot(
                    gpu.id, gpu.uuid, gpu.name, gpu.memory_total_mb, prices.get(gpu.name)
                )
            )
    return list(slots.values())


# The shortest time from one pass's start to the next one's: a change waits at most this long
# (plus a pass) to take effect, and a stream of changes costs at most a pass per gap.
MIN_PASS_GAP_S = 0.25


class Reconciler:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        hub: notify.NotificationHub,
        settings: Settings,
        metrics: ManagerMetrics | None = None,
    ) -> None:
        self.sessions = sessions
        self.hub = hub
        self.settings = settings
        self.metrics = metrics
        self._leader_connection: asyncpg.Connection | None = None
        # Workloads whose reconcile failed, by id, at the generation that failed.
        self._quarantined: dict[str, int] = {}

    async def run_forever(self) -> None:
        while True:
            try:
                if await self._lead():
                    with self.hub.subscription(notify.RECONCILE) as wake:
                        started = time.monotonic()
                        if await self.reconcile_once():
                            await notify.wait_for(wake, self.settings.reconcile_interval_s)
                            # Changes coming in a stream (creates, patches, heartbeats that
                            # report new states) share passes: at most one per gap.
                            gap = started + MIN_PASS_GAP_S - time.monotonic()
                            if gap > 0:
                                await asyncio.sleep(gap)
                else:
                    await asyncio.sleep(self.settings.reconcile_interval_s)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconcile pass failed; retrying")
                await asyncio.sleep(self.settings.reconcile_interval_s)

    async def close(self) -> None:
        if self._leader_connection is not None and not self._leader_connection.is_closed():
            await self._leader_connection.close()

    async def _lead(self) -> bool:
        """True while this process holds the leader lock (taking it if free)."""
        if self._leader_connection is not None and not self._leader_connection.is_closed():
            return True
        assert self.settings.database_url
        connection = await asyncpg.connect(notify.plain_postgres_url(self.settings.database_url))
        if await connection.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK_KEY):
            log.info("this Manager leads the reconcile loop")
            self._leader_connection = connection
            return True
        await connection.close()
        return False

    async def reconcile_once(self) -> bool:
        """One pass; False when it stopped early after a workload failed (run it again)."""
        started = time.perf_counter()
        try:
            return await self._pass()
        finally:
            if self.metrics is not None:
                self.metrics.reconcile_duration.observe(time.perf_counter() - started)

    async def _pass(self) -> bool:
        snapshot = await self._read_snapshot()
        await self._update_liveness(snapshot)
        planning.claim_existing(
            snapshot.slots, (r for rs in snapshot.replicas_by_workload.values() for r in rs)
        )
        seen = {w.id for w in snapshot.workloads}
        self._quarantined = {k: v for k, v in self._quarantined.items() if k in seen}
        for workload in snapshot.workloads:
            if self._quarantined.get(workload.id) == workload.generation:
                continue  # failed at this generation already; its phase says so
            if not await self._reconcile_isolated(snapshot, workload):
                # Its plan may have claimed room in the snapshot that it never took: plan the
                # rest afresh.
                return False
        return True

    async def _read_snapshot(self) -> Snapshot:
        async with self.sessions() as session:
            # One consistent view; plain reads take no row locks, so no writer waits for this.
            await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            now = (await session.execute(select(func.now()))).scalar_one()
            workers = list((await session.execute(select(Worker))).scalars())
            replicas = [
                as_replica_view(r)
                for r in (
                    await session.execute(select(Replica).order_by(Replica.created_at, Replica.id))
                ).scalars()
            ]
            by_workload: dict[str, list[planning.ReplicaView]] = defaultdict(list)
            for replica in replicas:
                by_workload[replica.workload_id].append(replica)
            gpus = list(
                (
                    await session.execute(select(GpuResource).where(GpuResource.present.is_(True)))
                ).scalars()
            )
            prices = {
                row.name: row.usd_per_hour
                for row in (await session.execute(select(GpuPrice))).scalars()
            }
            workload_rows = [
                (workload, tenant_id)
                for workload, tenant_id in await session.execute(
                    select(Workload, Project.tenant_id)
                    .join(Project, Project.id == Workload.project_id)
                    .where(Workload.deleted_at.is_(None) | one_of(Workload.id, list(by_workload)))
                    .order_by(Workload.created_at)
                )
            ]
            choices = await custom_backend_choices(session, workload_rows)
            snapshot = Snapshot(
                now=now,
                workers=[
                    WorkerRecord(w.id, w.last_heartbeat_at, w.state, w.state_reason)
                    for w in workers
                ],
                slots=worker_slots(workers, gpus, prices),
                workloads=[as_workload_view(w, choices.get(w.id)) for w, _ in workload_rows],
                replicas_by_workload=by_workload,
                demand=with_jobs(await fresh_demand(session), await queued_jobs(session)),
            )
            await session.commit()
        return snapshot

    async def _update_liveness(self, snapshot: Snapshot) -> None:
        slot_of = {slot.id: slot for slot in snapshot.slots}
        for worker in snapshot.workers:
            state, reason = planning.worker_liveness(
                worker.last_heartbeat_at,
                snapshot.now,
                not_ready_after_s=self.settings.worker_not_ready_after_s,
                lost_after_s=self.settings.worker_lost_after_s,
            )
            if (state, reason) != (worker.state, worker.state_reason):
                if not await self._set_worker_state(worker, state, reason):
                    # A heartbeat landed after the snapshot, or is landing now: the agent lives.
                    state, reason = WorkerState.READY, None
                elif state != worker.state:
                    log.info(
                        "worker %s is %s (%s)",
                        worker.id,
                        state,
                        reason,
                        extra=ids(worker_id=worker.id),
                    )
            slot = slot_of[worker.id]
            slot.state, slot.state_reason = state, reason

    async def _set_worker_state(
        self, worker: WorkerRecord, state: WorkerState, reason: str | None
    ) -> bool:
        """Write a liveness change unless a heartbeat came since the snapshot; True if written.

        Compare-and-set on the heartbeat time it was judged by, skipping a row a heartbeat holds:
        that heartbeat proves the worker alive, and neither side waits for the other.
        """
        judged = (
            select(Worker.id)
            .where(
                Worker.id == worker.id,
                Worker.last_heartbeat_at.is_not_distinct_from(worker.last_heartbeat_at),
            )
            .with_for_update(key_share=True, skip_locked=True)
            .scalar_subquery()
        )
        async with self.sessions() as session, session.begin():
            written = await session.execute(
                update(Worker)
                .where(Worker.id == judged)
                .values(state=state, state_reason=reason)
                .returning(Worker.id)
                .execution_options(synchronize_session=False)
            )
            return written.scalar_one_or_none() is not None

    async def _reconcile_isolated(
        self, snapshot: Snapshot, workload: planning.WorkloadView
    ) -> bool:
        """Plan one workload and write its actions in a transaction of their own: whatever fails
        (in our code or in the database) is rolled back for this workload alone, shown on it,
        and that generation of it is left out of later passes (a PATCH retries it), so every
        other workload is still reconciled."""
        try:
            actions = planning.plan_workload(
                workload,
                snapshot.replicas_by_workload.get(workload.id, []),
                snapshot.slots,
                now=snapshot.now,
                demand=snapshot.demand.get(workload.id, NO_DEMAND),
                max_replicas=self.settings.max_replicas_per_workload,
                scale_down_delay_s=self.settings.autoscale_scale_down_delay_s,
                idle_s=self.settings.autoscale_idle_s,
            )
            if actions:
                await self._apply(snapshot.now, workload, actions)
        except Exception as error:
            log.exception(
                "reconciling workload %s failed", workload.id, extra=ids(workload_id=workload.id)
            )
            self._quarantined[workload.id] = workload.generation
            async with self.sessions() as session, session.begin():
                await session.execute(
                    update(Workload)
                    .where(Workload.id == workload.id, Workload.generation == workload.generation)
                    .values(
                        phase=WorkloadPhase.ERROR,
                        phase_reason=f"internal error: {type(error).__name__}; see the Manager log",
                    )
                    .execution_options(synchronize_session=False)
                )
            return False
        return True

    async def _apply(
        self, now: datetime, workload: planning.WorkloadView, actions: list[planning.Action]
    ) -> None:
        async with self.sessions() as session, session.begin():
            # This workload's row only. An API write holding it wins: its commit notifies, and
            # the next pass plans from what it wrote.
            stored = (
                await session.execute(
                    select(Workload.generation, Workload.deleted_at)
                    .where(Workload.id == workload.id)
                    .with_for_update(key_share=True, skip_locked=True)
                )
            ).one_or_none()
            if stored is None or (stored.generation, stored.deleted_at is not None) != (
                workload.generation,
                workload.deleted,
            ):
                return  # changed since the snapshot: the plan is for a spec that is gone
            doomed = sorted(
                {
                    a.replica_id
                    for a in actions
                    if isinstance(a, planning.StopReplica | planning.ForgetReplica)
                }
            )
            if doomed:
                # Replica rows in id order, as heartbeats take them: no deadlock between the two.
                await session.execute(
                    select(Replica.id)
                    .where(one_of(Replica.id, doomed))
                    .order_by(Replica.id)
                    .with_for_update()
                )
            touched: set[str] = set()
            status: dict[str, Any] = {}  # the workload's own columns, written in one statement
            for action in actions:
                status |= await self._write(session, now, workload, action, touched)
            if status:
                await session.execute(
                    update(Workload)
                    .where(Workload.id == workload.id)
                    .values(**status)
                    .execution_options(synchronize_session=False)
                )
            if "phase" in status:
                await notify.notify(session, notify.WORKLOAD_STATUS, workload.id)
            for worker_id in sorted(touched):
                await notify.notify(session, notify.ASSIGNMENTS, worker_id)

    async def _write(
        self,
        session: AsyncSession,
        now: datetime,
        workload: planning.WorkloadView,
        action: planning.Action,
        touched: set[str],
    ) -> dict[str, Any]:
        """One action's rows and events. Returns the workload columns it sets; ``touched``
        collects the workers whose assignments changed."""
        if isinstance(action, planning.ForgetReplica):
            # Only while its worker is still lost: one that came back keeps its replica (the
            # replacement planned with it is then one too many, and the next pass stops it).
            forgotten = await session.execute(
                delete(Replica)
                .where(
                    Replica.id == action.replica_id,
                    Replica.worker_id.in_(
                        select(Worker.id).where(Worker.state == WorkerState.LOST)
                    ),
                )
                .returning(Replica.id)
                .execution_options(synchronize_session=False)
            )
            if forgotten.scalar_one_or_none() is not None and action.was_running:
                await events.record(
                    session,
                    workload.id,
                    "replica_lost",
                    action.reason,
                    {"replica_id": action.replica_id, "worker_id": action.worker_id},
                )
            return {}
        if isinstance(action, planning.StopReplica):
            stopped = await session.execute(
                update(Replica)
                .where(Replica.id == action.replica_id, Replica.desired_state == DesiredState.RUN)
                .values(desired_state=DesiredState.STOP)
                .returning(Replica.id)
                .execution_options(synchronize_session=False)
            )
            if stopped.scalar_one_or_none() is not None:
                log.info(
                    "stopping replica %s: %s",
                    action.replica_id,
                    action.reason,
                    extra=ids(workload_id=workload.id, worker_id=action.worker_id),
                )
                touched.add(action.worker_id)
            return {}
        if isinstance(action, planning.CreateReplica):
            await self._create_replica(session, now, workload, action)
            touched.add(action.worker_id)
            return {}
        if isinstance(action, planning.SetPhase):
            await events.record(
                session,
                workload.id,
                "phase",
                f"{action.phase.value}: {action.reason}",
                {"phase": action.phase.value},
            )
            return {"phase": action.phase, "phase_reason": action.reason}
        counts: dict[str, Any] = {
            "desired_replicas": action.desired,
            "ready_replicas": action.ready,
        }
        if action.scaled:
            counts["last_scaled_at"] = now
            await events.record(
                session,
                workload.id,
                "scaled",
                action.reason,
                {"from": workload.desired_replicas, "to": action.desired},
            )
        return counts

    @staticmethod
    async def _create_replica(
        session: AsyncSession,
        now: datetime,
        workload: planning.WorkloadView,
        action: planning.CreateReplica,
    ) -> None:
        replica_id = new_id("rep")
        session.add(
            Replica(
                id=replica_id,
                workload_id=workload.id,
                worker_id=action.worker_id,
                generation=workload.generation,
                spec=dict(action.spec),
                gpu_resource_ids=list(action.gpu_ids),
                claim_memory_mb=action.claim_memory_mb,
                desired_state=DesiredState.RUN,
                state=ReplicaState.PENDING,
                created_at=now,
                updated_at=now,
            )
        )
        gpus = f" on GPU(s) {', '.join(action.gpu_ids)}" if action.gpu_ids else " (CPU)"
        await events.record(
            session,
            workload.id,
            "replica_placed",
            f"replica {replica_id} placed on {action.worker_name} ({action.worker_id}){gpus}",
            {
                "replica_id": replica_id,
                "worker_id": action.worker_id,
                "gpu_resource_ids": list(action.gpu_ids),
            },
        )
        for notice in action.notices:
            await events.record(session, workload.id, "command_adjusted", notice)


async def run_reconciler(reconciler: Reconciler) -> None:
    try:
        await reconciler.run_forever()
    finally:
        with contextlib.suppress(Exception):
            await reconciler.close()
