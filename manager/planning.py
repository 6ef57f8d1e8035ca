"""Reconcile decisions: for one workload, which replicas to create, stop or forget, and what to
show, each with the reason.

A module of its own, apart from the loop in `manager/reconciler.py`, because it is pure: it reads
frozen views of rows (never ORM objects), the clock and the demand it is handed, and the worker
slots of `manager/placement.py`; it opens no session and does no I/O. That lets the loop read
the world without row locks, decide outside any transaction, and then write each workload's
actions in a short transaction of its own; and every rule below is tested with hand-built views
and no database (tests/unit/test_reconcile_plan.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from inferencekey.enums import WorkloadPhase

from ik_contracts.engines import ENGINES
from ik_contracts.protocol import ReplicaState
from manager import placement
from manager.policies import DemandFigures, PolicyContext, policy_for
from manager.policies.pools import pool_of
from manager.states import DesiredState, WorkerState


@dataclass(frozen=True)
class CustomBackendChoice:
    """The custom-backend version a workload's new replicas run: its backend's newest."""

    version_id: str
    cpu_only: bool


@dataclass(frozen=True)
class WorkloadView:
    """What the planner reads of a workload row."""

    id: str
    project_id: str
    generation: int
    backend: str
    task_type: str
    model_name: str
    config: Mapping[str, Any]
    execution_policy: str | None
    execution_policy_config: Mapping[str, Any]
    worker_pin: str | None
    gpu_pin: str | None
    deleted: bool
    phase: str
    phase_reason: str | None
    desired_replicas: int
    ready_replicas: int
    last_scaled_at: datetime | None
    # Set when ``backend`` is a custom backend's slug that has a published version.
    custom_backend: CustomBackendChoice | None = None

    def runtime_spec(self) -> dict[str, Any]:
        """What a replica runs; a change here rolls the workload's replicas (a new version of
        its custom backend too)."""
        spec: dict[str, Any] = {
            "backend": self.backend,
            "task_type": self.task_type,
            "model_name": self.model_name,
            "command": self.config.get("command"),
            "vllm_version": self.config.get("vllm_version"),
        }
        if self.custom_backend is not None:
            # The workload's config is the backend's own (IK_BACKEND_CONFIG on the worker).
            spec["custom_backend_id"] = self.custom_backend.version_id
            spec["custom_backend_config"] = dict(self.config)
        return spec

    def placement_demand(self) -> placement.Demand:
        return placement.Demand(
            workload_id=self.id,
            project_id=self.project_id,
            backend=self.backend,
            model_name=self.model_name,
            command=self.config.get("command"),
            worker_pin=self.worker_pin,
            gpu_pin=self.gpu_pin,
            pool=pool_of(self.execution_policy_config),
            custom_backend=self.custom_backend is not None,
            cpu_only=self.custom_backend is not None and self.custom_backend.cpu_only,
        )


@dataclass(frozen=True)
class ReplicaView:
    """What the planner reads of a replica row."""

    id: str
    workload_id: str
    worker_id: str
    spec: Mapping[str, Any]
    gpu_resource_ids: tuple[str, ...]
    claim_memory_mb: int
    desired_state: str
    state: str
    reason: str | None
    created_at: datetime
    # Requests its engine reports running plus waiting (None: not reported).
    engine_requests: int | None = None


@dataclass(frozen=True)
class CreateReplica:
    worker_id: str
    worker_name: str
    gpu_ids: tuple[str, ...]
    claim_memory_mb: int
    spec: Mapping[str, Any]
    # How the engine adjusted the user's command; told once, with a workload's first replica.
    notices: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class StopReplica:
    replica_id: str
    worker_id: str
    reason: str


@dataclass(frozen=True)
class ForgetReplica:
    """Delete the row of a replica on a lost worker: no agent will confirm it stopped."""

    replica_id: str
    worker_id: str
    was_running: bool  # only a replica the workload still wanted is worth an event
    reason: str


@dataclass(frozen=True)
class SetPhase:
    phase: WorkloadPhase
    reason: str


@dataclass(frozen=True)
class SetReplicaCounts:
    desired: int
    ready: int
    scaled: bool  # the wanted count changed: stamp last_scaled_at
    reason: str


Action = CreateReplica | StopReplica | ForgetReplica | SetPhase | SetReplicaCounts


def worker_liveness(
    last_heartbeat_at: datetime | None,
    now: datetime,
    *,
    not_ready_after_s: float,
    lost_after_s: float,
) -> tuple[WorkerState, str | None]:
    """A worker's state from how long its agent has been silent, and why when not ready. The
    reason names when the silence began, not how long it has lasted: it stays the same from
    pass to pass, so a silent worker's row is written when its state changes, not every pass."""
    if last_heartbeat_at is None:
        return WorkerState.REGISTERED, "waiting for the agent's first heartbeat"
    silent = (now - last_heartbeat_at).total_seconds()
    if silent <= not_ready_after_s:
        return WorkerState.READY, None
    state = WorkerState.NOT_READY if silent <= lost_after_s else WorkerState.LOST
    return state, f"no heartbeat since {last_heartbeat_at.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"


