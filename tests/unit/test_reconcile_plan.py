"""What the reconciler decides for a workload, and why: `manager.planning` over hand-built views.

No database, no clock: each test builds the workload, its replicas and the workers' slots, and
reads the plan.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from inferencekey.enums import WorkloadPhase

from ik_contracts.protocol import ReplicaState
from manager.placement import GpuSlot, WorkerSlot
from manager.planning import (
    Action,
    CreateReplica,
    ForgetReplica,
    ReplicaView,
    SetPhase,
    SetReplicaCounts,
    StopReplica,
    WorkloadView,
    claim_existing,
    plan_workload,
    wants_room,
    worker_liveness,
)
from manager.policies import DemandFigures
from manager.states import DesiredState, WorkerState

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)  # a Friday, at noon
PROJECT = "proj_acme"
A100_MB = 81920
COMMAND = "vllm serve m"


def workload(**changes: Any) -> WorkloadView:
    """One vLLM workload wanting one replica, as it is right after it was created."""
    base = WorkloadView(
        id="wl_1",
        project_id=PROJECT,
        generation=1,
        backend="vllm",
        task_type="text2text",
        model_name="m",
        config={"command": COMMAND},
        execution_policy="fixed",
        execution_policy_config={"replicas": 1},
        worker_pin=None,
        gpu_pin=None,
        deleted=False,
        phase=WorkloadPhase.SCHEDULING,
        phase_reason="waiting for placement",
        desired_replicas=0,
        ready_replicas=0,
        last_scaled_at=None,
    )
    return dataclasses.replace(base, **changes)


def worker(
    worker_id: str,
    gpu_count: int = 1,
    *,
    state: WorkerState = WorkerState.READY,
    state_reason: str | None = None,
) -> WorkerSlot:
    return WorkerSlot(
        id=worker_id,
        name=f"{worker_id}-host",
        project_id=PROJECT,
        state=state,
        state_reason=state_reason,
        gpus=[
            GpuSlot(f"gpu_{worker_id}_{i}", f"GPU-{worker_id}-{i}", "NVIDIA A100", A100_MB)
            for i in range(gpu_count)
        ],
    )


def replica(
    replica_id: str,
    worker_id: str,
    *,
    state: ReplicaState = ReplicaState.READY,
    desired: DesiredState = DesiredState.RUN,
    of: WorkloadView | None = None,
    gpu: int = 0,
    age_s: float = 60,
) -> ReplicaView:
    """A replica running what ``of`` (default: `workload()`) runs, on its worker's GPU ``gpu``."""
    return ReplicaView(
        id=replica_id,
        workload_id="wl_1",
        worker_id=worker_id,
        spec=(of or workload()).runtime_spec(),
        gpu_resource_ids=(f"gpu_{worker_id}_{gpu}",),
        claim_memory_mb=0,
        desired_state=desired,
        state=state,
        reason=None,
        created_at=NOW - timedelta(seconds=age_s),
    )


def plan(
    wanted: WorkloadView,
    replicas: list[ReplicaView],
    slots: list[WorkerSlot],
    *,
    max_replicas: int = 100,
) -> list[Action]:
    claim_existing(slots, replicas)
    return plan_workload(
        wanted, replicas, slots, now=NOW, demand=DemandFigures(), max_replicas=max_replicas
    )


T = TypeVar("T")


def of_type(actions: list[Action], kind: type[T]) -> list[T]:
    return [a for a in actions if isinstance(a, kind)]


def phase_of(actions: list[Action]) -> SetPhase:
    [phase] = of_type(actions, SetPhase)
    return phase


# Scaling.


def test_scale_up_places_each_missing_replica_on_another_worker() -> None:
    actions = plan(
        workload(execution_policy_config={"replicas": 2}), [], [worker("wrk_a"), worker("wrk_b")]
    )
    created = of_type(actions, CreateReplica)
    assert sorted(c.worker_id for c in created) == ["wrk_a", "wrk_b"]
    assert [c.reason for c in created] == [
        "0 of 2 wanted replica(s) of generation 1 exist",
        "1 of 2 wanted replica(s) of generation 1 exist",
    ]
    assert all(c.spec == workload().runtime_spec() for c in created)
    assert phase_of(actions) == SetPhase(
        WorkloadPhase.PROVISIONING,
        f"assigned to {created[0].worker_name} ({created[0].worker_id}); "
        "waiting for its agent to start it",
    )
    [counts] = of_type(actions, SetReplicaCounts)
    assert (counts.desired, counts.ready, counts.scaled) == (2, 0, True)


