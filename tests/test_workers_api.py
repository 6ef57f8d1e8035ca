"""Workers and GPU resources as users see them: real agents with simulated GPUs, real Manager."""

from __future__ import annotations

import time
from typing import Any

import httpx

from manager.settings import Settings
from tests.support import (
    AgentFactory,
    RunningManager,
    TestProject,
    bearer,
    create_live_key,
    create_project,
    wait_until,
)

A100 = "NVIDIA A100-SXM4-80GB"


def workers_seen(api: httpx.Client) -> list[dict[str, Any]]:
    response = api.get("/api/workers")
    assert response.status_code == 200, response.text
    return response.json()["workers"]


def own_worker(api: httpx.Client, project: TestProject) -> dict[str, Any] | None:
    return next((w for w in workers_seen(api) if w["project_id"] == project.id), None)


def wait_ready(api: httpx.Client, project: TestProject, gpu_count: int) -> dict[str, Any]:
    return wait_until(
        lambda: (
            (w := own_worker(api, project))
            and w["state"] == "ready"
            and len(w["gpus"]) == gpu_count
            and w
        ),
        15,
        f"the project's worker never became ready with {gpu_count} GPUs",
    )


def settings_of(manager: RunningManager) -> Settings:
    return manager.settings


def test_agent_with_simulated_gpus_is_listed_ready_with_its_gpus(
    start_bare_agent: AgentFactory,
    api: httpx.Client,
    project: TestProject,
) -> None:
    start_bare_agent(simulate_gpus=f"2x{A100}", runtime="process")
    worker = wait_ready(api, project, gpu_count=2)
    assert worker["id"].startswith("wrk_")
    assert worker["pool"] == "private" and worker["simulated"] is True
    assert worker["inventory_source"] == "simulated"
    assert worker["state_reason"] is None and worker["last_heartbeat_at"].endswith("Z")
    assert [g["name"] for g in worker["gpus"]] == [A100, A100]
    assert [g["index"] for g in worker["gpus"]] == [0, 1]
    for gpu in worker["gpus"]:
        assert gpu["id"].startswith("gpu_") and gpu["uuid"].startswith("GPU-")
        assert gpu["simulated"] is True and gpu["worker_id"] == worker["id"]
        assert gpu["memory_total_mb"] == 81920

    response = api.get("/api/gpu-resources")
    assert response.status_code == 200, response.text
    listed = [g for g in response.json()["gpu_resources"] if g["worker_id"] == worker["id"]]
    assert [g["id"] for g in listed] == [g["id"] for g in worker["gpus"]]
    assert {g["worker_name"] for g in listed} == {worker["name"]}
    assert all(g["name"] == A100 and g["simulated"] is True for g in listed)


def test_restarted_agent_keeps_its_gpu_ids(
    start_bare_agent: AgentFactory,
    api: httpx.Client,
    project: TestProject,
) -> None:
    first = start_bare_agent(simulate_gpus=f"2x{A100}")
    before = wait_ready(api, project, gpu_count=2)
    first.stop()
    start_bare_agent(
        simulate_gpus=f"2x{A100}", token=first.config.token, state_dir=first.config.state_dir
    )
    after = wait_until(
        lambda: (
            (w := own_worker(api, project))
            and w["last_heartbeat_at"] > before["last_heartbeat_at"]
            and w
        ),
        15,
        "the restarted agent never heartbeated",
    )
    assert after["id"] == before["id"] and after["state"] == "ready"
    assert [(g["id"], g["uuid"]) for g in after["gpus"]] == [
        (g["id"], g["uuid"]) for g in before["gpus"]
    ]


def test_two_simulated_workers_on_one_host_report_different_gpu_uuids(
    start_bare_agent: AgentFactory,
    api: httpx.Client,
    project: TestProject,
) -> None:
    start_bare_agent(simulate_gpus=f"1x{A100}")
    start_bare_agent(simulate_gpus=f"1x{A100}")
    mine = wait_until(
        lambda: (
            len(ws := [w for w in workers_seen(api) if w["project_id"] == project.id]) == 2
            and all(len(w["gpus"]) == 1 for w in ws)
            and ws
        ),
        15,
        "both workers never reported their GPU",
    )
    uuids = {w["gpus"][0]["uuid"] for w in mine}
    assert len(uuids) == 2, "GPU UUIDs identify one card; two simulated cards must not share one"