def silence_held(
    states: Iterable[WorkerState], *, share: float, fleet_at_least: int
) -> tuple[int, int] | None:
    """(silent, fleet) when so many of the fleet's workers are silent (judged not ready or
    lost) that the silence is more likely the Manager's or the network's than theirs: at least
    ``share`` of a fleet of at least ``fleet_at_least`` that has heartbeated. Else None.
    ``states`` are the judged states of the workers not lost already."""
    fleet = silent = 0
    for state in states:
        if state == WorkerState.REGISTERED:
            continue
        fleet += 1
        silent += state in (WorkerState.NOT_READY, WorkerState.LOST)
    if fleet >= fleet_at_least and silent >= share * fleet:
        return silent, fleet
    return None


def claim_existing(
    slots: Iterable[placement.WorkerSlot],
    replicas: Iterable[ReplicaView],
    slot_of: Mapping[str, placement.WorkerSlot] | None = None,
) -> None:
    """Record in ``slots`` what existing replicas hold, so placement sees only what is free.

    Stopping replicas still hold their GPUs until their agent confirms they are gone; replicas on
    a lost worker hold nothing, since they are forgotten in this pass. ``slot_of`` is ``slots``
    by id, when the caller has it already (then ``slots`` is not read).
    """
    if slot_of is None:
        slot_of = {slot.id: slot for slot in slots}
    lost = WorkerState.LOST
    for replica in replicas:
        worker = slot_of.get(replica.worker_id)
        if worker is None or worker.state == lost:
            continue
        worker.add_replica(replica.workload_id)
        gpu_ids = replica.gpu_resource_ids
        if not gpu_ids:
            continue
        whole = placement.claims_whole_gpus(replica.spec["backend"])
        # A replica's GPUs are its worker's: no map of the fleet's thousands per pass.
        for gpu_id in gpu_ids if len(gpu_ids) == 1 else dict.fromkeys(gpu_ids):
            gpu = worker.gpu_of.get(gpu_id)
            if gpu is None:
                continue
            if whole:
                gpu.whole_claimed = True
            else:
                gpu.claimed_mb += replica.claim_memory_mb
                gpu.shared_claims += 1


def _fits_pins_and_pool(
    replica: ReplicaView,
    workload: WorkloadView,
    pool: placement.Pool,
    slot_of: Mapping[str, placement.WorkerSlot],
) -> bool:
    if workload.worker_pin and replica.worker_id != workload.worker_pin:
        return False
    if workload.gpu_pin and workload.gpu_pin not in replica.gpu_resource_ids:
        return False
    # A replica outside the pool (the pool changed, or a price was removed) is replaced.
    slot = slot_of.get(replica.worker_id)
    return slot is None or pool.admits(slot, workload.project_id, replica.gpu_resource_ids)


