"""Every validation rule is a 400 naming the field, and changes nothing."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.support import TestProject

BASE = {"name": "Bot", "slug": "bot", "backend": "vllm", "model_name": "m"}
LIVE_TOKEN = "ik_live_0123abcd_" + "ab" * 32

CREATE_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("blank name", {"name": "  "}, "validation_error", "name"),
    ("blank model", {"model_name": ""}, "validation_error", "model_name"),
    ("blank slug", {"slug": " "}, "validation_error", "slug"),
    ("slug of symbols", {"slug": "---"}, "validation_error", "slug"),
    ("unknown backend", {"backend": "tgi"}, "unknown_backend", "backend"),
    ("custom backend not published", {"backend": "my-forecaster"}, "unknown_backend", "backend"),
    ("unknown task type", {"task_type": "text2smell"}, "validation_error", "task_type"),
    (
        "task type does not allow backend",
        {"task_type": "text2image", "backend": "llamacpp"},
        "backend_not_allowed",
        "backend",
    ),
    (
        "forecast has no built-in backend",
        {"task_type": "forecast"},
        "backend_not_allowed",
        "backend",
    ),
    ("provider", {"provider": "aws"}, "placement_field_not_allowed", "provider"),
    ("min_vram_gb", {"min_vram_gb": 24}, "placement_field_not_allowed", "min_vram_gb"),
    ("unknown field", {"replicas": 2}, "validation_error", "replicas"),
    ("secret as name", {"name": LIVE_TOKEN}, "secret_in_spec", "name"),
    ("sdk prefix in description", {"description": "ik_sdk_x"}, "secret_in_spec", "description"),
    (
        "whole key inside the command",
        {"config": {"command": f"vllm serve m --api-key {LIVE_TOKEN}"}},
        "secret_in_spec",
        "config.command",
    ),
    ("name of wrong type", {"name": 7}, "validation_error", "name"),
    ("config of wrong type", {"config": "vllm serve m"}, "validation_error", "config"),
    (
        "unknown config key",
        {"config": {"command": "x", "env": {}}},
        "validation_error",
        "config.env",
    ),
    (
        "vllm_version on llamacpp",
        {"backend": "llamacpp", "config": {"command": "llama-server", "vllm_version": "0.6.3"}},
        "validation_error",
        "config.vllm_version",
    ),
    ("unknown policy", {"execution_policy": "sometimes"}, "validation_error", "execution_policy"),
    (
        "fixed with negative replicas",
        {"execution_policy": "fixed", "execution_policy_config": {"replicas": -1}},
        "invalid_execution_policy_config",
        "execution_policy_config.replicas",
    ),
    (
        "fixed with string replicas",
        {"execution_policy_config": {"replicas": "2"}},
        "invalid_execution_policy_config",
        "execution_policy_config.replicas",
    ),
    (
        "fixed with unknown key",
        {"execution_policy": "fixed", "execution_policy_config": {"replica": 2}},
        "invalid_execution_policy_config",
        "execution_policy_config.replica",
    ),
    (
        "scheduled with neither",
        {"execution_policy": "scheduled"},
        "invalid_execution_policy_config",
        "execution_policy_config",
    ),
    (
        "scheduled with both",
        {
            "execution_policy": "scheduled",
            "execution_policy_config": {"cron": "0 2 * * *", "window": "Mon 08:00-09:00 UTC"},
        },
        "invalid_execution_policy_config",
        "execution_policy_config",
    ),
    (
        "scheduled with a 6-field cron",
        {"execution_policy": "scheduled", "execution_policy_config": {"cron": "0 0 2 * * *"}},
        "invalid_execution_policy_config",
        "execution_policy_config.cron",
    ),
    (
        "scheduled with a bad cron",
        {"execution_policy": "scheduled", "execution_policy_config": {"cron": "61 2 * * *"}},
        "invalid_execution_policy_config",
        "execution_policy_config.cron",
    ),
    (
        "window with an unknown time zone",
        {
            "execution_policy": "scheduled",
            "execution_policy_config": {"window": "Mon-Fri 08:00-20:00 Europe/Atlantis"},
        },
        "invalid_execution_policy_config",
        "execution_policy_config.window",
    ),
    (
        "window with a bad day",
        {
            "execution_policy": "scheduled",
            "execution_policy_config": {"window": "Mon-Fry 08:00-20:00 Europe/Madrid"},
        },
        "invalid_execution_policy_config",
        "execution_policy_config.window",
    ),
    (
        "window with a bad hour",
        {
            "execution_policy": "scheduled",
            "execution_policy_config": {"window": "Mon-Fri 08:00-25:00 Europe/Madrid"},
        },
        "invalid_execution_policy_config",
        "execution_policy_config.window",
    ),
    (
        "window of no time at all",
        {
            "execution_policy": "scheduled",
            "execution_policy_config": {"window": "Mon-Fri 08:00-08:00 Europe/Madrid"},
        },
        "invalid_execution_policy_config",
        "execution_policy_config.window",
    ),
    (
        "cron that never fires",
        {"execution_policy": "scheduled", "execution_policy_config": {"cron": "0 0 30 2 *"}},
        "invalid_execution_policy_config",
        "execution_policy_config.cron",
    ),
    (
        "scheduled with zero replicas",
        {
            "execution_policy": "scheduled",
            "execution_policy_config": {"cron": "0 2 * * *", "replicas": 0},
        },
        "invalid_execution_policy_config",
        "execution_policy_config.replicas",
    ),
    (
        "cron with a zero duration",
        {
            "execution_policy": "scheduled",
            "execution_policy_config": {"cron": "0 2 * * *", "duration_minutes": 0},
        },
        "invalid_execution_policy_config",
        "execution_policy_config.duration_minutes",
    ),
    (
        "cron with an unknown time zone",
        {
            "execution_policy": "scheduled",
            "execution_policy_config": {"cron": "0 2 * * *", "timezone": "Europe/Atlantis"},
        },
        "invalid_execution_policy_config",
        "execution_policy_config.timezone",
    ),
    (
        "window with a timezone key",
        {
            "execution_policy": "scheduled",
            "execution_policy_config": {"window": "Mon 08:00-09:00 UTC", "timezone": "UTC"},
        },
        "invalid_execution_policy_config",
        "execution_policy_config.timezone",
    ),
    (
        "autoscaling min above max",
        {
            "execution_policy": "autoscaling",
            "execution_policy_config": {"min_workers": 3, "max_workers": 1},
        },
        "invalid_execution_policy_config",
        "execution_policy_config.min_workers",
    ),
    (
        "autoscaling replica names",
        {"execution_policy": "autoscaling", "execution_policy_config": {"min_replicas": 0}},
        "invalid_execution_policy_config",
        "execution_policy_config.min_replicas",
    ),
    (
        "cloud without cost ceiling",
        {
            "execution_policy": "autoscaling",
            "execution_policy_config": {
                "min_workers": 0,
                "max_workers": 2,
                "workers": {
                    "source": "cloud",
                    "cloud_pool": {"gpu_pool": ["NVIDIA A100-SXM4-80GB"]},
                },
            },
        },
        "invalid_execution_policy_config",
        "execution_policy_config.max_hourly_cost_usd",
    ),
    (
        "cloud with zero cost ceiling",
        {
            "execution_policy": "autoscaling",
            "execution_policy_config": {
                "max_hourly_cost_usd": 0,
                "workers": {
                    "source": "cloud",
                    "cloud_pool": {"gpu_pool": ["NVIDIA A100-SXM4-80GB"]},
                },
            },
        },
        "invalid_execution_policy_config",
        "execution_policy_config.max_hourly_cost_usd",
    ),
    (
        "cloud with empty gpu_pool",
        {
            "execution_policy": "autoscaling",
            "execution_policy_config": {
                "max_hourly_cost_usd": 5.0,
                "workers": {"source": "cloud", "cloud_pool": {"gpu_pool": []}},
            },
        },
        "invalid_execution_policy_config",
        "execution_policy_config.workers.cloud_pool.gpu_pool",
    ),
    (
        "legacy root gpu_pool with a CUDA pin",
        {
            "execution_policy": "autoscaling",
            "execution_policy_config": {
                "max_hourly_cost_usd": 5.0,
                "gpu_pool": ["NVIDIA A100-SXM4-80GB"],
                "allowed_cuda_versions": ["13.0"],
            },
        },
        "invalid_execution_policy_config",
        "execution_policy_config.allowed_cuda_versions",
    ),
    (
        "private without worker ids",
        {
            "execution_policy": "autoscaling",
            "execution_policy_config": {
                "min_workers": 1,
                "max_workers": 4,
                "workers": {"source": "private"},
            },
        },
        "invalid_execution_policy_config",
        "execution_policy_config.workers.private_worker_ids",
    ),
    (
        "autoscaling without a pool",
        {"execution_policy": "autoscaling", "execution_policy_config": {"min_workers": 1}},
        "invalid_execution_policy_config",
        "execution_policy_config.workers",
    ),
    (
        "private worker that does not exist",
        {
            "execution_policy": "autoscaling",
            "execution_policy_config": {
                "workers": {"source": "private", "private_worker_ids": ["wrk_nope"]},
            },
        },
        "invalid_execution_policy_config",
        "execution_policy_config.workers.private_worker_ids",
    ),
    (
        "gpu_pool name the GPU catalog has never seen",
        {
            "execution_policy": "autoscaling",
            "execution_policy_config": {
                "max_hourly_cost_usd": 5.0,
                "workers": {"source": "cloud", "cloud_pool": {"gpu_pool": ["Imaginary GPU 9000"]}},
            },
        },
        "invalid_execution_policy_config",
        "execution_policy_config.workers.cloud_pool.gpu_pool",
    ),
    (
        "unknown worker source",
        {
            "execution_policy": "autoscaling",
            "execution_policy_config": {"workers": {"source": "moon"}},
        },
        "invalid_execution_policy_config",
        "execution_policy_config.workers.source",
    ),
]


def _workloads(api: httpx.Client, project: TestProject) -> list[dict[str, Any]]:
    return api.get(f"/api/projects/{project.slug}/workloads").json()["workloads"]


@pytest.mark.parametrize(
    ("change", "code", "field"),
    [case[1:] for case in CREATE_CASES],
    ids=[case[0] for case in CREATE_CASES],
)
def test_invalid_create_is_400_naming_the_field_and_creates_nothing(
    api: httpx.Client, project: TestProject, change: dict[str, Any], code: str, field: str
) -> None:
    response = api.post(f"/api/projects/{project.slug}/workloads", json={**BASE, **change})
    assert response.status_code == 400, response.text
    body = response.json()
    assert (body["code"], body["field"]) == (code, field)
    assert field.split(".")[-1] in body["message"]
    assert body["error"] == body["message"]
    assert _workloads(api, project) == []


PRIVATE_WORKER = "wrk_7Yc2"  # replaced by a worker of the test's project
VALID_POLICIES: list[tuple[str | None, dict[str, Any] | None]] = [
    (None, None),
    ("fixed", {"replicas": 0}),
    ("scheduled", {"cron": "0 2 * * *"}),
    ("scheduled", {"window": "Mon-Fri 08:00-20:00 Europe/Madrid"}),
    ("scheduled", {"window": "Sat,Sun 22:00-06:00 UTC"}),
    ("scheduled", {"window": "Mon-Fri 00:00-24:00 America/New_York", "replicas": 2}),
    (
        "scheduled",
        {
            "cron": "30 6 * * 1-5",
            "duration_minutes": 90,
            "timezone": "Europe/Madrid",
            "replicas": 2,
        },
    ),
    (
        "autoscaling",
        {
            "min_workers": 0,
            "max_workers": 5,
            "max_hourly_cost_usd": 5.0,
            "workers": {
                "source": "cloud",
                "cloud_pool": {
                    "gpu_pool": ["NVIDIA A100-SXM4-80GB"],
                    "max_hourly_cost_usd": 5.0,
                    "max_instances": 5,
                    "allowed_cuda_versions": ["13.0"],
                },
            },
        },
    ),
    (
        "autoscaling",
        {
            "min_workers": 1,
            "max_workers": 4,
            "workers": {"source": "private", "private_worker_ids": [PRIVATE_WORKER]},
        },
    ),
    ("autoscaling", {"max_hourly_cost_usd": 2.5, "gpu_pool": ["NVIDIA L4"], "max_workers": 2}),
]


@pytest.mark.parametrize(("policy", "config"), VALID_POLICIES)
def test_documented_policy_shapes_are_accepted_and_echoed_verbatim(
    api: httpx.Client,
    admin: httpx.Client,
    project: TestProject,
    policy: str | None,
    config: dict[str, Any] | None,
) -> None:
    # The pool names what exists: GPUs the catalog knows (priced here), the project's worker.
    for name in ("NVIDIA A100-SXM4-80GB", "NVIDIA L4"):
        price = {"name": name, "usd_per_hour": 1.0}
        assert admin.put("/api/admin/gpu-prices", json=price).status_code == 200
    worker = admin.post("/api/admin/workers", json={"project": project.slug}).json()
    config = json.loads(json.dumps(config).replace(PRIVATE_WORKER, worker["id"]))
    body = {**BASE, "execution_policy": policy, "execution_policy_config": config}
    response = api.post(f"/api/projects/{project.slug}/workloads", json=body)
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["execution_policy"] == policy
    assert created["execution_policy_config"] == config


def test_patch_validates_the_merged_result_and_changes_nothing_when_invalid(
    api: httpx.Client, project: TestProject
) -> None:
    created = api.post(f"/api/projects/{project.slug}/workloads", json=BASE).json()
    # Switching to scheduled without a config: validated against the (empty) stored config.
    response = api.patch(f"/api/workloads/{created['id']}", json={"execution_policy": "scheduled"})
    assert response.status_code == 400
    assert response.json()["field"] == "execution_policy_config"
    # A PATCH that only changes the backend to one the task type does not allow.
    response = api.patch(
        f"/api/workloads/{created['id']}", json={"backend": "vllm-omni", "name": "ok"}
    )
    assert response.status_code == 200
    embedding = api.post(
        f"/api/projects/{project.slug}/workloads",
        json={**BASE, "slug": "emb", "task_type": "embedding", "backend": "llamacpp"},
    ).json()
    response = api.patch(f"/api/workloads/{embedding['id']}", json={"backend": "vllm-omni"})
    assert response.status_code == 400
    assert response.json()["code"] == "backend_not_allowed"
    after = api.get(f"/api/workloads/{embedding['id']}").json()
    # The reconciler may have updated the status meanwhile; the spec is what must not change.
    assert {k: v for k, v in after.items() if k != "status"} == {
        k: v for k, v in embedding.items() if k != "status"
    }


def test_task_type_cannot_be_patched(api: httpx.Client, project: TestProject) -> None:
    created = api.post(f"/api/projects/{project.slug}/workloads", json=BASE).json()
    response = api.patch(f"/api/workloads/{created['id']}", json={"task_type": "embedding"})
    assert response.status_code == 400
    assert (response.json()["code"], response.json()["field"]) == (
        "field_not_patchable",
        "task_type",
    )
    assert api.get(f"/api/workloads/{created['id']}").json()["task_type"] == "text2text"


@pytest.mark.parametrize(
    ("content", "headers", "status", "code"),
    [
        (b"{not json", {"content-type": "application/json"}, 400, "malformed_json"),
        (b"[1, 2]", {"content-type": "application/json"}, 400, "invalid_request"),
        (b"", {"content-type": "application/json"}, 400, "invalid_request"),
        (
            b'{"name": "' + b"x" * 2_000_000 + b'"}',
            {"content-type": "application/json"},
            413,
            "body_too_large",
        ),
    ],
    ids=["malformed", "array", "empty", "huge"],
)
def test_broken_bodies_are_clean_4xx_in_the_error_shape(
    api: httpx.Client,
    project: TestProject,
    content: bytes,
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    response = api.post(f"/api/projects/{project.slug}/workloads", content=content, headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert _workloads(api, project) == []


def test_unknown_route_and_method_are_json_errors(api: httpx.Client) -> None:
    missing = api.get("/api/nothing-here")
    assert (missing.status_code, missing.json()["code"]) == (404, "route_not_found")
    wrong_method = api.put("/api/workloads/x", json={})
    assert (wrong_method.status_code, wrong_method.json()["code"]) == (405, "method_not_allowed")


@pytest.mark.parametrize(
    ("backend", "command", "fragment"),
    [
        ("llamacpp", "python serve.py -m x.gguf", "must start with"),
        ("vllm", "vllm serve m --tensor-parallel-size zero", "positive integer"),
        ("vllm", "vllm serve 'unclosed", "cannot parse"),
    ],
)
def test_a_command_the_engine_cannot_run_is_400_on_config_command(
    api: httpx.Client, project: TestProject, backend: str, command: str, fragment: str
) -> None:
    body = {**BASE, "backend": backend, "config": {"command": command}}
    response = api.post(f"/api/projects/{project.slug}/workloads", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == "config.command"
    assert fragment in response.json()["message"]