def test_scale_down_stops_replicas_not_ready_first_then_the_oldest() -> None:
    replicas = [
        replica("rep_old_ready", "wrk_a", age_s=300),
        replica("rep_new_ready", "wrk_b", age_s=100),
        replica("rep_starting", "wrk_c", state=ReplicaState.STARTING, age_s=10),
    ]
    slots = [worker("wrk_a"), worker("wrk_b"), worker("wrk_c")]
    actions = plan(workload(desired_replicas=3, ready_replicas=2), replicas, slots)
    stops = of_type(actions, StopReplica)
    assert [s.replica_id for s in stops] == ["rep_starting", "rep_old_ready"]
    assert all(s.reason == "scaling down to 1" for s in stops)
    assert of_type(actions, CreateReplica) == []
    assert phase_of(actions) == SetPhase(WorkloadPhase.READY, "1/1 replicas ready")
    [counts] = of_type(actions, SetReplicaCounts)
    assert (counts.desired, counts.ready, counts.scaled) == (1, 1, True)


def test_a_workload_that_has_what_it_wants_needs_no_action() -> None:
    steady = workload(
        phase=WorkloadPhase.READY,
        phase_reason="1/1 replicas ready",
        desired_replicas=1,
        ready_replicas=1,
    )
    assert plan(steady, [replica("rep_1", "wrk_a")], [worker("wrk_a"), worker("wrk_b")]) == []


def test_the_replica_limit_caps_what_a_policy_asks_for() -> None:
    actions = plan(
        workload(execution_policy_config={"replicas": 5}),
        [],
        [worker(f"wrk_{i}") for i in range(5)],
        max_replicas=2,
    )
    assert len(of_type(actions, CreateReplica)) == 2


def test_the_engines_command_notices_come_with_the_first_replica_only() -> None:
    actions = plan(
        workload(
            execution_policy_config={"replicas": 2}, config={"command": f"{COMMAND} --port 9000"}
        ),
        [],
        [worker("wrk_a"), worker("wrk_b")],
    )
    first, second = of_type(actions, CreateReplica)
    assert first.notices and "--port" in " ".join(first.notices)
    assert second.notices == ()


# Rolling a new generation.


def test_a_new_generation_is_placed_beside_the_old_which_keeps_serving_until_it_is_ready() -> None:
    old = workload()
    new = workload(generation=2, config={"command": f"{COMMAND} --max-model-len 4096"})
    actions = plan(new, [replica("rep_old", "wrk_a", of=old)], [worker("wrk_a", gpu_count=2)])
    [created] = of_type(actions, CreateReplica)
    assert created.spec == new.runtime_spec()
    assert of_type(actions, StopReplica) == []


def test_old_generation_stops_once_enough_new_replicas_are_ready() -> None:
    old = workload()
    new = workload(generation=2, config={"command": f"{COMMAND} --max-model-len 4096"})
    replicas = [
        replica("rep_old", "wrk_a", of=old, gpu=0),
        replica("rep_new", "wrk_a", of=new, gpu=1),
    ]
    actions = plan(new, replicas, [worker("wrk_a", gpu_count=2)])
    assert of_type(actions, StopReplica) == [
        StopReplica("rep_old", "wrk_a", "replaced by generation 2: 1 replica(s) ready")
    ]


