"""The reconcile leader's copy of the fleet, kept between passes and refreshed by what changed.

A pass plans from workloads, their replicas, the workers with their GPUs and prices, and each
worker's liveness. Reading all of it for every pass costs time proportional to the fleet, though
a steady fleet changes little: so the leader reads everything once (and again every
``reconcile_resync_s``, or after the listening connection was lost), and in between re-reads only
what ``NOTIFY ik_reconcile`` named (a workload's or a worker's id: `ChangeLog`) plus every
worker's liveness columns, which heartbeats change without a notification.

Every read here selects plain columns (no ORM entities) and fills `planning`'s plain views, in
one transaction of the pass that locks nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from inferencekey.enums import WorkloadPhase
from sqlalchemy import Row, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ik_contracts.engines import BUILTIN_BACKENDS
from manager import placement, planning
from manager.custom_backends import service as custom_backends
from manager.db.models import GpuPrice, GpuResource, Project, Replica, Worker, Workload
from manager.db.queries import one_of
from manager.turns import Turns

log = logging.getLogger("inferencekey.reconciler")

WORKLOAD_PREFIX = "wl_"
WORKER_PREFIX = "wrk_"


@dataclass(frozen=True)
class WorkerRecord:
    """A worker's liveness columns as a pass read them: what a state change is judged by."""

    id: str
    last_heartbeat_at: datetime | None
    state: str
    state_reason: str | None


@dataclass(frozen=True)
class WorkerShape:
    """What a worker offers placement apart from its liveness: changed only by registration
    and by heartbeats that notify (GPUs, model files, CUDA version)."""

    id: str
    name: str
    project_id: str | None
    model_files: dict[str, Any]
    cuda_version: str | None
    gpus: tuple[tuple[str, str, str, int], ...]  # (id, uuid, name, memory_total_mb)


@dataclass
class Changes:
    """What notifications named since the last pass took them."""

    workloads: set[str] = field(default_factory=set)
    workers: set[str] = field(default_factory=set)
    everything: bool = False

    def add(self, payload: str) -> None:
        if payload.startswith(WORKLOAD_PREFIX):
            self.workloads.add(payload)
        elif payload.startswith(WORKER_PREFIX):
            self.workers.add(payload)
        else:  # ANY after a reconnect (anything may have been missed), or a payload unknown
            self.everything = True

    def merge(self, other: Changes) -> None:
        self.workloads |= other.workloads
        self.workers |= other.workers
        self.everything = self.everything or other.everything


class ChangeLog:
    """Collects ``ik_reconcile`` payloads between passes (a callback of the notification hub,
    so nothing that arrives while a pass runs is lost: it is taken by the next one).

    A watch (`watch`) collects too, untouched by `take`: everything noted from its start on,
    over as many passes as it lasts (the resync's read, which runs beside them)."""

    def __init__(self) -> None:
        self._pending = Changes(everything=True)
        self._watches: list[Changes] = []

    def note(self, payload: str) -> None:
        self._pending.add(payload)
        for watch in self._watches:
            watch.add(payload)

    def take(self) -> Changes:
        taken, self._pending = self._pending, Changes()
        return taken

    def watch(self) -> Changes:
        watch = Changes()
        self._watches.append(watch)
        return watch

    def unwatch(self, watch: Changes) -> None:
        self._watches = [each for each in self._watches if each is not watch]


