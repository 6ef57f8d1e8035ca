"""A workload that fits nowhere says why, and is placed as soon as a worker that fits appears."""

from __future__ import annotations

import time
from typing import Any

import httpx
from inferencekey import Backend, ManagementClient, WorkloadSpec

from tests.support import AgentFactory, TestProject, wait_until

A100 = "NVIDIA A100-SXM4-80GB"
TWO_GPU_VLLM = WorkloadSpec(
    name="Big model",
    slug="big",
    model="m",
    backend=Backend.VLLM,
    command="vllm serve m --tensor-parallel-size 2",
    execution_policy="fixed",
    execution_policy_config={"replicas": 1},
)


def ready_worker_with(api: httpx.Client, project: TestProject, gpu_count: int) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        return next(
            (
                w
                for w in api.get("/api/workers").json()["workers"]
                if w["project_id"] == project.id
                and w["state"] == "ready"
                and len(w["gpus"]) == gpu_count
            ),
            None,
        )

    return wait_until(find, 15, f"no ready worker with {gpu_count} GPU(s)")


def status(api: httpx.Client) -> dict[str, Any]:
    return api.get("/api/workloads/big").json()["status"]


def replicas(api: httpx.Client) -> list[dict[str, Any]]:
    response = api.get("/api/workloads/big/replicas")
    assert response.status_code == 200, response.text
    return response.json()["replicas"]


def test_too_few_gpus_is_unschedulable_with_the_reason_then_placed_when_a_worker_fits(
    start_bare_agent: AgentFactory, mgmt: ManagementClient, api: httpx.Client, project: TestProject
) -> None:
    start_bare_agent(simulate_gpus=f"1x{A100}")
    small = ready_worker_with(api, project, gpu_count=1)
    mgmt.ensure(TWO_GPU_VLLM)

    unschedulable = wait_until(
        lambda: (s := status(api))["phase"] == "unschedulable" and s, 10, "never unschedulable"
    )
    assert "vllm needs 2 free whole GPU(s) on one worker" in unschedulable["reason"]
    assert f"{small['id']}: 1 of 1 GPUs free" in unschedulable["reason"]
    events = api.get("/api/workloads/big/events").json()["events"]
    phases = [e["message"] for e in events if e["kind"] == "phase"]
    assert phases == [f"unschedulable: {unschedulable['reason']}"]

    time.sleep(2.5)  # a few reconcile passes: nothing fits, so nothing changes
    assert status(api) == unschedulable
    assert replicas(api) == []

    start_bare_agent(simulate_gpus=f"2x{A100}")
    big = ready_worker_with(api, project, gpu_count=2)
    [replica] = wait_until(lambda: replicas(api), 10, "the workload was never placed")
    assert replica["worker_id"] == big["id"]
    assert sorted(replica["gpu_resource_ids"]) == sorted(g["id"] for g in big["gpus"])
    events = api.get("/api/workloads/big/events").json()["events"]
    placed = [e for e in events if e["kind"] == "replica_placed"]
    assert len(placed) == 1 and big["id"] in placed[0]["message"]

    # No vllm binary on this host: the agent reports that plainly instead of a bare traceback.
    failed = wait_until(
        lambda: (r := replicas(api)[0])["state"] == "failed" and r, 10, "the launch never failed"
    )
    assert failed["reason"].startswith("could not start the engine: vllm is not installed")
    error = wait_until(lambda: (s := status(api))["phase"] == "error" and s, 10, "never error")
    assert error["reason"].startswith("could not start the engine")