def test_rolling_on_a_full_cluster_retires_one_old_replica_and_the_rest_keep_serving() -> None:
    old = workload(execution_policy_config={"replicas": 2})
    new = dataclasses.replace(old, generation=2, config={"command": f"{COMMAND} --seed 1"})
    replicas = [
        replica("rep_old_1", "wrk_a", of=old, gpu=0, age_s=300),
        replica("rep_old_2", "wrk_a", of=old, gpu=1, age_s=200),
    ]
    actions = plan(new, replicas, [worker("wrk_a", gpu_count=2)])
    assert of_type(actions, CreateReplica) == []
    [retired] = of_type(actions, StopReplica)
    assert retired.replica_id == "rep_old_2"
    assert retired.reason.startswith(
        "rolling to generation 2 on a full cluster: stopping one old replica to make room ("
    )
    assert "vllm needs 1 free whole GPU(s) on one worker" in retired.reason
    phase = phase_of(actions)
    assert phase.phase == WorkloadPhase.UNSCHEDULABLE
    assert phase.reason.startswith("vllm needs 1 free whole GPU(s) on one worker")


def test_rolling_on_a_full_cluster_retires_no_more_while_one_is_still_stopping() -> None:
    old = workload(execution_policy_config={"replicas": 2})
    new = dataclasses.replace(old, generation=2, config={"command": f"{COMMAND} --seed 1"})
    replicas = [
        replica("rep_old_1", "wrk_a", of=old, gpu=0),
        replica("rep_old_2", "wrk_a", of=old, gpu=1, desired=DesiredState.STOP),
    ]
    actions = plan(new, replicas, [worker("wrk_a", gpu_count=2)])
    assert of_type(actions, StopReplica) == []
    assert of_type(actions, CreateReplica) == []


# Workers that went away, and what fits nowhere.


def test_replicas_of_a_lost_worker_are_forgotten_and_replaced_elsewhere() -> None:
    slots = [
        worker("wrk_a", state=WorkerState.LOST, state_reason="no heartbeat for 90s"),
        worker("wrk_b"),
    ]
    lost = replica("rep_lost", "wrk_a")
    actions = plan(workload(desired_replicas=1, ready_replicas=1), [lost], slots)
    assert of_type(actions, ForgetReplica) == [
        ForgetReplica(
            "rep_lost",
            "wrk_a",
            was_running=True,
            reason="replica rep_lost on wrk_a-host (wrk_a) is lost: no heartbeat for 90s; "
            "placing a replacement",
        )
    ]
    [created] = of_type(actions, CreateReplica)
    assert created.worker_id == "wrk_b"


def test_a_lost_workers_gpus_count_as_free_no_more_nor_as_claimed() -> None:
    slots = [worker("wrk_a", state=WorkerState.LOST, state_reason="no heartbeat for 90s")]
    claim_existing(slots, [replica("rep_lost", "wrk_a")])
    assert slots[0].replicas_of == {}
    assert slots[0].gpus[0].wholly_free


def test_nothing_fits_is_unschedulable_with_the_reason() -> None:
    actions = plan(workload(), [], [worker("wrk_cpu", gpu_count=0)])
    assert of_type(actions, CreateReplica) == []
    assert phase_of(actions) == SetPhase(
        WorkloadPhase.UNSCHEDULABLE,
        "vllm needs 1 free whole GPU(s) on one worker; wrk_cpu: no GPUs (CPU only)",
    )


def test_no_worker_at_all_is_unschedulable_saying_how_to_add_one() -> None:
    phase = phase_of(plan(workload(), [], []))
    assert phase.phase == WorkloadPhase.UNSCHEDULABLE
    assert "inferencekey admin worker create" in phase.reason


def test_ready_replicas_with_more_wanted_than_fit_is_ready_and_says_what_is_missing() -> None:
    actions = plan(
        workload(execution_policy_config={"replicas": 2}),
        [replica("rep_1", "wrk_a")],
        [worker("wrk_a")],
    )
    phase = phase_of(actions)
    assert phase.phase == WorkloadPhase.READY
    assert phase.reason.startswith("1/2 replicas ready; cannot place more: vllm needs")


# Zero replicas, deletion, and the phase while replicas start.


def test_zero_replicas_wanted_stops_the_running_ones_and_says_why() -> None:
    actions = plan(
        workload(execution_policy_config={"replicas": 0}),
        [replica("rep_1", "wrk_a")],
        [worker("wrk_a")],
    )
    assert [s.replica_id for s in of_type(actions, StopReplica)] == ["rep_1"]
    assert phase_of(actions) == SetPhase(WorkloadPhase.STOPPED, "fixed policy with replicas = 0")


