"""Operators see what the platform does: both /metrics scraped after real traffic (real
llama.cpp) and parsed with prometheus-client's own parser."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
from inferencekey import ManagementClient
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.e2e.serving import CHAT, chat_spec, endpoint, wait_routable
from tests.e2e.test_fixed_policy_process_runtime import engine_pids
from tests.support import (
    AgentFactory,
    RunningManager,
    TestProject,
    bearer,
    create_live_key,
    free_port,
    wait_until,
)

L4_MEMORY_MB = 23034


def scrape(url: str, **headers: str) -> dict[str, list[Sample]]:
    response = httpx.get(url, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list[Sample]], metric: str, **labels: str) -> float:
    matching = [
        s.value
        for s in samples.get(metric, [])
        if all(s.labels.get(key) == wanted for key, wanted in labels.items())
    ]
    return sum(matching)


def test_manager_and_agent_metrics_after_real_traffic(
    manager: RunningManager,
    admin: httpx.Client,
    project: TestProject,
    mgmt: ManagementClient,
    start_agent: AgentFactory,
    gguf_model: Path,
) -> None:
    metrics_port = free_port()
    agent = start_agent(metrics_listen=("127.0.0.1", metrics_port), simulate_gpus="1xNVIDIA L4")
    mgmt.ensure(chat_spec(gguf_model))
    mgmt.wait_until_ready("chat", timeout=60, silent=True)
    key = create_live_key(admin, project.slug)
    with endpoint(manager, project, "chat", key) as client:
        wait_routable(client)
        for _ in range(3):
            assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
    bad = httpx.post(
        f"{manager.url}/endpoint/{project.slug}/chat/v1/chat/completions",
        json=CHAT,
        headers=bearer("ik_live_0badc0de_" + "0" * 64),
    )
    assert bad.status_code == 401

    assert httpx.get(f"{manager.url}/metrics").status_code == 401
    assert httpx.get(f"{manager.url}/metrics", headers=bearer(project.sdk_token)).status_code == 403
    seen = scrape(f"{manager.url}/metrics", **bearer(manager.admin_token or ""))
    mine = {"project": project.slug, "workload": "chat"}
    assert (
        value(
            seen,
            "inferencekey_gateway_requests_total",
            route="v1/chat/completions",
            status="200",
            **mine,
        )
        >= 3
    )
    # A refused key is counted without naming what it asked for.
    assert value(seen, "inferencekey_gateway_requests_total", project="-", status="401") >= 1
    assert value(seen, "inferencekey_gateway_request_duration_seconds_count", **mine) >= 3
    assert value(seen, "inferencekey_gateway_time_to_first_byte_seconds_count", **mine) >= 3
    assert value(seen, "inferencekey_gateway_in_flight_requests", **mine) == 0
    assert (
        value(
            seen,
            "inferencekey_api_requests_total",
            method="POST",
            route="/api/projects/{project}/workloads",
        )
        >= 1
    )
    assert (
        value(
            seen,
            "inferencekey_api_request_duration_seconds_count",
            method="POST",
            route="/api/projects/{project}/workloads",
        )
        >= 1
    )
    # The agent's heartbeats, timed in the Manager; its event loop, timed every 0.1 s.
    assert value(seen, "inferencekey_agent_heartbeat_duration_seconds_count") >= 1
    assert value(seen, "inferencekey_event_loop_lag_seconds_count") >= 1
    # The collection made once start-up is done, at least, is timed.
    assert value(seen, "inferencekey_gc_pause_seconds_count", generation="2") >= 1
    assert value(seen, "inferencekey_replicas", state="ready") >= 1
    assert value(seen, "inferencekey_workers", state="ready") >= 1
    worker_id = agent.agent.worker_id or ""
    (age,) = [
        s.value
        for s in seen["inferencekey_worker_heartbeat_age_seconds"]
        if s.labels["worker"] == worker_id
    ]
    assert 0 <= age < 30
    assert value(seen, "inferencekey_reconcile_pass_duration_seconds_count") >= 1

    agent_url = f"http://127.0.0.1:{metrics_port}/metrics"
    on_agent = scrape(agent_url)
    assert value(on_agent, "inferencekey_agent_proxy_request_duration_seconds_count", **mine) >= 3
    gpu = {"name": "NVIDIA L4", "source": "simulated"}
    assert value(on_agent, "inferencekey_agent_gpu_memory_total_bytes", **gpu) == (
        L4_MEMORY_MB * 1024 * 1024
    )
    assert value(on_agent, "inferencekey_agent_gpu_utilization_ratio", **gpu) >= 0

    (pid,) = engine_pids(agent.config.state_dir).values()
    os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: value(scrape(agent_url), "inferencekey_agent_engine_restarts_total", **mine) >= 1,
        30,
        "the engine's restart was never counted",
    )
