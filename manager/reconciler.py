"""The reconcile loop: compare desired with observed, act on the difference.

One Manager process leads at a time (a Postgres advisory lock held on its own connection); the
others wait to take over. Each pass is level-triggered: it reads the whole state, decides, and
writes, so a pass never depends on having seen an earlier event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from manager import notify, placement
from manager.db.models import GpuResource, Replica, Worker, Workload
from manager.db.queries import one_of
from manager.ids import new_id
from manager.metrics import ManagerMetrics
from manager.policies import desired_replica_count
from manager.services import events
from manager.settings import Settings
from worker_agent.engines import engine_for
from worker_agent.logs import ids

log = logging.getLogger("inferencekey.reconciler")
LEADER_LOCK_KEY = 0x1C_0000_0003


def runtime_spec(workload: Workload) -> dict[str, Any]:
    """What a replica runs; a change here rolls the workload's replicas."""
    config = workload.config or {}
    return {
        "backend": workload.backend,
        "task_type": workload.task_type,
        "model_name": workload.model_name,
        "command": config.get("command"),
        "vllm_version": config.get("vllm_version"),
    }


def worker_liveness(worker: Worker, now: datetime, settings: Settings) -> tuple[str, str | None]:
    if worker.last_heartbeat_at is None:
        return "registered", "waiting for the agent's first heartbeat"
    silent = (now - worker.last_heartbeat_at).total_seconds()
    if silent <= settings.worker_not_ready_after_s:
        return "ready", None
    state = "not_ready" if silent <= settings.worker_lost_after_s else "lost"
    return state, f"no heartbeat for {silent:.0f}s"


