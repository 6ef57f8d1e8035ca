"""Pools and cost ceilings: where a workload's policy lets it run, and what it may spend.

Pure: `manager.placement` and `manager.planning` over hand-built workers, GPUs and prices; the
pool is read from the policy config by `manager.policies.pools`. No database, no clock.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from inferencekey.enums import WorkloadPhase

from ik_contracts.protocol import ReplicaState
from manager.errors import InvalidPolicyConfig
from manager.placement import (
    Demand,
    GpuSlot,
    Placement,
    Pool,
    Unschedulable,
    WorkerSlot,
    place,
)
from manager.planning import (
    TIMES,
    Action,
    CreateReplica,
    ReplicaView,
    SetPhase,
    SetReplicaCounts,
    StopReplica,
    WorkloadView,
    claim_existing,
    plan_workload,
)
from manager.policies import DemandFigures, validate_policy
from manager.policies.pools import pool_of
from manager.states import DesiredState

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
PROJECT = "proj_acme"
OTHER = "proj_other"
A100 = "NVIDIA A100-SXM4-80GB"
L4 = "NVIDIA L4"
MB = {A100: 81920, L4: 23034}
SHARED = None


def worker(
    worker_id: str,
    gpus: str = A100,
    count: int = 1,
    *,
    project_id: str | None = SHARED,
    cuda: str = "12.4",
    price: float | None = None,
) -> WorkerSlot:
    return WorkerSlot(
        id=worker_id,
        name=f"{worker_id}-host",
        project_id=project_id,
        state="ready",
        state_reason=None,
        gpus=[
            GpuSlot(f"gpu_{worker_id}_{i}", f"GPU-{worker_id}-{i}", gpus, MB[gpus], price)
            for i in range(count)
        ],
        cuda_version=cuda,
    )


def demand(pool: Pool, backend: str = "vllm", **more: Any) -> Demand:
    command = "vllm serve m" if backend == "vllm" else "llama-server -m /models/m.gguf"
    return Demand("wl_1", PROJECT, backend, "m", command, pool=pool, **more)


def placed(decision: Placement | Unschedulable) -> Placement:
    assert isinstance(decision, Placement), decision
    return decision


def unschedulable(decision: Placement | Unschedulable) -> Unschedulable:
    assert isinstance(decision, Unschedulable), decision
    return decision


# --- reading the pool from the policy config ------------------------------------------------


def cloud(**pool: Any) -> dict[str, Any]:
    return {"source": "cloud", "cloud_pool": {"gpu_pool": [A100], **pool}}


def test_cloud_pool_reads_gpu_names_cuda_pin_instances_and_the_lower_ceiling() -> None:
    config = {
        "max_hourly_cost_usd": 9.0,
        "workers": cloud(max_hourly_cost_usd=5.0, max_instances=3, allowed_cuda_versions=["13.0"]),
    }
    assert pool_of(config) == Pool(
        gpu_names=(A100,), cuda_versions=("13.0",), max_hourly_cost_usd=5.0, max_instances=3
    )


def test_legacy_root_gpu_pool_is_a_cloud_pool_without_a_cuda_pin() -> None:
    config = {"max_hourly_cost_usd": 2.5, "gpu_pool": [L4]}
    assert pool_of(config) == Pool(gpu_names=(L4,), max_hourly_cost_usd=2.5)


def test_private_pool_reads_its_worker_ids() -> None:
    config = {"workers": {"source": "private", "private_worker_ids": ["wrk_a"]}}
    assert pool_of(config) == Pool(private_worker_ids=("wrk_a",))


def test_policies_without_pool_keys_may_use_any_worker_at_any_cost() -> None:
    assert pool_of({"replicas": 2}) == Pool()


def test_autoscaling_without_a_pool_is_rejected_naming_workers() -> None:
    with pytest.raises(InvalidPolicyConfig) as raised:
        validate_policy("autoscaling", {}, max_replicas=10)
    assert raised.value.field == "execution_policy_config.workers"


def test_a_private_pool_still_checks_the_root_cost_ceiling() -> None:
    config = {
        "max_hourly_cost_usd": -1,
        "workers": {"source": "private", "private_worker_ids": ["wrk_a"]},
    }
    with pytest.raises(InvalidPolicyConfig) as raised:
        validate_policy("autoscaling", config, max_replicas=10)
    assert raised.value.field == "execution_policy_config.max_hourly_cost_usd"


# --- pools in placement ----------------------------------------------------------------------


def test_gpu_pool_places_only_on_shared_workers_with_those_gpus() -> None:
    workers = [
        worker("wrk_a100", A100),
        worker("wrk_l4", L4),
        worker("wrk_mine", L4, project_id=PROJECT),
    ]
    decision = placed(place(demand(Pool(gpu_names=(L4,))), workers))
    assert decision.worker_id == "wrk_l4"


def test_gpu_pool_takes_only_the_gpus_it_names_on_a_mixed_worker() -> None:
    mixed = worker("wrk_mixed", A100)
    mixed.gpus.append(GpuSlot("gpu_l4", "GPU-l4", L4, MB[L4]))
    decision = placed(place(demand(Pool(gpu_names=(L4,))), [mixed]))
    assert decision.gpu_ids == ("gpu_l4",)


def test_gpu_pool_nothing_has_is_unschedulable_naming_the_pool_and_what_there_is() -> None:
    reason = unschedulable(
        place(demand(Pool(gpu_names=("Imaginary GPU 9000",))), [worker("wrk_a")])
    )
    assert reason.reason == (
        "no shared-pool worker has a GPU in gpu_pool [Imaginary GPU 9000]; the shared pool has "
        f"{A100} (CUDA 12.4)"
    )


def test_gpu_pool_never_uses_the_projects_private_workers() -> None:
    mine = worker("wrk_mine", A100, project_id=PROJECT)
    assert (
        "no shared-pool worker has a GPU in gpu_pool"
        in unschedulable(place(demand(Pool(gpu_names=(A100,))), [mine])).reason
    )


def test_allowed_cuda_versions_leave_out_workers_on_other_cuda_versions() -> None:
    pool = Pool(gpu_names=(A100,), cuda_versions=("13.0",))
    workers = [worker("wrk_old", A100, 2, cuda="12.4"), worker("wrk_new", A100, cuda="13.0")]
    assert placed(place(demand(pool), workers)).worker_id == "wrk_new"
    reason = unschedulable(place(demand(pool), workers[:1])).reason
    assert "gpu_pool [NVIDIA A100-SXM4-80GB] with allowed_cuda_versions [13.0]" in reason
    assert f"{A100} (CUDA 12.4)" in reason


def test_private_pool_places_only_on_its_workers_of_this_project() -> None:
    pool = Pool(private_worker_ids=("wrk_b", "wrk_theirs"))
    workers = [
        worker("wrk_a", project_id=PROJECT),
        worker("wrk_b", project_id=PROJECT),
        worker("wrk_shared"),
        worker("wrk_theirs", project_id=OTHER),
    ]
    assert placed(place(demand(pool), workers)).worker_id == "wrk_b"
    reason = unschedulable(place(demand(pool), [workers[0], *workers[2:]])).reason
    assert (
        reason
        == "no worker of private_worker_ids [wrk_b, wrk_theirs] is registered to this project"
    )


def test_a_cost_limited_pool_does_not_use_an_unpriced_gpu_and_says_so() -> None:
    pool = Pool(gpu_names=(A100,), max_hourly_cost_usd=5.0)
    reason = unschedulable(place(demand(pool, budget_usd_per_hour=5.0), [worker("wrk_a")])).reason
    assert "wrk_a: 0 of 0 usable GPUs free" in reason
    assert f"{A100} unpriced: a pool with max_hourly_cost_usd uses priced GPUs only" in reason
    assert placed(place(demand(Pool(gpu_names=(A100,))), [worker("wrk_a")]))


def test_a_replica_over_the_budget_left_is_not_placed_and_says_what_it_would_add() -> None:
    pool = Pool(gpu_names=(A100,), max_hourly_cost_usd=5.0)
    workers = [worker("wrk_a", price=1.89)]
    decision = unschedulable(place(demand(pool, budget_usd_per_hour=1.22), workers))
    assert decision.over_budget_usd_per_hour == pytest.approx(1.89)
    assert "wrk_a: 1 x NVIDIA A100-SXM4-80GB would add 1.89/h, 1.22/h is left" in decision.reason
    fits = placed(place(demand(pool, budget_usd_per_hour=1.89), workers))
    assert fits.added_usd_per_hour == pytest.approx(1.89)


def test_a_cost_limited_pool_takes_the_cheapest_gpu() -> None:
    pool = Pool(gpu_names=(A100, L4), max_hourly_cost_usd=5.0)
    workers = [worker("wrk_a100", A100, price=1.89), worker("wrk_l4", L4, price=0.80)]
    assert placed(place(demand(pool, "llamacpp", budget_usd_per_hour=5.0), workers)).worker_id
    pricey = worker("wrk_two", A100, price=1.89)
    pricey.gpus.append(GpuSlot("gpu_cheap", "GPU-cheap", A100, MB[A100], 0.5))
    decision = placed(place(demand(pool, "llamacpp", budget_usd_per_hour=5.0), [pricey]))
    assert decision.gpu_ids == ("gpu_cheap",)


def test_a_gpu_the_workload_holds_costs_nothing_more_for_a_shared_engine() -> None:
    pool = Pool(gpu_names=(A100,), max_hourly_cost_usd=2.0)
    box = worker("wrk_a", A100, 2, price=1.89)
    wanted = demand(
        pool, "llamacpp", budget_usd_per_hour=0.11, held_gpu_ids=frozenset({"gpu_wrk_a_1"})
    )
    decision = placed(place(wanted, [box]))
    assert (decision.gpu_ids, decision.added_usd_per_hour) == (("gpu_wrk_a_1",), 0.0)


# --- pools and ceilings in the reconcile plan ---------------------------------------------


def workload(config: dict[str, Any], **changes: Any) -> WorkloadView:
    base = WorkloadView(
        id="wl_1",
        project_id=PROJECT,
        generation=1,
        backend="vllm",
        task_type="text2text",
        model_name="m",
        config={"command": "vllm serve m"},
        execution_policy="autoscaling",
        execution_policy_config=config,
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


def autoscaling(replicas: int, **pool: Any) -> dict[str, Any]:
    return {
        "min_workers": replicas,
        "max_workers": replicas,
        "max_hourly_cost_usd": 50.0,
        "workers": cloud(**pool),
    }


def replica(
    replica_id: str, worker_id: str, gpu: int, of: WorkloadView, age_s: float = 60
) -> ReplicaView:
    return ReplicaView(
        id=replica_id,
        workload_id="wl_1",
        worker_id=worker_id,
        spec=of.runtime_spec(),
        gpu_resource_ids=(f"gpu_{worker_id}_{gpu}",),
        claim_memory_mb=0,
        desired_state=DesiredState.RUN,
        state=ReplicaState.READY,
        reason=None,
        created_at=NOW - timedelta(seconds=age_s),
    )


def plan(
    wanted: WorkloadView, replicas: list[ReplicaView], slots: list[WorkerSlot]
) -> list[Action]:
    claim_existing(slots, replicas)
    return plan_workload(wanted, replicas, slots, now=NOW, demand=DemandFigures(), max_replicas=100)


T = TypeVar("T")


def of_type(actions: list[Action], kind: type[T]) -> list[T]:
    return [a for a in actions if isinstance(a, kind)]


def test_a_cost_ceiling_stops_replicas_earlier_than_the_count_asks_and_says_why() -> None:
    wanted = workload(autoscaling(3, max_hourly_cost_usd=5.0))
    actions = plan(wanted, [], [worker("wrk_a", A100, 4, price=1.89)])
    assert len(of_type(actions, CreateReplica)) == 2
    [phase] = of_type(actions, SetPhase)
    assert phase.phase == WorkloadPhase.PROVISIONING
    assert (
        f"cannot place more: capped by max_hourly_cost_usd 5.00: 2 {TIMES} 1.89/h (3.78/h); "
        in phase.reason
    )
    assert phase.reason.endswith("one more replica would add 1.89/h")


def test_the_root_ceiling_caps_the_pool_too() -> None:
    config = {**autoscaling(3), "max_hourly_cost_usd": 2.0}
    actions = plan(workload(config), [], [worker("wrk_a", A100, 4, price=1.89)])
    assert len(of_type(actions, CreateReplica)) == 1


def test_the_ceiling_counts_the_replicas_that_run_already() -> None:
    wanted = workload(autoscaling(3, max_hourly_cost_usd=4.0))
    running = [replica("rep_1", "wrk_a", 0, wanted)]
    actions = plan(wanted, running, [worker("wrk_a", A100, 4, price=1.89)])
    assert len(of_type(actions, CreateReplica)) == 1
    [phase] = of_type(actions, SetPhase)
    assert f"capped by max_hourly_cost_usd 4.00: 2 {TIMES} 1.89/h (3.78/h)" in phase.reason


def test_a_ceiling_below_one_replica_is_unschedulable_saying_what_one_costs() -> None:
    wanted = workload(autoscaling(1, max_hourly_cost_usd=1.0))
    actions = plan(wanted, [], [worker("wrk_a", A100, 1, price=1.89)])
    assert of_type(actions, CreateReplica) == []
    [phase] = of_type(actions, SetPhase)
    assert phase == SetPhase(
        WorkloadPhase.UNSCHEDULABLE,
        "capped by max_hourly_cost_usd 1.00: one replica would cost 1.89/h",
    )


def test_a_lowered_ceiling_stops_replicas_until_the_rest_fit_under_it() -> None:
    wanted = workload(autoscaling(3, max_hourly_cost_usd=4.0))
    running = [replica(f"rep_{i}", "wrk_a", i, wanted, age_s=100 - i) for i in range(3)]
    actions = plan(wanted, running, [worker("wrk_a", A100, 4, price=1.89)])
    [stop] = of_type(actions, StopReplica)
    assert stop.replica_id == "rep_0"
    assert stop.reason == f"over max_hourly_cost_usd 4.00: 3 {TIMES} 1.89/h (5.67/h)"
    assert of_type(actions, CreateReplica) == []


def test_max_instances_caps_the_replica_count_and_the_phase_says_so() -> None:
    wanted = workload(autoscaling(3, max_instances=2))
    actions = plan(wanted, [], [worker("wrk_a", A100, 4, price=1.89)])
    assert len(of_type(actions, CreateReplica)) == 2
    [counts] = of_type(actions, SetReplicaCounts)
    assert counts.desired == 2
    [phase] = of_type(actions, SetPhase)
    assert phase.reason.endswith("; capped by max_instances 2 (the policy wants 3)")


def test_a_replica_outside_a_changed_pool_is_replaced_inside_it() -> None:
    before = workload(autoscaling(1))
    slots = [worker("wrk_a100", A100, price=1.89), worker("wrk_l4", L4, price=0.8)]
    old = replica("rep_old", "wrk_a100", 0, before)
    after = workload(
        {**autoscaling(1), "workers": {"source": "cloud", "cloud_pool": {"gpu_pool": [L4]}}}
    )
    [created] = of_type(plan(after, [old], slots), CreateReplica)
    assert created.worker_id == "wrk_l4"
