"""End-to-end fixtures: real agents running the real llama.cpp server with a small GGUF."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from inferencekey import ManagementClient

from tests.support import RunningAgent, RunningManager, TestProject, wait_until
from worker_agent.config import AgentConfig

AgentFactory = Callable[..., RunningAgent]


@pytest.fixture
def mgmt(manager: RunningManager, project: TestProject) -> Iterator[ManagementClient]:
    with ManagementClient(
        base_url=manager.url, sdk_token=project.sdk_token, project=project.slug
    ) as client:
        yield client


@pytest.fixture
def start_agent(
    manager: RunningManager,
    admin: httpx.Client,
    project: TestProject,
    llama_server: str,
    gguf_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[AgentFactory]:
    """Registers a worker private to the test's project and runs an agent for it."""
    running: list[RunningAgent] = []

    def start(
        *,
        runtime: str = "process",
        token: str | None = None,
        state_dir: Path | None = None,
        **extra: Any,
    ) -> RunningAgent:
        if token is None:
            created = admin.post(
                "/api/admin/workers",
                json={"project": project.slug, "name": f"cpu-{secrets.token_hex(2)}"},
            )
            assert created.status_code == 201, created.text
            token = created.json()["token"]
        config = AgentConfig(
            manager_url=manager.url,
            token=token,
            runtime=runtime,
            state_dir=state_dir or tmp_path_factory.mktemp("agent"),
            model_dir=gguf_model.parent,
            binaries={"llama-server": llama_server},
            advertise_url="http://127.0.0.1:9",
            restart_backoff_initial_s=0.5,
            **extra,
        )
        agent = RunningAgent(config)
        running.append(agent)
        return agent

    yield start
    for agent in running:
        if agent.thread.is_alive():
            agent.stop()


def replicas(api: httpx.Client, slug: str) -> list[dict[str, Any]]:
    response = api.get(f"/api/workloads/{slug}/replicas")
    assert response.status_code == 200, response.text
    return response.json()["replicas"]


def status(api: httpx.Client, slug: str) -> dict[str, Any]:
    return api.get(f"/api/workloads/{slug}").json()["status"]


def wait_phase(api: httpx.Client, slug: str, phase: str, timeout: float = 60) -> dict[str, Any]:
    return wait_until(
        lambda: (s := status(api, slug))["phase"] == phase and s, timeout, f"{slug} never {phase}"
    )


def chat(port: int, prompt: str = "Say hi") -> dict[str, Any]:
    response = httpx.post(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": prompt}], "max_tokens": 8},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()
