"""Autoscaling on demand with the real llama.cpp engine: a workload at zero wakes for a held
request, serves it, and goes back to zero when idle; a burst scales it up to max_workers and no
further. The module runs a Manager of its own with short delays (operator settings)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from inferencekey import ManagementClient

from manager.policies.autoscaling import IDLE_REASON
from tests.e2e.serving import CHAT, endpoint
from tests.support import (
    AgentFactory,
    RunningManager,
    TestProject,
    bearer,
    create_live_key,
    own_manager,
    wait_until,
)

IDLE_S = 4.0
WAKE_TIMEOUT_S = 20.0  # the engine boots in a few seconds; a worker with no agent never


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningManager]:
    with own_manager(
        tmp_path_factory.mktemp("autoscaling-manager"),
        heartbeat_interval_s=0.5,
        reconcile_interval_s=0.5,
        autoscale_scale_down_delay_s=2.0,
        autoscale_idle_s=IDLE_S,
        gateway_wake_timeout_s=WAKE_TIMEOUT_S,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def admin(manager: RunningManager) -> Iterator[httpx.Client]:
    assert manager.admin_token
    with httpx.Client(base_url=manager.url, headers=bearer(manager.admin_token)) as client:
        yield client


def private_worker(admin: httpx.Client, project: TestProject, start_agent: AgentFactory) -> str:
    created = admin.post("/api/admin/workers", json={"project": project.slug})
    assert created.status_code == 201, created.text
    start_agent(token=created.json()["token"])
    return str(created.json()["id"])


def spec(gguf: Path, slug: str, worker_id: str, **config: Any) -> dict[str, Any]:
    return {
        "name": slug,
        "slug": slug,
        "model_name": "gemma-3-270m",
        "backend": "llamacpp",
        "config": {"command": f"llama-server -m {gguf} -c 512"},
        "execution_policy": "autoscaling",
        "execution_policy_config": {
            "workers": {"source": "private", "private_worker_ids": [worker_id]},
            **config,
        },
    }


def running_replicas(api: httpx.Client, slug: str) -> list[dict[str, Any]]:
    replicas = api.get(f"/api/workloads/{slug}/replicas").json()["replicas"]
    return [r for r in replicas if r["desired_state"] == "run"]


def events(api: httpx.Client, slug: str, kind: str) -> list[str]:
    answer = api.get(f"/api/workloads/{slug}/events").json()["events"]
    return [e["message"] for e in answer if e["kind"] == kind]


def test_a_workload_at_zero_wakes_for_a_held_request_and_sleeps_again_when_idle(
    manager: RunningManager,
    admin: httpx.Client,
    project: TestProject,
    api: httpx.Client,
    mgmt: ManagementClient,
    start_agent: AgentFactory,
    gguf_model: Path,
) -> None:
    worker_id = private_worker(admin, project, start_agent)
    body = spec(gguf_model, "sleepy", worker_id, min_workers=0, max_workers=1)
    created = api.post(f"/api/projects/{project.slug}/workloads", json=body)
    assert created.status_code == 201, created.text

    # At zero it is idle, and ready to wake as far as a waiting client is concerned.
    status = wait_until(
        lambda: (
            (s := api.get("/api/workloads/sleepy").json()["status"])["phase"] == "stopped" and s
        ),
        10,
        "the workload never settled at zero",
    )
    assert status["reason"] == IDLE_REASON
    seen = []
    mgmt.wait_until_ready("sleepy", timeout=10, on_progress=seen.append, silent=True)
    assert seen[-1].phase == "ready" and "ready to wake" in seen[-1].message
    assert running_replicas(api, "sleepy") == []

    key = create_live_key(admin, project.slug)
    with endpoint(manager, project, "sleepy", key) as client:
        client.timeout = httpx.Timeout(90)
        started = time.monotonic()
        answer = client.post("/v1/chat/completions", json=CHAT)
        woke_in = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] is not None
    assert any(m.startswith("scaled 0 → 1: ") for m in events(api, "sleepy", "scaled"))
    print(f"woken and served in {woke_in:.1f}s")

    # Idle for the idle period: back to zero, with the reason in its event.
    wait_until(
        lambda: running_replicas(api, "sleepy") == [],
        IDLE_S + 20,
        "the idle workload never went back to zero",
    )
    assert any("→ 0: no request for 4s" in m for m in events(api, "sleepy", "scaled"))

    # A stream wakes it the same way; its client sees only the engine's bytes.
    with endpoint(manager, project, "sleepy", key) as client:
        client.timeout = httpx.Timeout(90)
        streamed = {**CHAT, "stream": True}
        with client.stream("POST", "/v1/chat/completions", json=streamed) as stream:
            assert stream.status_code == 200
            lines = [line for line in stream.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and len(lines) > 2


def test_a_burst_scales_up_to_max_workers_and_no_further(
    manager: RunningManager,
    admin: httpx.Client,
    project: TestProject,
    api: httpx.Client,
    mgmt: ManagementClient,
    start_agent: AgentFactory,
    gguf_model: Path,
) -> None:
    worker_id = private_worker(admin, project, start_agent)
    body = spec(gguf_model, "bursty", worker_id, min_workers=1, max_workers=2, target_in_flight=1)
    assert api.post(f"/api/projects/{project.slug}/workloads", json=body).status_code == 201
    mgmt.wait_until_ready("bursty", timeout=60, silent=True)
    key = create_live_key(admin, project.slug)

    stop = threading.Event()
    answers: list[int] = []
    most: list[int] = []

    def client_loop() -> None:
        with endpoint(manager, project, "bursty", key) as client:
            client.timeout = httpx.Timeout(120)
            while not stop.is_set():
                long_one = {**CHAT, "max_tokens": 48}
                answers.append(client.post("/v1/chat/completions", json=long_one).status_code)

    clients = [threading.Thread(target=client_loop) for _ in range(6)]
    for thread in clients:
        thread.start()
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            counts = api.get("/api/workloads/bursty").json()["status"]
            most.append(max(counts["desired_replicas"], len(running_replicas(api, "bursty"))))
            if counts["ready_replicas"] == 2:
                break
            time.sleep(0.5)
        for _ in range(6):  # and it stays there while the burst goes on
            counts = api.get("/api/workloads/bursty").json()["status"]
            most.append(max(counts["desired_replicas"], len(running_replicas(api, "bursty"))))
            time.sleep(0.5)
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=120)
    assert max(most) == 2, most
    # llama.cpp's own load figures (its /metrics, which the agent turns on) reach the API.
    loads = [r.get("engine_load") for r in running_replicas(api, "bursty")]
    assert loads and all(load is not None and "running" in load for load in loads), loads
    assert counts["ready_replicas"] == 2
    assert answers and set(answers) == {200}
    assert any(m.startswith("scaled 1 → 2: ") for m in events(api, "bursty", "scaled"))


def test_a_held_request_that_no_replica_comes_for_is_503_with_the_reason_after_the_timeout(
    manager: RunningManager, admin: httpx.Client, project: TestProject, api: httpx.Client
) -> None:
    # A worker whose agent never runs: the workload wakes, but no replica ever becomes ready.
    created = admin.post("/api/admin/workers", json={"project": project.slug})
    assert created.status_code == 201, created.text
    body = spec(Path("/models/none.gguf"), "stranded", created.json()["id"], max_workers=1)
    assert api.post(f"/api/projects/{project.slug}/workloads", json=body).status_code == 201
    key = create_live_key(admin, project.slug)
    with endpoint(manager, project, "stranded", key) as client:
        client.timeout = httpx.Timeout(WAKE_TIMEOUT_S + 30)
        started = time.monotonic()
        answer = client.post("/v1/chat/completions", json=CHAT)
        waited = time.monotonic() - started
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "5"
    problem = answer.json()
    assert problem["code"] == "no_ready_replica"
    assert f"after waiting {WAKE_TIMEOUT_S:g}s for it to wake" in problem["message"]
    assert problem["phase"] and problem["reason"]
    assert WAKE_TIMEOUT_S - 1 <= waited < WAKE_TIMEOUT_S + 10
    # It was woken: the held request asked for a replica.
    assert any(m.startswith("scaled 0 → 1: ") for m in events(api, "stranded", "scaled"))


def test_a_queued_job_wakes_a_workload_at_zero_and_is_run(
    manager: RunningManager,
    admin: httpx.Client,
    project: TestProject,
    api: httpx.Client,
    start_agent: AgentFactory,
    gguf_model: Path,
) -> None:
    worker_id = private_worker(admin, project, start_agent)
    body = spec(gguf_model, "batchy", worker_id, min_workers=0, max_workers=1)
    assert api.post(f"/api/projects/{project.slug}/workloads", json=body).status_code == 201
    key = create_live_key(admin, project.slug)
    with endpoint(manager, project, "batchy", key) as client:
        submitted = client.post("/jobs", json={"kind": "chat", "body": CHAT})
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["job_id"]

        def finished() -> dict[str, Any] | None:
            job = client.get(f"/jobs/{job_id}").json()
            return job if job["status"] in ("succeeded", "failed") else None

        job = wait_until(finished, 60, "the job never ran", interval=0.3)
    assert job["status"] == "succeeded", job
    # The queued job was the demand that woke it.
    scaled = events(api, "batchy", "scaled")
    assert any(m.startswith("scaled 0 → 1: 1 in flight incl. 1 queued job(s)") for m in scaled)