def test_outside_a_schedule_window_the_phase_says_so() -> None:
    weekdays = workload(
        execution_policy="scheduled",
        execution_policy_config={"window": "Mon-Fri 08:00-20:00 UTC"},
    )
    assert of_type(plan(weekdays, [], [worker("wrk_a")]), CreateReplica)
    saturday = plan_workload(
        weekdays,
        [],
        [worker("wrk_a")],
        now=NOW + timedelta(days=1),
        demand=DemandFigures(),
        max_replicas=100,
    )
    assert phase_of(saturday) == SetPhase(
        WorkloadPhase.STOPPED, "window closed; opens at 2026-11-30T08:00:00Z"
    )


def test_a_cron_run_places_its_replicas_and_its_end_stops_them_each_saying_why() -> None:
    nightly = workload(
        execution_policy="scheduled",
        execution_policy_config={"cron": "0 12 * * *", "replicas": 2},
    )
    during = plan(nightly, [], [worker("wrk_a"), worker("wrk_b")])
    assert len(of_type(during, CreateReplica)) == 2
    run = "cron run started: fired at 2026-11-27T12:00:00Z, until 2026-11-27T13:00:00Z"
    assert of_type(during, SetReplicaCounts) == [SetReplicaCounts(2, 0, scaled=True, reason=run)]

    running = dataclasses.replace(nightly, desired_replicas=2, ready_replicas=2)
    replicas = [replica("rep_1", "wrk_a", of=nightly), replica("rep_2", "wrk_b", of=nightly)]
    after = plan_workload(
        running,
        replicas,
        [worker("wrk_a"), worker("wrk_b")],
        now=NOW + timedelta(hours=1),
        demand=DemandFigures(),
        max_replicas=100,
    )
    assert sorted(s.replica_id for s in of_type(after, StopReplica)) == ["rep_1", "rep_2"]
    ended = "cron run ended; next run fires at 2026-11-28T12:00:00Z"
    assert phase_of(after) == SetPhase(WorkloadPhase.STOPPED, ended)
    assert of_type(after, SetReplicaCounts) == [SetReplicaCounts(0, 0, scaled=True, reason=ended)]


def test_a_deleted_workload_stops_its_replicas_and_leaves_its_phase_alone() -> None:
    actions = plan(
        workload(deleted=True, phase=WorkloadPhase.DELETED),
        [replica("rep_1", "wrk_a"), replica("rep_2", "wrk_b", desired=DesiredState.STOP)],
        [worker("wrk_a"), worker("wrk_b")],
    )
    assert actions == [StopReplica("rep_1", "wrk_a", "the workload was deleted")]


def test_a_failed_replica_makes_the_phase_error_with_its_reason() -> None:
    failed = dataclasses.replace(
        replica("rep_1", "wrk_a", state=ReplicaState.FAILED), reason="engine exited with code 1"
    )
    phase = phase_of(plan(workload(), [failed], [worker("wrk_a")]))
    assert phase == SetPhase(WorkloadPhase.ERROR, "engine exited with code 1")


def test_a_starting_replica_makes_the_phase_bootstrapping() -> None:
    starting = dataclasses.replace(
        replica("rep_1", "wrk_a", state=ReplicaState.STARTING), reason="loading the model"
    )
    phase = phase_of(plan(workload(), [starting], [worker("wrk_a")]))
    assert phase == SetPhase(WorkloadPhase.BOOTSTRAPPING, "loading the model")


# Pins.


def test_a_worker_pin_moves_a_replica_off_another_worker() -> None:
    pinned = workload(worker_pin="wrk_b")
    actions = plan(pinned, [replica("rep_on_a", "wrk_a")], [worker("wrk_a"), worker("wrk_b")])
    [created] = of_type(actions, CreateReplica)
    assert created.worker_id == "wrk_b"
    assert of_type(actions, StopReplica) == []  # until the pinned one is ready