def test_sdk_token_sees_the_shared_pool_and_its_own_workers_only(
    admin: httpx.Client, api: httpx.Client, project: TestProject
) -> None:
    other = create_project(admin)["slug"]
    created = {
        name: admin.post("/api/admin/workers", json=body)
        for name, body in (
            ("mine", {"project": project.slug, "name": "mine"}),
            ("theirs", {"project": other, "name": "theirs"}),
            ("shared", {"name": "shared"}),
        )
    }
    assert all(r.status_code == 201 for r in created.values()), created
    ids = {name: r.json()["id"] for name, r in created.items()}
    assert created["mine"].json()["token"].startswith("ik_agent_")

    seen = {w["id"]: w for w in workers_seen(api)}
    assert ids["mine"] in seen and ids["shared"] in seen
    assert ids["theirs"] not in seen
    assert seen[ids["mine"]]["pool"] == "private" and seen[ids["shared"]]["pool"] == "shared"
    assert seen[ids["mine"]]["state"] == "registered"
    assert seen[ids["mine"]]["state_reason"] == "waiting for the agent's first heartbeat"
    assert "token" not in seen[ids["mine"]]

    everything = {w["id"] for w in workers_seen(admin)}
    assert set(ids.values()) <= everything


def test_sdk_token_does_not_see_gpus_of_another_projects_workers(
    manager: RunningManager, admin: httpx.Client, api: httpx.Client
) -> None:
    other = create_project(admin)["slug"]
    theirs = admin.post("/api/admin/workers", json={"project": other}).json()
    beat = httpx.post(
        f"{manager.url}/api/agent/heartbeat",
        headers=bearer(theirs["token"]),
        json={
            "inventory": {
                "source": "simulated",
                "gpus": [{"index": 0, "uuid": "GPU-theirs-0", "name": A100, "memory_total_mb": 1}],
            }
        },
    )
    assert beat.status_code == 200, beat.text
    theirs_gpus = admin.get("/api/gpu-resources").json()["gpu_resources"]
    assert any(g["worker_id"] == theirs["id"] for g in theirs_gpus)
    visible = api.get("/api/gpu-resources").json()["gpu_resources"]
    assert all(g["worker_id"] != theirs["id"] for g in visible)


def test_live_key_on_workers_routes_is_403_wrong_credential_type(
    manager: RunningManager, admin: httpx.Client, project: TestProject
) -> None:
    key = create_live_key(admin, project.slug)
    for path in ("/api/workers", "/api/gpu-resources"):
        response = httpx.get(f"{manager.url}{path}", headers=bearer(key))
        assert response.status_code == 403, response.text
        assert response.json()["code"] == "wrong_credential_type"
        assert response.json()["error"] == "wrong_credential_type"


def test_worker_that_stops_heartbeating_becomes_not_ready_then_lost(
    start_bare_agent: AgentFactory,
    manager: RunningManager,
    api: httpx.Client,
    project: TestProject,
) -> None:
    settings = settings_of(manager)
    agent = start_bare_agent(simulate_gpus=f"1x{A100}")
    wait_ready(api, project, gpu_count=1)
    agent.stop()
    stopped = time.monotonic()
    slack = settings.reconcile_interval_s + 2

    not_ready = wait_until(
        lambda: (w := own_worker(api, project)) and w["state"] != "ready" and w,
        settings.worker_not_ready_after_s + slack,
        "the silent worker never left ready",
        interval=0.1,
    )
    assert not_ready["state"] == "not_ready"
    assert not_ready["state_reason"].startswith("no heartbeat since ")

    lost = wait_until(
        lambda: (w := own_worker(api, project)) and w["state"] == "lost" and w,
        settings.worker_lost_after_s + slack,
        "the silent worker never became lost",
        interval=0.1,
    )
    # The last heartbeat was at most one interval before the agent stopped.
    earliest = settings.worker_lost_after_s - settings.heartbeat_interval_s - 0.5
    assert time.monotonic() - stopped >= earliest
    assert lost["state_reason"] == not_ready["state_reason"]  # since when, the same
    assert len(lost["gpus"]) == 1  # its GPUs stay listed; they come back with the agent
