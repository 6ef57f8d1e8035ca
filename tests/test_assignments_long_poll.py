"""The agent protocol's long-poll: a change to a worker's desired set reaches its agent at once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from inferencekey import Backend, ManagementClient, WorkloadSpec

from tests.support import RunningManager, TestProject, bearer, own_manager

CPU_ONLY = {"source": "none", "hostname": "cpu-box", "gpus": []}


@pytest.fixture
def agent_http(
    manager: RunningManager, admin: httpx.Client, project: TestProject
) -> Iterator[httpx.Client]:
    """An HTTP client holding the ik_agent_ token of a new worker private to the project."""
    created = admin.post("/api/admin/workers", json={"project": project.slug, "name": "cpu-box"})
    assert created.status_code == 201, created.text
    with httpx.Client(
        base_url=manager.url, headers=bearer(created.json()["token"]), timeout=40
    ) as client:
        yield client


def heartbeat(agent_http: httpx.Client) -> dict[str, Any]:
    body = {"agent_version": "test", "address": "http://127.0.0.1:9", "inventory": CPU_ONLY}
    response = agent_http.post("/api/agent/heartbeat", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def long_poll(agent_http: httpx.Client, version: str, wait: float) -> tuple[dict[str, Any], float]:
    """The answer of GET /api/agent/assignments and the monotonic time it arrived."""
    response = agent_http.get("/api/agent/assignments", params={"version": version, "wait": wait})
    arrived = time.monotonic()
    assert response.status_code == 200, response.text
    return response.json(), arrived


def test_new_replica_reaches_a_waiting_agent_within_a_second(
    manager: RunningManager, agent_http: httpx.Client, project: TestProject
) -> None:
    current = heartbeat(agent_http)
    assert current["replicas"] == []
    with ThreadPoolExecutor(1) as pool:
        waiting: Future[tuple[dict[str, Any], float]] = pool.submit(
            long_poll, agent_http, current["version"], 20
        )
        time.sleep(0.5)
        assert not waiting.done(), "the long-poll answered although nothing changed"

        created = time.monotonic()
        with ManagementClient(
            base_url=manager.url, sdk_token=project.sdk_token, project=project.slug
        ) as mgmt:
            mgmt.ensure(
                WorkloadSpec(
                    name="Tiny",
                    slug="tiny",
                    model="x",
                    backend=Backend.LLAMACPP,
                    command="llama-server -m /models/x.gguf",
                    execution_policy="fixed",
                    execution_policy_config={"replicas": 1},
                )
            )
        answer, arrived = waiting.result(timeout=20)

    assert arrived - created < 1.5, f"took {arrived - created:.2f}s"
    assert answer["version"] != current["version"]
    assert answer["worker_id"] == current["worker_id"]
    [replica] = answer["replicas"]
    assert replica["id"].startswith("rep_")
    assert (replica["project_slug"], replica["workload_slug"]) == (project.slug, "tiny")
    assert replica["backend"] == "llamacpp"
    assert replica["command"] == "llama-server -m /models/x.gguf"
    assert replica["gpu_uuids"] == []  # a CPU-only worker runs llama.cpp on its CPU


def test_long_poll_with_nothing_changing_answers_the_same_version_after_wait(
    agent_http: httpx.Client,
) -> None:
    current = heartbeat(agent_http)
    started = time.monotonic()
    answer, arrived = long_poll(agent_http, current["version"], wait=2)
    assert 1.8 <= arrived - started < 4
    assert answer["version"] == current["version"]
    assert answer["replicas"] == []


def test_long_poll_answers_at_once_when_the_version_is_stale(agent_http: httpx.Client) -> None:
    current = heartbeat(agent_http)
    started = time.monotonic()
    answer, arrived = long_poll(agent_http, "stale-version", wait=20)
    assert arrived - started < 1
    assert answer["version"] == current["version"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/agent/heartbeat", {"inventory": CPU_ONLY}),
        ("POST", "/api/agent/heartbeat", {}),
        ("GET", "/api/agent/assignments?version=&wait=0", None),
    ],
)
def test_sdk_token_on_the_agent_protocol_is_403_wrong_credential_type(
    manager: RunningManager,
    project: TestProject,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    response = httpx.request(
        method, f"{manager.url}{path}", json=body, headers=bearer(project.sdk_token)
    )
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "wrong_credential_type"
    assert "ik_agent_" in response.json()["message"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/agent/heartbeat", {"inventory": CPU_ONLY}),
        ("POST", "/api/agent/heartbeat", {}),
        ("GET", "/api/agent/assignments?version=&wait=0", None),
    ],
)
def test_agent_protocol_without_a_token_is_401(
    manager: RunningManager, method: str, path: str, body: dict[str, Any] | None
) -> None:
    response = httpx.request(method, f"{manager.url}{path}", json=body)
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "invalid_credentials"


def test_a_manager_shutting_down_answers_its_waiting_long_polls_at_once(tmp_path: Path) -> None:
    """A waiting agent must not hold a Manager's shutdown for its grace period (5 s here)."""
    with own_manager(tmp_path) as own:
        with httpx.Client(base_url=own.url, headers=bearer(own.admin_token)) as admin:
            worker = admin.post("/api/admin/workers", json={"name": "waiting"}).json()
        with (
            httpx.Client(base_url=own.url, headers=bearer(worker["token"]), timeout=40) as agent,
            ThreadPoolExecutor(1) as pool,
        ):
            current = heartbeat(agent)
            waiting = pool.submit(long_poll, agent, current["version"], 25)
            time.sleep(0.5)
            assert not waiting.done()
            started = time.monotonic()
            own.stop()
            stopped_in = time.monotonic() - started
            answer, _ = waiting.result(timeout=5)
    assert answer["version"] == current["version"]
    assert stopped_in < 3, f"the shutdown waited {stopped_in:.1f} s for the long-poll"
