"""Control-plane workload routes: the behaviours a client relies on."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.support import TestProject, create_project

SPEC = {
    "name": "Support Bot",
    "slug": "Support Bot",
    "backend": "vllm",
    "model_name": "meta-llama/Llama-3.1-8B-Instruct",
    "config": {"vllm_version": "0.6.3", "command": "vllm serve meta-llama/Llama-3.1-8B-Instruct"},
    "execution_policy": "autoscaling",
    "execution_policy_config": {
        "min_workers": 0,
        "max_workers": 5,
        "max_hourly_cost_usd": 5.0,
        "workers": {"source": "cloud", "cloud_pool": {"gpu_pool": ["NVIDIA A100-SXM4-80GB"]}},
    },
}
CONTRACT_FIELDS = {
    "id", "project_id", "name", "slug", "task_type", "backend", "model_name", "created_at",
    "updated_at", "description", "config", "worker_id", "gpu_resource_id", "execution_policy",
    "execution_policy_config", "project_slug", "workload_slug", "status",
}  # fmt: skip


@pytest.fixture(autouse=True)
def a100_in_the_gpu_catalog(admin: httpx.Client) -> None:
    """SPEC's gpu_pool names the A100, so the GPU catalog must know it: here by its price."""
    price = {"name": "NVIDIA A100-SXM4-80GB", "usd_per_hour": 1.89}
    assert admin.put("/api/admin/gpu-prices", json=price).status_code == 200


def _create(api: httpx.Client, project: TestProject, **change: Any) -> dict[str, Any]:
    response = api.post(f"/api/projects/{project.slug}/workloads", json={**SPEC, **change})
    assert response.status_code == 201, response.text
    return response.json()


def test_create_returns_every_contract_field_with_ids_and_canonical_slug(
    api: httpx.Client, project: TestProject
) -> None:
    created = _create(api, project)
    assert set(created) >= CONTRACT_FIELDS
    assert created["id"].startswith("wl_") and created["project_id"] == project.id
    assert created["slug"] == created["workload_slug"] == "support-bot"
    assert created["project_slug"] == project.slug
    assert created["task_type"] == "text2text"
    assert created["status"]["phase"] == "scheduling"
    assert created["created_at"].endswith("Z")


def test_stored_fields_are_echoed_verbatim(api: httpx.Client, project: TestProject) -> None:
    created = _create(api, project)
    fetched = api.get(f"/api/workloads/{created['id']}")
    raw = fetched.text
    # Key order and 5.0 (not 5) survive the round trip through Postgres.
    assert '"config":{"vllm_version":"0.6.3","command":' in raw.replace(" ", "")
    assert json.loads(raw)["execution_policy_config"]["max_hourly_cost_usd"] == 5.0
    assert '"max_hourly_cost_usd":5.0' in raw.replace(" ", "")
    for field in ("name", "model_name", "config", "execution_policy", "execution_policy_config"):
        assert fetched.json()[field] == ({**SPEC} | {"slug": "support-bot"})[field]
    assert created["description"] is None and created["worker_id"] is None


def test_list_by_slug_or_id_and_get_by_id_or_slug(api: httpx.Client, project: TestProject) -> None:
    created = _create(api, project)
    for ref in (project.slug, project.id):
        listed = api.get(f"/api/projects/{ref}/workloads").json()["workloads"]
        assert [w["id"] for w in listed] == [created["id"]]
    assert api.get("/api/workloads/support-bot").json()["id"] == created["id"]


def test_patch_changes_only_given_fields_and_bumps_generation(
    api: httpx.Client, project: TestProject
) -> None:
    created = _create(api, project)
    response = api.patch(f"/api/workloads/{created['id']}", json={"model_name": "other/model"})
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["model_name"] == "other/model"
    assert updated["generation"] == 2
    assert updated["config"] == created["config"]
    assert updated["updated_at"] > created["updated_at"]


def test_patch_with_unchanged_values_is_a_no_op(api: httpx.Client, project: TestProject) -> None:
    created = _create(api, project)
    again = api.patch(
        f"/api/workloads/{created['id']}", json={"name": SPEC["name"], "config": SPEC["config"]}
    ).json()
    assert again["generation"] == 1 and again["updated_at"] == created["updated_at"]


def test_patch_can_unpin_with_null(
    api: httpx.Client, admin: httpx.Client, project: TestProject
) -> None:
    worker = admin.post("/api/admin/workers", json={"project": project.slug}).json()
    created = _create(api, project, worker_id=worker["id"])
    assert created["worker_id"] == worker["id"]
    updated = api.patch(f"/api/workloads/{created['id']}", json={"worker_id": None}).json()
    assert updated["worker_id"] is None


def test_taken_slug_is_409_and_creates_nothing(api: httpx.Client, project: TestProject) -> None:
    _create(api, project)
    response = api.post(f"/api/projects/{project.slug}/workloads", json={**SPEC, "name": "Other"})
    assert (response.status_code, response.json()["code"]) == (409, "slug_conflict")
    assert len(api.get(f"/api/projects/{project.slug}/workloads").json()["workloads"]) == 1


def test_slug_defaults_to_the_canonical_name(api: httpx.Client, project: TestProject) -> None:
    body = {k: v for k, v in SPEC.items() if k != "slug"}
    body["name"] = "Gemma 4 26B (llama.cpp / GGUF) on R9700"
    created = api.post(f"/api/projects/{project.slug}/workloads", json=body).json()
    assert created["slug"] == "gemma-4-26b-llama-cpp-gguf-on-r9700"


def test_delete_is_204_then_404_and_frees_the_slug(api: httpx.Client, project: TestProject) -> None:
    created = _create(api, project)
    first = api.delete(f"/api/workloads/{created['id']}")
    assert first.status_code == 204 and first.content == b""
    assert api.delete(f"/api/workloads/{created['id']}").status_code == 404
    missing = api.get("/api/workloads/support-bot")
    assert missing.status_code == 404
    assert (
        missing.json()["message"] == f'workload "support-bot" not found in project "{project.slug}"'
    )
    assert _create(api, project)["id"] != created["id"]


def test_events_record_create_update_and_delete(api: httpx.Client, project: TestProject) -> None:
    created = _create(api, project)
    api.patch(f"/api/workloads/{created['id']}", json={"name": "Renamed"})
    events = api.get(f"/api/workloads/{created['id']}/events").json()["events"]
    events = [e for e in events if e["kind"] in ("created", "updated")]
    assert [e["kind"] for e in events] == ["created", "updated"]
    assert events[1]["data"] == {"fields": ["name"], "generation": 2}
    assert "ik_sdk_" in events[0]["message"] and project.sdk_token not in events[0]["message"]


def test_pinning_a_worker_of_another_project_is_400(
    api: httpx.Client, admin: httpx.Client, project: TestProject
) -> None:
    other = create_project(admin)["slug"]
    foreign = admin.post("/api/admin/workers", json={"project": other}).json()
    shared = admin.post("/api/admin/workers", json={}).json()
    response = api.post(
        f"/api/projects/{project.slug}/workloads", json={**SPEC, "worker_id": foreign["id"]}
    )
    assert response.status_code == 400
    assert "worker_id must belong to the same project" in response.json()["message"]
    unknown = api.post(
        f"/api/projects/{project.slug}/workloads", json={**SPEC, "worker_id": "wrk_x"}
    )
    assert (unknown.status_code, unknown.json()["field"]) == (400, "worker_id")
    assert _create(api, project, worker_id=shared["id"])["worker_id"] == shared["id"]