def as_workload_view(
    workload: Workload | Row[Any], custom_backend: planning.CustomBackendChoice | None = None
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


def as_replica_view(replica: Replica | Row[Any]) -> planning.ReplicaView:
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


# The columns planning reads: no log tail, no inventory beyond what placement uses.
WORKLOAD_COLUMNS = (
    Workload.id,
    Workload.project_id,
    Workload.generation,
    Workload.backend,
    Workload.task_type,
    Workload.model_name,
    Workload.config,
    Workload.execution_policy,
    Workload.execution_policy_config,
    Workload.worker_id,
    Workload.gpu_resource_id,
    Workload.deleted_at,
    Workload.phase,
    Workload.phase_reason,
    Workload.desired_replicas,
    Workload.ready_replicas,
    Workload.last_scaled_at,
    Workload.created_at,
    Project.tenant_id,
)
REPLICA_COLUMNS = (
    Replica.id,
    Replica.workload_id,
    Replica.worker_id,
    Replica.spec,
    Replica.gpu_resource_ids,
    Replica.claim_memory_mb,
    Replica.desired_state,
    Replica.state,
    Replica.reason,
    Replica.created_at,
    Replica.engine_running,
    Replica.engine_waiting,
)


async def custom_backend_choices(
    session: AsyncSession, rows: Iterable[Row[Any]]
) -> dict[str, planning.CustomBackendChoice]:
    """For each workload row (with its tenant id) on a custom backend, the version new replicas
    run: the newest of its tenant's backend of that slug, all read in one query."""
    custom = [row for row in rows if row.backend not in BUILTIN_BACKENDS]
    if not custom:
        return {}
    newest = await custom_backends.newest_versions(
        session, {(row.tenant_id, row.backend) for row in custom}
    )
    choices = {}
    for row in custom:
        version = newest.get((row.tenant_id, row.backend))
        if version is not None:
            choices[row.id] = planning.CustomBackendChoice(version.id, version.cpu_only)
    return choices


async def read_liveness(session: AsyncSession) -> list[WorkerRecord]:
    rows = await session.execute(
        select(Worker.id, Worker.last_heartbeat_at, Worker.state, Worker.state_reason).order_by(
            Worker.created_at, Worker.id
        )
    )
    return [WorkerRecord(*row) for row in rows]


async def read_shapes(session: AsyncSession, worker_ids: list[str] | None) -> list[WorkerShape]:
    """Workers' shapes: all of them (None), or these."""
    workers = select(
        Worker.id,
        Worker.name,
        Worker.project_id,
        Worker.inventory["model_files"].label("model_files"),
        Worker.inventory["cuda_version"].astext.label("cuda_version"),
    )
    gpus = select(
        GpuResource.worker_id,
        GpuResource.id,
        GpuResource.uuid,
        GpuResource.name,
        GpuResource.memory_total_mb,
    ).where(GpuResource.present.is_(True))
    if worker_ids is not None:
        workers = workers.where(one_of(Worker.id, worker_ids))
        gpus = gpus.where(one_of(GpuResource.worker_id, worker_ids))
    gpus_of: dict[str, list[tuple[str, str, str, int]]] = defaultdict(list)
    for worker_id, *gpu in await session.execute(gpus.order_by(GpuResource.index)):
        gpus_of[worker_id].append(tuple(gpu))  # type: ignore[arg-type]
    return [
        WorkerShape(
            id=row.id,
            name=row.name,
            project_id=row.project_id,
            model_files=dict(row.model_files or {}),
            cuda_version=row.cuda_version,
            gpus=tuple(gpus_of.get(row.id, ())),
        )
        for row in await session.execute(workers)
    ]


async def read_prices(session: AsyncSession) -> dict[str, float]:
    return {
        name: price
        for name, price in await session.execute(select(GpuPrice.name, GpuPrice.usd_per_hour))
    }


class Fleet:
    """Workloads (in creation order, as passes plan them), their replicas, and the workers'
    shapes, as last read."""

    def __init__(self) -> None:
        self.workloads: dict[str, planning.WorkloadView] = {}
        # The ids of the workloads planned on every pass: those whose policy reads the clock or
        # demand, and the deleted ones still holding replicas (kept as ``workloads`` changes, so
        # that a pass need not look at each of the fleet's thousands to find them).
        self.demand_readers: set[str] = set()
        self.deleted: set[str] = set()
        self.replicas: dict[str, list[planning.ReplicaView]] = {}
        # The same replicas by worker, and the workers whose slots' claims are stale: those that
        # gained or lost a replica, got a new slot, or had a placement planned on them since
        # their claims were last made (`claim`). Every other slot keeps its claims from pass to
        # pass: claiming all of a fleet's replicas was a pass's largest fixed cost.
        self.replicas_on: dict[str, dict[str, planning.ReplicaView]] = defaultdict(dict)
        self._stale_claims: set[str] = set()
        self.shapes: dict[str, WorkerShape] = {}
        self.prices: dict[str, float] = {}
        # Each worker's liveness state at the last pass: a change is judged against it.
        self.states: dict[str, str] = {}
        # Each worker's slot as last built, with the shape it was built from.
        self._slots: dict[str, tuple[WorkerShape, placement.WorkerSlot]] = {}
        self._created_at: dict[str, datetime] = {}
        self._latest: tuple[datetime, str] | None = None

    @classmethod
    async def read(cls, session: AsyncSession) -> Fleet:
        """Everything: every live workload, and every deleted one that still has replicas."""
        fleet = cls()
        replicas = await session.execute(
            select(*REPLICA_COLUMNS).order_by(Replica.created_at, Replica.id)
        )
        turns = Turns()
        for row in replicas:
            view = as_replica_view(row)
            fleet.replicas.setdefault(row.workload_id, []).append(view)
            fleet.replicas_on[view.worker_id][view.id] = view
            if turns.due():
                await turns.give()  # a fleet's rows are CPU: let requests in between
        rows = list(
            await session.execute(
                select(*WORKLOAD_COLUMNS)
                .join(Project, Project.id == Workload.project_id)
                .where(Workload.deleted_at.is_(None) | one_of(Workload.id, list(fleet.replicas)))
                .order_by(Workload.created_at, Workload.id)
            )
        )
        choices = await custom_backend_choices(session, rows)
        for row in rows:
            fleet._hold(as_workload_view(row, choices.get(row.id)))
            if turns.due():
                await turns.give()
        fleet._created_at = {row.id: row.created_at for row in rows}
        fleet._latest = (rows[-1].created_at, rows[-1].id) if rows else None
        fleet.shapes = {shape.id: shape for shape in await read_shapes(session, None)}
        fleet.prices = await read_prices(session)
        return fleet

    async def refresh_workloads(self, session: AsyncSession, ids: set[str]) -> bool:
        """Read these workloads and their replicas again. True if a replica of theirs is gone
        (its GPUs are free for others)."""
        if not ids:
            return False
        wanted = sorted(ids)
        replicas: dict[str, list[planning.ReplicaView]] = defaultdict(list)
        for row in await session.execute(
            select(*REPLICA_COLUMNS)
            .where(one_of(Replica.workload_id, wanted))
            .order_by(Replica.created_at, Replica.id)
        ):
            replicas[row.workload_id].append(as_replica_view(row))
        rows = list(
            await session.execute(
                select(*WORKLOAD_COLUMNS)
                .join(Project, Project.id == Workload.project_id)
                .where(one_of(Workload.id, wanted))
            )
        )
        choices = await custom_backend_choices(session, rows)
        freed = False
        fresh = {row.id: row for row in rows}
        new: list[tuple[datetime, str, planning.WorkloadView]] = []
        for workload_id in wanted:
            before = {r.id: r for r in self.replicas.get(workload_id, ())}
            now = replicas.get(workload_id, [])
            freed = self._replace_replicas(before, now) or freed
            if now:
                self.replicas[workload_id] = now
            else:
                self.replicas.pop(workload_id, None)
            stored = fresh.get(workload_id)
            if stored is None or (stored.deleted_at is not None and not now):
                self.workloads.pop(workload_id, None)  # gone, or deleted with nothing left
                self.demand_readers.discard(workload_id)
                self.deleted.discard(workload_id)
                self._created_at.pop(workload_id, None)
            elif workload_id in self.workloads:
                self._hold(as_workload_view(stored, choices.get(stored.id)))
            else:
                view = as_workload_view(stored, choices.get(stored.id))
                new.append((stored.created_at, workload_id, view))
        self._insert_in_order(new)
        return freed

    def _insert_in_order(self, new: list[tuple[datetime, str, planning.WorkloadView]]) -> None:
        """Hold new workloads in the order a full read gives (creation, then id). They are
        almost always the newest: appended. Some are not (a create that committed after a later
        one: a burst's transactions overlap); then the whole order is rebuilt, once per read,
        not once per workload (that was a sort of the fleet per new workload: a quarter of the
        Manager's CPU in a burst of creates at 2,000 workloads)."""
        new.sort(key=lambda each: (each[0], each[1]))
        late = False
        for created_at, workload_id, view in new:
            self._created_at[workload_id] = created_at
            self._hold(view)
            if self._latest is None or (created_at, workload_id) > self._latest:
                self._latest = (created_at, workload_id)
            else:
                late = True
        if late:
            order = sorted((created_at, id_) for id_, created_at in self._created_at.items())
            self.workloads = {id_: self.workloads[id_] for _, id_ in order}

    def _replace_replicas(
        self, before: dict[str, planning.ReplicaView], now: list[planning.ReplicaView]
    ) -> bool:
        """One workload's replicas read again: kept by worker, and the claims of a worker that
        gained or lost one made stale (a replica's worker, GPUs and claim never change). True
        if one is gone."""
        for replica in now:
            on = self.replicas_on[replica.worker_id]
            if replica.id not in on:
                self._stale_claims.add(replica.worker_id)
            on[replica.id] = replica
        kept = {replica.id for replica in now}
        gone = [replica for replica_id, replica in before.items() if replica_id not in kept]
        for replica in gone:
            self.replicas_on[replica.worker_id].pop(replica.id, None)
            self._stale_claims.add(replica.worker_id)
        return bool(gone)

    def placed_on(self, worker_ids: Iterable[str]) -> None:
        """A pass planned placements on these workers (claimed in their slots): their claims are
        made afresh at the next pass, whether the placements were written or not."""
        self._stale_claims.update(worker_ids)

    def claim(
        self, slot_of: dict[str, placement.WorkerSlot], changed_workers: Iterable[str]
    ) -> None:
        """Make the claims of each slot whose claims are stale, or whose worker's liveness
        changed (a lost worker's replicas hold nothing), from its replicas; the others are
        as the last pass left them."""
        stale = (self._stale_claims | set(changed_workers)) & slot_of.keys()
        for worker_id in stale:
            slot = slot_of[worker_id]
            slot.forget_replicas()
            for gpu in slot.gpus:
                gpu.claimed_mb, gpu.whole_claimed, gpu.shared_claims = 0, False, 0
        planning.claim_existing(
            slot_of.values(),
            (replica for worker_id in stale for replica in self.replicas_on[worker_id].values()),
            slot_of,
        )
        self._stale_claims = set()

    def _hold(self, view: planning.WorkloadView) -> None:
        """Keep ``view`` as its workload's (in place, or at the end of the order)."""
        self.workloads[view.id] = view
        if reads_demand(view):
            self.demand_readers.add(view.id)
        else:
            self.demand_readers.discard(view.id)
        if view.deleted:
            self.deleted.add(view.id)
        else:
            self.deleted.discard(view.id)

    async def refresh_workers(self, session: AsyncSession, ids: set[str]) -> bool:
        """Read these workers' shapes again. True if one changed: it offers other room now."""
        before = {worker_id: self.shapes.pop(worker_id, None) for worker_id in ids}
        for shape in await read_shapes(session, sorted(ids)):
            self.shapes[shape.id] = shape
        return any(self.shapes.get(worker_id) != shape for worker_id, shape in before.items())

    def slots(self, liveness: Iterable[WorkerRecord]) -> list[placement.WorkerSlot]:
        """Each worker with its GPUs and their prices, and the claims `claim` last made in it.
        The objects are kept from pass to pass (a fleet's thousands of GPUs cost a pass more to
        build than to claim); a worker whose shape or prices changed gets new ones, with claims
        made afresh."""
        slots = []
        for record in liveness:
            shape = self.shapes.get(record.id)
            if shape is None:
                continue
            kept = self._slots.get(record.id)
            if kept is None or kept[0] is not shape:
                kept = (shape, self._slot_of(shape))
                self._slots[record.id] = kept
                self._stale_claims.add(record.id)
            slot = kept[1]
            slot.state, slot.state_reason = record.state, record.state_reason
            slots.append(slot)
        return slots

    def _slot_of(self, shape: WorkerShape) -> placement.WorkerSlot:
        return placement.WorkerSlot(
            id=shape.id,
            name=shape.name,
            project_id=shape.project_id,
            state="",
            state_reason=None,
            gpus=[
                placement.GpuSlot(gpu_id, uuid, name, memory, self.prices.get(name))
                for gpu_id, uuid, name, memory in shape.gpus
            ],
            model_files=shape.model_files,
            cuda_version=shape.cuda_version,
        )

    def set_prices(self, prices: dict[str, float]) -> bool:
        """True if they changed (every worker's slots are then built again)."""
        if prices == self.prices:
            return False
        self.prices = prices
        self._slots.clear()
        return True

    def workloads_on(self, worker_ids: set[str]) -> set[str]:
        """The workloads with a replica on one of these workers (by ``replicas_on``: a scan of
        every replica of the fleet was a fifth of an incremental pass at 10,000 workloads)."""
        on = self.replicas_on
        return {
            replica.workload_id
            for worker_id in worker_ids
            if worker_id in on
            for replica in on[worker_id].values()
        }

    async def differing_from(self, kept: Fleet) -> set[str]:
        """The workloads whose row or replicas differ from ``kept``'s (an older copy), or that it
        did not hold: what a change no notification named touched. In turns: at 10,000
        workloads the comparison held the event loop for up to 140 ms in one go."""
        kept_workloads, kept_replicas, replicas = kept.workloads, kept.replicas, self.replicas
        differing: set[str] = set()
        turns = Turns()
        for workload_id, view in self.workloads.items():
            if kept_workloads.get(workload_id) != view or not _same_placed(
                kept_replicas.get(workload_id, []), replicas.get(workload_id, [])
            ):
                differing.add(workload_id)
            if turns.due():
                await turns.give()
        return differing

    def in_order(self, ids: set[str]) -> list[planning.WorkloadView]:
        """The workloads of ``ids`` held, in the order a pass plans them (creation, then id):
        a few are sorted, many are picked from the whole order (a pass that scanned all
        10,000 for the few it plans spent more on that than on planning them)."""
        workloads = self.workloads
        if len(ids) * 8 >= len(workloads):
            return [view for view in workloads.values() if view.id in ids]
        created_at = self._created_at
        held = [workload_id for workload_id in ids if workload_id in workloads]
        held.sort(key=lambda workload_id: (created_at[workload_id], workload_id))
        return [workloads[workload_id] for workload_id in held]


def _same_placed(before: list[planning.ReplicaView], now: list[planning.ReplicaView]) -> bool:
    """The same replicas but for their engine load, which heartbeats store without a notice and
    only the policies planned on every pass read: a serving replica's load is no change for a
    resync to plan."""
    if before == now:
        return True
    return len(before) == len(now) and all(
        a == dataclasses.replace(b, engine_requests=a.engine_requests)
        for a, b in zip(before, now, strict=True)
    )


def reads_demand(workload: planning.WorkloadView) -> bool:
    """Policies that read the clock or demand (not `fixed`): planned on every pass."""
    return (workload.execution_policy or "fixed") != "fixed"


def is_settled(workload: planning.WorkloadView) -> bool:
    """A workload whose last pass left nothing to do that more room could change: it has all the
    replicas it wants, ready (or wants none)."""
    if workload.deleted:
        return False
    return workload.phase in (WorkloadPhase.READY, WorkloadPhase.STOPPED) and (
        workload.ready_replicas >= workload.desired_replicas
    )


async def now(session: AsyncSession) -> datetime:
    return (await session.execute(select(func.now()))).scalar_one()
