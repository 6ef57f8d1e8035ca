"""Pools, the GPU catalog and cost ceilings, end to end: a real Manager, real agents with
simulated GPUs (and CUDA versions), engines that are ready in a blink.

The module runs a Manager of its own, so that its shared pool holds only the workers these tests
start; each test names GPUs of its own, so a worker an earlier test stopped (still "ready" for a
few seconds) never matches a later test's pool.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ik_command import main
from manager.planning import TIMES
from tests.support import (
    AgentFactory,
    RunningManager,
    TestProject,
    bearer,
    create_project,
    own_manager,
    wait_until,
)

A100 = "NVIDIA A100-SXM4-80GB"
L4 = "NVIDIA L4"
H100 = "NVIDIA H100 80GB HBM3"


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningManager]:
    """A Manager of its own: the session's shared pool is every other test's too."""
    with own_manager(tmp_path_factory.mktemp("pools-manager")) as running:
        yield running


@pytest.fixture(scope="module")
def admin(manager: RunningManager) -> Iterator[httpx.Client]:
    assert manager.admin_token
    with httpx.Client(base_url=manager.url, headers=bearer(manager.admin_token)) as client:
        yield client


@pytest.fixture(autouse=True)
def delete_workloads_after(api: httpx.Client, project: TestProject) -> Iterator[None]:
    """A test's workloads go with it, so none of them wants a later test's workers."""
    yield
    for workload in api.get(f"/api/projects/{project.slug}/workloads").json()["workloads"]:
        api.delete(f"/api/workloads/{workload['id']}")


def set_price(admin: httpx.Client, name: str, usd_per_hour: float) -> dict[str, Any]:
    response = admin.put("/api/admin/gpu-prices", json={"name": name, "usd_per_hour": usd_per_hour})
    assert response.status_code == 200, response.text
    return dict(response.json())


def shared_agent(
    admin: httpx.Client, start: AgentFactory, fake_engine: str, gpus: str, cuda: str = "12.4"
) -> str:
    """A shared-pool worker with ``gpus`` on CUDA ``cuda``, once its agent reported them."""
    created = admin.post("/api/admin/workers", json={"name": f"shared-{secrets.token_hex(2)}"})
    assert created.status_code == 201, created.text
    start(
        token=created.json()["token"],
        simulate_gpus=gpus,
        simulate_cuda_version=cuda,
        binaries={"vllm": fake_engine},
    )
    return ready(admin, created.json()["id"])


def private_agent(
    admin: httpx.Client, start: AgentFactory, fake_engine: str, project: TestProject, gpus: str
) -> str:
    """A worker of ``project`` with ``gpus``, once its agent reported them."""
    created = admin.post("/api/admin/workers", json={"project": project.slug})
    assert created.status_code == 201, created.text
    start(token=created.json()["token"], simulate_gpus=gpus, binaries={"vllm": fake_engine})
    return ready(admin, created.json()["id"])


def ready(admin: httpx.Client, worker_id: str) -> str:
    def is_ready() -> bool:
        workers = admin.get("/api/workers").json()["workers"]
        return any(w["id"] == worker_id and w["state"] == "ready" and w["gpus"] for w in workers)

    wait_until(is_ready, 20, f"worker {worker_id} never became ready")
    return worker_id


def autoscaling(slug: str, replicas: int, **config: Any) -> dict[str, Any]:
    return {
        "name": slug,
        "slug": slug,
        "backend": "vllm",
        "model_name": "m",
        "config": {"command": "vllm serve m"},
        "execution_policy": "autoscaling",
        "execution_policy_config": {"min_workers": replicas, "max_workers": replicas, **config},
    }


def cloud_pool(*names: str, **more: Any) -> dict[str, Any]:
    return {"source": "cloud", "cloud_pool": {"gpu_pool": list(names), **more}}


def create(api: httpx.Client, project: TestProject, body: dict[str, Any]) -> httpx.Response:
    return api.post(f"/api/projects/{project.slug}/workloads", json=body)


def replicas(api: httpx.Client, slug: str, count: int) -> list[dict[str, Any]]:
    def placed() -> list[dict[str, Any]] | None:
        found = api.get(f"/api/workloads/{slug}/replicas").json()["replicas"]
        return found if len(found) >= count else None

    found: list[dict[str, Any]] = wait_until(placed, 15, f"{slug} never had {count} replica(s)")
    return found


def status(api: httpx.Client, slug: str) -> dict[str, Any]:
    return dict(api.get(f"/api/workloads/{slug}").json()["status"])


def test_gpu_pool_and_cuda_pins_place_only_where_allowed(
    admin: httpx.Client,
    api: httpx.Client,
    project: TestProject,
    start_bare_agent: AgentFactory,
    fake_llama_server: str,
) -> None:
    old_a100 = shared_agent(admin, start_bare_agent, fake_llama_server, f"2x{A100}", cuda="12.4")
    new_a100 = shared_agent(admin, start_bare_agent, fake_llama_server, f"1x{A100}", cuda="13.0")
    l4 = shared_agent(admin, start_bare_agent, fake_llama_server, f"1x{L4}")
    mine = private_agent(admin, start_bare_agent, fake_llama_server, project, f"2x{L4}")
    set_price(admin, A100, 1.89)
    set_price(admin, L4, 0.8)

    # The legacy root gpu_pool: the shared pool's L4, never the project's own L4 worker.
    legacy = autoscaling("legacy", 1, max_hourly_cost_usd=5.0, gpu_pool=[L4])
    assert create(api, project, legacy).status_code == 201, create(api, project, legacy).text
    [replica] = replicas(api, "legacy", 1)
    assert replica["worker_id"] == l4 != mine

    # A CUDA pin: the A100 on CUDA 13.0 only, though the 12.4 worker has two free.
    pinned = autoscaling(
        "cuda13",
        1,
        max_hourly_cost_usd=5.0,
        workers=cloud_pool(A100, allowed_cuda_versions=["13.0"]),
    )
    assert create(api, project, pinned).status_code == 201
    [replica] = replicas(api, "cuda13", 1)
    assert replica["worker_id"] == new_a100 != old_a100

    # A pin nothing in the pool has: unschedulable, naming the pool.
    nowhere = autoscaling(
        "cuda128",
        1,
        max_hourly_cost_usd=5.0,
        workers=cloud_pool(A100, allowed_cuda_versions=["12.8"]),
    )
    assert create(api, project, nowhere).status_code == 201
    unschedulable = wait_until(
        lambda: (s := status(api, "cuda128"))["phase"] == "unschedulable" and s, 10, "placed?"
    )
    assert unschedulable["reason"].startswith(
        f"no shared-pool worker has a GPU in gpu_pool [{A100}] with allowed_cuda_versions [12.8]"
    )
    assert api.get("/api/workloads/cuda128/replicas").json()["replicas"] == []

    # A GPU name the catalog has never seen: a 400 that lists the known names.
    imaginary = autoscaling(
        "imaginary", 1, max_hourly_cost_usd=5.0, gpu_pool=["Imaginary GPU 9000"]
    )
    refused = create(api, project, imaginary)
    assert refused.status_code == 400, refused.text
    body = refused.json()
    assert (body["code"], body["field"]) == (
        "invalid_execution_policy_config",
        "execution_policy_config.gpu_pool",
    )
    assert "'Imaginary GPU 9000' is not in the GPU catalog" in body["message"]
    assert f"known GPUs: '{A100}', '{L4}'" in body["message"]


def test_private_worker_ids_place_only_on_those_workers_and_must_be_the_projects(
    admin: httpx.Client,
    api: httpx.Client,
    project: TestProject,
    start_bare_agent: AgentFactory,
    fake_llama_server: str,
) -> None:
    private_agent(admin, start_bare_agent, fake_llama_server, project, f"1x{A100}")
    chosen = private_agent(admin, start_bare_agent, fake_llama_server, project, f"1x{A100}")
    private = {"source": "private", "private_worker_ids": [chosen]}
    assert create(api, project, autoscaling("mine", 1, workers=private)).status_code == 201
    [replica] = replicas(api, "mine", 1)
    assert replica["worker_id"] == chosen

    theirs = admin.post("/api/admin/workers", json={"project": create_project(admin)["slug"]})
    shared = admin.post("/api/admin/workers", json={})
    for worker_id, says in (
        ("wrk_nope", "'wrk_nope' is not a registered worker"),
        (theirs.json()["id"], f"worker {theirs.json()['id']} belongs to another project"),
        (shared.json()["id"], f"worker {shared.json()['id']} belongs to the shared pool"),
    ):
        workers = {"source": "private", "private_worker_ids": [chosen, worker_id]}
        refused = create(api, project, autoscaling("bad", 1, workers=workers))
        assert refused.status_code == 400, refused.text
        assert refused.json()["field"] == "execution_policy_config.workers.private_worker_ids"
        assert says in refused.json()["message"]
    # A PATCH is held to the same rule, and changes nothing.
    workers = {"source": "private", "private_worker_ids": ["wrk_nope"]}
    patched = api.patch(
        "/api/workloads/mine",
        json={"execution_policy_config": {"min_workers": 1, "max_workers": 1, "workers": workers}},
    )
    assert patched.status_code == 400, patched.text
    assert api.get("/api/workloads/mine").json()["execution_policy_config"]["workers"] == private


def test_gpu_catalog_lists_the_shared_pools_gpus_free_counts_and_prices(
    manager: RunningManager,
    admin: httpx.Client,
    api: httpx.Client,
    project: TestProject,
    start_bare_agent: AgentFactory,
    fake_llama_server: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = "NVIDIA Catalog Test GPU"
    shared_agent(admin, start_bare_agent, fake_llama_server, f"3x{name}:40960", cuda="12.6")
    private_agent(admin, start_bare_agent, fake_llama_server, project, "1xNVIDIA Private Only GPU")

    def run(*argv: str) -> tuple[int, str]:
        assert manager.admin_token
        code = main(
            ["admin", *argv, "--base-url", manager.url, "--admin-token", manager.admin_token]
        )
        return code, capsys.readouterr().out

    code, out = run("gpu-price", "set", name, "2.5")
    assert code == 0
    assert name in out and "2.50" in out and "3/3" in out

    catalog = api.get("/api/gpu-catalog")  # an SDK token reads it too
    assert catalog.status_code == 200, catalog.text
    entries = {e["name"]: e for e in catalog.json()["gpus"]}
    assert entries[name] == {
        "name": name,
        "memory_total_mb": 40960,
        "total": 3,
        "free": 3,
        "cuda_versions": ["12.6"],
        "usd_per_hour": 2.5,
    }
    assert "NVIDIA Private Only GPU" not in entries  # a project's own GPUs are not the pool's

    code, out = run("gpu", "catalog")
    assert code == 0
    assert out.splitlines()[0].split() == ["NAME", "MEMORY", "MB", "FREE", "CUDA", "USD/H"]
    assert any(line.startswith(name) and "2.50" in line for line in out.splitlines())
    code, out = run("gpu", "catalog", "--json")
    assert code == 0 and name in out


def test_a_cost_ceiling_stops_replicas_earlier_than_the_replica_count_asks(
    admin: httpx.Client,
    api: httpx.Client,
    project: TestProject,
    start_bare_agent: AgentFactory,
    fake_llama_server: str,
) -> None:
    shared_agent(admin, start_bare_agent, fake_llama_server, f"4x{H100}")
    set_price(admin, H100, 1.89)
    body = autoscaling(
        "capped", 3, max_hourly_cost_usd=5.0, workers=cloud_pool(H100, max_instances=3)
    )
    assert create(api, project, body).status_code == 201
    replicas(api, "capped", 2)
    ready = wait_until(
        lambda: (s := status(api, "capped"))["reason"].startswith("2/3") and s, 15, "never ready"
    )
    assert ready["phase"] == "ready"
    assert ready["reason"].startswith(
        "2/3 replicas ready; cannot place more: "
        f"capped by max_hourly_cost_usd 5.00: 2 {TIMES} 1.89/h"
    )
    assert len(api.get("/api/workloads/capped/replicas").json()["replicas"]) == 2
    events = api.get("/api/workloads/capped/events").json()["events"]
    assert any(
        f"capped by max_hourly_cost_usd 5.00: 2 {TIMES} 1.89/h" in e["message"]
        for e in events
        if e["kind"] == "phase"
    )


def test_an_unpriced_gpu_is_not_used_by_a_cost_limited_pool(
    admin: httpx.Client,
    api: httpx.Client,
    project: TestProject,
    start_bare_agent: AgentFactory,
    fake_llama_server: str,
) -> None:
    name = "NVIDIA Unpriced Test GPU"
    shared_agent(admin, start_bare_agent, fake_llama_server, f"1x{name}")
    body = autoscaling("unpriced", 1, max_hourly_cost_usd=5.0, gpu_pool=[name])
    assert create(api, project, body).status_code == 201
    unschedulable = wait_until(
        lambda: (s := status(api, "unpriced"))["phase"] == "unschedulable" and s, 10, "placed?"
    )
    assert (
        f"{name} unpriced: a pool with max_hourly_cost_usd uses priced GPUs only"
        in (unschedulable["reason"])
    )