@dataclass
class Pass:
    """One reconcile pass's view of the world, and the workers whose assignments it changed."""

    session: AsyncSession
    now: datetime
    workers: dict[str, Worker]
    slots: list[placement.WorkerSlot]
    slot_of: dict[str, placement.WorkerSlot]  # the same slots by worker id
    replicas_by_workload: dict[str, list[Replica]]
    touched_workers: set[str] = field(default_factory=set)


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
                        if await self.reconcile_once():
                            await notify.wait_for(wake, self.settings.reconcile_interval_s)
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
        async with self.sessions() as session:
            world = await self._load(session)
            await self._update_liveness(world)
            complete = True
            workloads = await self._workloads(session, world)
            seen = {w.id for w in workloads}
            self._quarantined = {k: v for k, v in self._quarantined.items() if k in seen}
            for workload in workloads:
                if self._quarantined.get(workload.id) == workload.generation:
                    continue  # failed at this generation already; its phase says so
                if not await self._reconcile_isolated(world, workload):
                    # The rollback expired what the session held: the rest gets a fresh pass.
                    complete = False
                    break
            for worker_id in world.touched_workers:
                await notify.notify(session, notify.ASSIGNMENTS, worker_id)
            await session.commit()
        return complete

    async def _reconcile_isolated(self, world: Pass, workload: Workload) -> bool:
        """One workload's decisions in a savepoint of their own, written out before the next
        workload's: whatever fails (in our code or in the database) is rolled back for this
        workload alone, shown on it, and that generation of it is left out of later passes
        (a PATCH retries it), so every other workload is still reconciled."""
        workload_id, generation = workload.id, workload.generation
        try:
            async with world.session.begin_nested():
                await self._reconcile_workload(world, workload)
                await world.session.flush()
        except Exception as error:
            log.exception(
                "reconciling workload %s failed", workload_id, extra=ids(workload_id=workload_id)
            )
            self._quarantined[workload_id] = generation
            workload.phase = "error"
            workload.phase_reason = f"internal error: {type(error).__name__}; see the Manager log"
            return False
        return True

    async def _load(self, session: AsyncSession) -> Pass:
        now = (await session.execute(select(func.now()))).scalar_one()
        workers = {
            w.id: w for w in (await session.execute(select(Worker).with_for_update())).scalars()
        }
        replicas = list((await session.execute(select(Replica).with_for_update())).scalars())
        by_workload: dict[str, list[Replica]] = defaultdict(list)
        for replica in replicas:
            by_workload[replica.workload_id].append(replica)
        gpus = list(
            (
                await session.execute(select(GpuResource).where(GpuResource.present.is_(True)))
            ).scalars()
        )
        slots = self._slots(workers, gpus, replicas)
        return Pass(session, now, workers, slots, {slot.id: slot for slot in slots}, by_workload)

    @staticmethod
    def _slots(
        workers: dict[str, Worker], gpus: list[GpuResource], replicas: list[Replica]
    ) -> list[placement.WorkerSlot]:
        slots = {
            w.id: placement.WorkerSlot(
                id=w.id,
                name=w.name,
                project_id=w.project_id,
                state=w.state,
                state_reason=w.state_reason,
                gpus=[],
                model_files=dict((w.inventory or {}).get("model_files") or {}),
            )
            for w in workers.values()
        }
        gpu_slots: dict[str, placement.GpuSlot] = {}
        for gpu in gpus:
            if gpu.worker_id in slots:
                slot = placement.GpuSlot(gpu.id, gpu.uuid, gpu.name, gpu.memory_total_mb)
                slots[gpu.worker_id].gpus.append(slot)
                gpu_slots[gpu.id] = slot
        # Stopping replicas still hold their GPUs until their agent confirms they are gone.
        for replica in replicas:
            worker = slots.get(replica.worker_id)
            if worker is None:
                continue
            worker.replicas_of[replica.workload_id] = (
                worker.replicas_of.get(replica.workload_id, 0) + 1
            )
            whole = engine_for(replica.spec["backend"]).gpu_claim == "whole"
            for gpu_id in replica.gpu_resource_ids:
                gpu_slot = gpu_slots.get(gpu_id)
                if gpu_slot is None:
                    continue
                if whole:
                    gpu_slot.whole_claimed = True
                else:
                    gpu_slot.claimed_mb += replica.claim_memory_mb
                    gpu_slot.shared_claims += 1
        return list(slots.values())

    async def _update_liveness(self, world: Pass) -> None:
        for worker in world.workers.values():
            state, reason = worker_liveness(worker, world.now, self.settings)
            if (state, reason) != (worker.state, worker.state_reason):
                if state != worker.state:
                    log.info(
                        "worker %s is %s (%s)",
                        worker.id,
                        state,
                        reason,
                        extra=ids(worker_id=worker.id),
                    )
                worker.state, worker.state_reason = state, reason
            slot = world.slot_of[worker.id]
            slot.state, slot.state_reason = state, reason
            if state == "lost":
                await self._forget_replicas_of_lost(world, worker)

    async def _forget_replicas_of_lost(self, world: Pass, worker: Worker) -> None:
        for replicas in world.replicas_by_workload.values():
            for replica in [r for r in replicas if r.worker_id == worker.id]:
                replicas.remove(replica)
                await world.session.delete(replica)
                if replica.desired_state == "run":
                    await events.record(
                        world.session,
                        replica.workload_id,
                        "replica_lost",
                        f"replica {replica.id} on {worker.name} ({worker.id}) is lost: "
                        f"{worker.state_reason}; placing a replacement",
                        {"replica_id": replica.id, "worker_id": worker.id},
                    )
        slot = world.slot_of[worker.id]
        slot.replicas_of.clear()
        for gpu in slot.gpus:
            gpu.claimed_mb, gpu.shared_claims, gpu.whole_claimed = 0, 0, False

    @staticmethod
    async def _workloads(session: AsyncSession, world: Pass) -> list[Workload]:
        with_replicas = list(world.replicas_by_workload)
        result = await session.execute(
            select(Workload)
            .where(Workload.deleted_at.is_(None) | one_of(Workload.id, with_replicas))
            .order_by(Workload.created_at)
            .with_for_update()
        )
        return list(result.scalars())

    def _stop(self, world: Pass, replica: Replica) -> None:
        if replica.desired_state != "stop":
            replica.desired_state = "stop"
            world.touched_workers.add(replica.worker_id)

    async def _reconcile_workload(self, world: Pass, workload: Workload) -> None:
        replicas = world.replicas_by_workload.get(workload.id, [])
        running = [r for r in replicas if r.desired_state == "run"]
        if workload.deleted_at is not None:
            for replica in running:
                self._stop(world, replica)
            return
        desired, policy_reason = desired_replica_count(
            workload.execution_policy, workload.execution_policy_config, world.now
        )
        # Specs are validated against the limit; a row written before it was lowered (or by
        # hand) still gets no more than the limit's worth of work in a pass.
        desired = min(desired, self.settings.max_replicas_per_workload)
        spec = runtime_spec(workload)
        current = [r for r in running if r.spec == spec and self._fits_pins(r, workload)]
        outdated = [r for r in running if r not in current]
        stopping = [r for r in replicas if r.desired_state == "stop"]

        for extra in sorted(current, key=lambda r: (r.state == "ready", r.created_at))[
            : max(0, len(current) - desired)
        ]:
            self._stop(world, extra)
            current.remove(extra)

        unschedulable: str | None = None
        while len(current) < desired:
            decision = placement.place(self._demand(workload), world.slots)
            if isinstance(decision, placement.Unschedulable):
                unschedulable = decision.reason
                # Rolling on a full cluster: free room by retiring one old replica at a time.
                if outdated and not stopping:
                    retired = outdated.pop()
                    self._stop(world, retired)
                    stopping.append(retired)
                break
            current.append(
                await self._create_replica(world, workload, spec, decision, first=not current)
            )

        ready = [r for r in current if r.state == "ready"]
        if outdated and len(ready) >= desired:
            for replica in outdated:
                self._stop(world, replica)
        await self._set_phase(
            world, workload, desired, current, ready, unschedulable, policy_reason
        )

    @staticmethod
    def _fits_pins(replica: Replica, workload: Workload) -> bool:
        if workload.worker_id and replica.worker_id != workload.worker_id:
            return False
        return not workload.gpu_resource_id or workload.gpu_resource_id in replica.gpu_resource_ids

    @staticmethod
    def _demand(workload: Workload) -> placement.Demand:
        config = workload.config or {}
        return placement.Demand(
            workload_id=workload.id,
            project_id=workload.project_id,
            backend=workload.backend,
            model_name=workload.model_name,
            command=config.get("command"),
            worker_pin=workload.worker_id,
            gpu_pin=workload.gpu_resource_id,
        )

    async def _create_replica(
        self,
        world: Pass,
        workload: Workload,
        spec: dict[str, Any],
        decision: placement.Placement,
        *,
        first: bool,
    ) -> Replica:
        engine = engine_for(workload.backend)
        replica = Replica(
            id=new_id("rep"),
            workload_id=workload.id,
            worker_id=decision.worker_id,
            generation=workload.generation,
            spec=spec,
            gpu_resource_ids=list(decision.gpu_ids),
            claim_memory_mb=decision.claim_memory_mb,
            desired_state="run",
            state="pending",
            created_at=world.now,
            updated_at=world.now,
        )
        world.session.add(replica)
        world.replicas_by_workload[workload.id].append(replica)
        placement.claim(
            decision, world.slots, self._demand(workload), whole=engine.gpu_claim == "whole"
        )
        world.touched_workers.add(decision.worker_id)
        worker = world.workers[decision.worker_id]
        gpus = f" on GPU(s) {', '.join(decision.gpu_ids)}" if decision.gpu_ids else " (CPU)"
        await events.record(
            world.session,
            workload.id,
            "replica_placed",
            f"replica {replica.id} placed on {worker.name} ({worker.id}){gpus}",
            {
                "replica_id": replica.id,
                "worker_id": worker.id,
                "gpu_resource_ids": list(decision.gpu_ids),
            },
        )
        if first:
            _, notices = engine.build_argv(spec["command"], spec["model_name"], "0.0.0.0", 0)
            for notice in notices:
                await events.record(world.session, workload.id, "command_adjusted", notice)
        return replica

    async def _set_phase(
        self,
        world: Pass,
        workload: Workload,
        desired: int,
        current: list[Replica],
        ready: list[Replica],
        unschedulable: str | None,
        policy_reason: str | None,
    ) -> None:
        failed = [r for r in current if r.state == "failed"]
        starting = [r for r in current if r.state == "starting"]
        if desired == 0:
            phase, reason = "stopped", policy_reason or "no replicas wanted"
        elif ready:
            phase, reason = "ready", f"{len(ready)}/{desired} replicas ready"
            if unschedulable:
                reason += f"; cannot place more: {unschedulable}"
        elif unschedulable and len(current) < desired and not current:
            phase, reason = "unschedulable", unschedulable
        elif failed:
            phase, reason = "error", failed[0].reason or "engine failed"
        elif starting:
            phase, reason = "bootstrapping", starting[0].reason or "engine starting"
        elif current:
            worker = world.workers[current[0].worker_id]
            phase = "provisioning"
            reason = f"assigned to {worker.name} ({worker.id}); waiting for its agent to start it"
        else:
            phase, reason = "scheduling", "waiting for placement"
        counts = (desired, len(ready))
        if (phase, reason) != (workload.phase, workload.phase_reason):
            workload.phase, workload.phase_reason = phase, reason
            await events.record(
                world.session, workload.id, "phase", f"{phase}: {reason}", {"phase": phase}
            )
            await notify.notify(world.session, notify.WORKLOAD_STATUS, workload.id)
        if counts != (workload.desired_replicas, workload.ready_replicas):
            workload.desired_replicas, workload.ready_replicas = counts


async def run_reconciler(reconciler: Reconciler) -> None:
    try:
        await reconciler.run_forever()
    finally:
        with contextlib.suppress(Exception):
            await reconciler.close()
