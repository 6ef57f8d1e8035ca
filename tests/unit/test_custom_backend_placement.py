"""Where a custom backend's replicas go, and what they pin: `manager.planning` and
`manager.placement` over hand-built views (tests/unit/test_reconcile_plan.py has the helpers)."""

from __future__ import annotations

import dataclasses

from manager.placement import UNKNOWN_MODEL_MB
from manager.planning import CreateReplica, CustomBackendChoice, SetPhase, WorkloadView
from tests.unit.test_reconcile_plan import of_type, plan, replica, worker, workload

VERSION = CustomBackendChoice(version_id="cbv_one", cpu_only=False)
CPU_ONLY = CustomBackendChoice(version_id="cbv_cpu", cpu_only=True)


def custom(choice: CustomBackendChoice | None = VERSION, **changes: object) -> WorkloadView:
    return dataclasses.replace(
        workload(),
        backend="forecaster",
        task_type="forecast",
        config={"horizon": 24},
        custom_backend=choice,
        **changes,
    )


def test_the_runtime_spec_pins_the_version_and_carries_the_config() -> None:
    spec = custom().runtime_spec()

    assert spec["custom_backend_id"] == "cbv_one"
    assert spec["custom_backend_config"] == {"horizon": 24}
    assert spec["command"] is None
    assert "custom_backend_id" not in workload().runtime_spec()  # built-ins roll nothing


def test_a_gpu_backend_takes_memory_on_one_gpu_like_llamacpp() -> None:
    [created] = of_type(plan(custom(), [], [worker("w1", gpu_count=2)]), CreateReplica)

    assert len(created.gpu_ids) == 1 and created.claim_memory_mb == UNKNOWN_MODEL_MB
    assert created.notices == ()


def test_a_gpu_backend_runs_on_a_worker_without_gpus() -> None:
    [created] = of_type(plan(custom(), [], [worker("w1", gpu_count=0)]), CreateReplica)

    assert created.gpu_ids == () and created.worker_id == "w1"


def test_a_cpu_only_backend_claims_no_gpu_even_where_every_gpu_is_taken() -> None:
    busy = worker("w1", gpu_count=1)
    vllm_replica = replica("rep_vllm", "w1")  # holds the one GPU whole

    actions = plan(custom(CPU_ONLY, id="wl_2"), [vllm_replica], [busy])

    [created] = of_type(actions, CreateReplica)
    assert created.gpu_ids == () and created.claim_memory_mb == 0


def test_a_new_version_is_a_new_spec_so_the_replicas_roll() -> None:
    old = replica("rep_old", "w1", of=custom(), gpu=0)
    newer = custom(CustomBackendChoice("cbv_two", cpu_only=False), generation=2)

    [created] = of_type(plan(newer, [old], [worker("w1", gpu_count=2)]), CreateReplica)

    assert created.spec["custom_backend_id"] == "cbv_two"


def test_a_custom_slug_with_no_published_version_is_unschedulable() -> None:
    actions = plan(custom(None), [], [worker("w1")])

    [phase] = of_type(actions, SetPhase)
    assert phase.phase == "unschedulable"
    assert "no custom backend of that slug" in phase.reason