def wants_room(
    workload: WorkloadView,
    replicas: Iterable[ReplicaView],
    slot_of: Mapping[str, placement.WorkerSlot],
) -> bool:
    """Whether more room could change this workload's plan: it has fewer replicas of its
    current spec, where its pins and pool allow, than its last plan wanted (room ran out, or a
    rolling change waits for room to start its next replica). A workload whose replicas are all
    placed, ready or still starting, waits for nothing that room gives."""
    if workload.deleted or workload.desired_replicas == 0:
        return False
    pool = workload.placement_demand().pool
    spec = workload.runtime_spec()
    placed = sum(
        1
        for r in replicas
        if r.desired_state == DesiredState.RUN
        and r.spec == spec
        and _fits_pins_and_pool(r, workload, pool, slot_of)
    )
    return placed < workload.desired_replicas


def _gpus_on(
    worker_id: str, gpu_ids: Iterable[str], slot_of: Mapping[str, placement.WorkerSlot]
) -> dict[str, placement.GpuSlot]:
    """Those of a worker's GPUs with these ids, by id (a GPU id is one worker's)."""
    slot = slot_of.get(worker_id)
    if slot is None:
        return {}
    wanted = set(gpu_ids)
    return {gpu.id: gpu for gpu in slot.gpus if gpu.id in wanted}


def _gpus_held(
    replicas: Iterable[ReplicaView], slot_of: Mapping[str, placement.WorkerSlot]
) -> dict[str, placement.GpuSlot]:
    """The GPUs ``replicas`` occupy, by id: what the workload pays for, each GPU once."""
    held: dict[str, placement.GpuSlot] = {}
    for replica in replicas:
        held.update(_gpus_on(replica.worker_id, replica.gpu_resource_ids, slot_of))
    return held


TIMES = "\N{MULTIPLICATION SIGN}"
# Prices are floats: a sum that equals the ceiling up to rounding is within it.
COST_EPSILON = 1e-9


def hourly_cost(gpus: Iterable[placement.GpuSlot]) -> float:
    return sum(gpu.price_usd_per_hour or 0.0 for gpu in gpus)


def cost_breakdown(gpus: Iterable[placement.GpuSlot]) -> str:
    """``2 x 1.89/h + 1 x 0.80/h`` (with TIMES for x): the GPUs held, counted by price."""
    counts: dict[float, int] = {}
    for gpu in gpus:
        price = gpu.price_usd_per_hour or 0.0
        counts[price] = counts.get(price, 0) + 1
    return " + ".join(
        f"{n} {TIMES} {price:.2f}/h" for price, n in sorted(counts.items(), reverse=True)
    )


def _capped_by_cost(ceiling: float, held: Mapping[str, placement.GpuSlot], one_more: float) -> str:
    if not held:
        return (
            f"capped by max_hourly_cost_usd {ceiling:.2f}: one replica would cost {one_more:.2f}/h"
        )
    return (
        f"capped by max_hourly_cost_usd {ceiling:.2f}: {cost_breakdown(held.values())} "
        f"({hourly_cost(held.values()):.2f}/h); one more replica would add {one_more:.2f}/h"
    )


def _worker_label(slot_of: Mapping[str, placement.WorkerSlot], worker_id: str) -> str:
    slot = slot_of.get(worker_id)
    return f"{slot.name} ({worker_id})" if slot else worker_id


def _forget_replicas_on_lost_workers(
    replicas: Sequence[ReplicaView], slot_of: Mapping[str, placement.WorkerSlot]
) -> tuple[list[ReplicaView], list[ForgetReplica]]:
    """The replicas still counted, and the forgetting of those whose worker is lost."""
    live: list[ReplicaView] = []
    forgotten: list[ForgetReplica] = []
    for replica in replicas:
        slot = slot_of.get(replica.worker_id)
        if slot is None or slot.state != WorkerState.LOST:
            live.append(replica)
            continue
        forgotten.append(
            ForgetReplica(
                replica.id,
                replica.worker_id,
                was_running=replica.desired_state == DesiredState.RUN,
                reason=f"replica {replica.id} on {_worker_label(slot_of, replica.worker_id)} "
                f"is lost: {slot.state_reason}; placing a replacement",
            )
        )
    return live, forgotten