def test_a_gpu_pin_places_on_that_gpu_only() -> None:
    pinned = workload(gpu_pin="gpu_wrk_a_1")
    actions = plan(pinned, [], [worker("wrk_a", gpu_count=2), worker("wrk_b")])
    [created] = of_type(actions, CreateReplica)
    assert (created.worker_id, created.gpu_ids) == ("wrk_a", ("gpu_wrk_a_1",))


def test_a_gpu_pin_to_a_gpu_another_workload_holds_is_unschedulable_saying_so() -> None:
    slots = [worker("wrk_a", gpu_count=2)]
    claim_existing(slots, [dataclasses.replace(replica("rep_x", "wrk_a"), workload_id="wl_x")])
    actions = plan(workload(gpu_pin="gpu_wrk_a_0"), [], slots)
    assert of_type(actions, CreateReplica) == []
    phase = phase_of(actions)
    assert phase.phase == WorkloadPhase.UNSCHEDULABLE
    assert "wrk_a: pinned GPU gpu_wrk_a_0 is not free" in phase.reason


# Worker liveness.


def test_a_worker_is_ready_then_not_ready_then_lost_as_its_silence_grows() -> None:
    def liveness(silent_s: float | None) -> tuple[WorkerState, str | None]:
        last = None if silent_s is None else NOW - timedelta(seconds=silent_s)
        return worker_liveness(last, NOW, not_ready_after_s=15, lost_after_s=60)

    assert liveness(None) == (WorkerState.REGISTERED, "waiting for the agent's first heartbeat")
    assert liveness(5) == (WorkerState.READY, None)
    silent_since = f"{NOW.astimezone(UTC) - timedelta(seconds=20):%Y-%m-%dT%H:%M:%SZ}"
    assert liveness(20) == (WorkerState.NOT_READY, f"no heartbeat since {silent_since}")
    # The same reason at every pass while the silence lasts: the row is not written again.
    last = NOW - timedelta(seconds=20)
    later = worker_liveness(last, NOW + timedelta(seconds=9), not_ready_after_s=15, lost_after_s=60)
    assert later == liveness(20)
    lost_since = f"{NOW.astimezone(UTC) - timedelta(seconds=61):%Y-%m-%dT%H:%M:%SZ}"
    assert liveness(61) == (WorkerState.LOST, f"no heartbeat since {lost_since}")


# Which workloads room could help: planned again when a worker comes back or room frees up.


def test_only_a_workload_short_of_placed_replicas_wants_room() -> None:
    slots = [worker("wrk_a", gpu_count=2), worker("wrk_b")]
    slot_of = {slot.id: slot for slot in slots}
    two = workload(execution_policy_config={"replicas": 2}, desired_replicas=2)
    # Both placed, one still starting: waiting for its engine, not for room.
    starting = [replica("rep_1", "wrk_a"), replica("rep_2", "wrk_b", state=ReplicaState.STARTING)]
    assert not wants_room(two, starting, slot_of)
    # One could not be placed (its last plan found no room).
    assert wants_room(two, starting[:1], slot_of)
    # A stopping replica holds room but counts for nothing.
    stopping = [starting[0], replica("rep_2", "wrk_b", desired=DesiredState.STOP)]
    assert wants_room(two, stopping, slot_of)
    # A rolling change: the old generation's replicas are no replicas of the new spec.
    rolled = dataclasses.replace(two, generation=2, config={"command": f"{COMMAND} --seed 1"})
    assert wants_room(rolled, starting, slot_of)
    assert not wants_room(
        rolled, [replica(r.id, r.worker_id, of=rolled) for r in starting], slot_of
    )
    # Pinned elsewhere: a replica on another worker is to be replaced.
    pinned = dataclasses.replace(two, worker_pin="wrk_b", desired_replicas=1)
    assert wants_room(pinned, starting[:1], slot_of)
    assert not wants_room(pinned, starting[1:], slot_of)
    # Wanting none, or deleted: no room helps.
    assert not wants_room(dataclasses.replace(two, desired_replicas=0), [], slot_of)
    assert not wants_room(dataclasses.replace(two, deleted=True), [], slot_of)