def plan_workload(
    workload: WorkloadView,
    replicas: Sequence[ReplicaView],
    slots: list[placement.WorkerSlot],
    *,
    now: datetime,
    demand: DemandFigures,
    max_replicas: int,
    scale_down_delay_s: float = 300.0,
    idle_s: float = 600.0,
    slot_of: Mapping[str, placement.WorkerSlot] | None = None,
) -> list[Action]:
    """What to do for one workload now, each action with its reason.

    ``slots`` are the pass's workers with what is already claimed (`claim_existing`); the
    placements planned here are claimed in them too, so the next workload's plan sees them.
    ``slot_of`` is ``slots`` by id, when the caller has it already (a pass plans many).
    """
    if slot_of is None:
        slot_of = {slot.id: slot for slot in slots}
    live, forgotten = _forget_replicas_on_lost_workers(replicas, slot_of)
    actions: list[Action] = list(forgotten)
    running = [r for r in live if r.desired_state == DesiredState.RUN]
    if workload.deleted:
        actions.extend(StopReplica(r.id, r.worker_id, "the workload was deleted") for r in running)
        return actions

    reported = [
        r.engine_requests
        for r in running
        if r.state == ReplicaState.READY and r.engine_requests is not None
    ]
    if reported:
        demand = replace(demand, engine_requests=sum(reported))
    context = PolicyContext(
        config=workload.execution_policy_config,
        now=now,
        demand=demand,
        last_scaled_at=workload.last_scaled_at,
        current_replicas=workload.desired_replicas,
        scale_down_delay_s=scale_down_delay_s,
        idle_s=idle_s,
    )
    desired, policy_reason = policy_for(workload.execution_policy).desired(context)
    # Specs are validated against the limit; a row written before it was lowered (or by hand)
    # still gets no more than the limit's worth of work in a pass.
    desired = min(desired, max_replicas)
    demand_of_one = workload.placement_demand()
    pool = demand_of_one.pool
    limits: list[str] = []
    if pool.max_instances is not None and desired > pool.max_instances:
        limits.append(f"capped by max_instances {pool.max_instances} (the policy wants {desired})")
        desired = pool.max_instances
    spec = workload.runtime_spec()
    current = [
        r for r in running if r.spec == spec and _fits_pins_and_pool(r, workload, pool, slot_of)
    ]
    outdated = [r for r in running if r not in current]
    stopping = [r for r in live if r.desired_state == DesiredState.STOP]

    # Scaling down stops replicas that are not ready first, then the oldest.
    surplus = sorted(current, key=lambda r: (r.state == ReplicaState.READY, r.created_at))
    for extra in surplus[: max(0, len(current) - desired)]:
        actions.append(StopReplica(extra.id, extra.worker_id, f"scaling down to {desired}"))
        current.remove(extra)

    ceiling = pool.max_hourly_cost_usd
    if ceiling is not None:
        # A lowered ceiling stops replicas until what still runs fits under it.
        while current:
            running_gpus = _gpus_held([*current, *outdated], slot_of).values()
            if hourly_cost(running_gpus) <= ceiling + COST_EPSILON:
                break
            extra = min(current, key=lambda r: (r.state == ReplicaState.READY, r.created_at))
            actions.append(
                StopReplica(
                    extra.id,
                    extra.worker_id,
                    f"over max_hourly_cost_usd {ceiling:.2f}: {cost_breakdown(running_gpus)} "
                    f"({hourly_cost(running_gpus):.2f}/h)",
                )
            )
            current.remove(extra)
            stopping.append(extra)
    # Every GPU the workload still occupies counts, stopping replicas' too, until freed.
    held = _gpus_held(live, slot_of)

    created: list[CreateReplica] = []
    unschedulable: str | None = None
    whole = placement.claims_whole_gpus(workload.backend)
    while len(current) + len(created) < desired:
        if ceiling is not None:
            demand_of_one = replace(
                demand_of_one,
                budget_usd_per_hour=ceiling - hourly_cost(held.values()),
                held_gpu_ids=frozenset(held),
            )
        decision = placement.place(demand_of_one, slots)
        if isinstance(decision, placement.Unschedulable):
            unschedulable = decision.reason
            if ceiling is not None and decision.over_budget_usd_per_hour is not None:
                unschedulable = _capped_by_cost(ceiling, held, decision.over_budget_usd_per_hour)
            # Rolling on a full cluster: free room by retiring one old replica at a time; the
            # others keep serving until a new one is ready.
            if outdated and not stopping:
                retired = outdated.pop()
                actions.append(
                    StopReplica(
                        retired.id,
                        retired.worker_id,
                        f"rolling to generation {workload.generation} on a full cluster: "
                        f"stopping one old replica to make room ({unschedulable})",
                    )
                )
                stopping.append(retired)
            break
        placement.claim(decision, slots, demand_of_one, whole=whole)
        held.update(_gpus_on(decision.worker_id, decision.gpu_ids, slot_of))
        notices: tuple[str, ...] = ()
        engine = ENGINES.get(workload.backend)  # None for a custom backend: no command
        if not current and not created and engine is not None:
            _, adjusted = engine.build_argv(spec["command"], spec["model_name"], "0.0.0.0", 0)
            notices = tuple(adjusted)
        have = len(current) + len(created)
        created.append(
            CreateReplica(
                worker_id=decision.worker_id,
                worker_name=slot_of[decision.worker_id].name,
                gpu_ids=decision.gpu_ids,
                claim_memory_mb=decision.claim_memory_mb,
                spec=spec,
                notices=notices,
                reason=f"{have} of {desired} wanted replica(s) of generation "
                f"{workload.generation} exist",
            )
        )
    actions.extend(created)

    ready = [r for r in current if r.state == ReplicaState.READY]
    if outdated and len(ready) >= desired:
        actions.extend(
            StopReplica(
                r.id,
                r.worker_id,
                f"replaced by generation {workload.generation}: {len(ready)} replica(s) ready",
            )
            for r in outdated
        )

    phase, reason = _phase(desired, current, created, ready, unschedulable, policy_reason, slot_of)
    if limits and phase != WorkloadPhase.STOPPED:
        reason = "; ".join([reason, *limits])
    if (phase, reason) != (workload.phase, workload.phase_reason):
        actions.append(SetPhase(phase, reason))
    if (desired, len(ready)) != (workload.desired_replicas, workload.ready_replicas):
        actions.append(
            SetReplicaCounts(
                desired,
                len(ready),
                scaled=desired != workload.desired_replicas,
                reason=policy_reason
                or f"the {workload.execution_policy or 'fixed'} policy wants {desired}",
            )
        )
    return actions


def _phase(
    desired: int,
    current: list[ReplicaView],
    created: list[CreateReplica],
    ready: list[ReplicaView],
    unschedulable: str | None,
    policy_reason: str | None,
    slot_of: Mapping[str, placement.WorkerSlot],
) -> tuple[WorkloadPhase, str]:
    failed = [r for r in current if r.state == ReplicaState.FAILED]
    starting = [r for r in current if r.state == ReplicaState.STARTING]
    if desired == 0:
        return WorkloadPhase.STOPPED, policy_reason or "no replicas wanted"
    if ready:
        reason = f"{len(ready)}/{desired} replicas ready"
        if unschedulable:
            reason += f"; cannot place more: {unschedulable}"
        return WorkloadPhase.READY, reason
    if unschedulable and not current and not created:
        return WorkloadPhase.UNSCHEDULABLE, unschedulable
    # Some replicas exist but more cannot be placed: the phase says so too, so the phase event
    # records that decision.
    more = f"; cannot place more: {unschedulable}" if unschedulable else ""
    if failed:
        return WorkloadPhase.ERROR, (failed[0].reason or "engine failed") + more
    if starting:
        return WorkloadPhase.BOOTSTRAPPING, (starting[0].reason or "engine starting") + more
    if current or created:
        worker_id = current[0].worker_id if current else created[0].worker_id
        return (
            WorkloadPhase.PROVISIONING,
            f"assigned to {_worker_label(slot_of, worker_id)}; waiting for its agent to start it"
            + more,
        )
    return WorkloadPhase.SCHEDULING, "waiting for placement"
