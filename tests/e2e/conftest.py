"""End-to-end helpers; the agent fixtures (`start_agent`, `mgmt`) live in tests/conftest.py."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from inferencekey import ManagementClient, WorkloadSpec

from tests.e2e.serving import Serve, endpoint, wait_routable
from tests.support import AgentFactory as AgentFactory
from tests.support import (
    RunningAgent,
    RunningManager,
    TestProject,
    create_live_key,
    wait_until,
)


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


@pytest.fixture
def live_key(admin: httpx.Client, project: TestProject) -> str:
    return create_live_key(admin, project.slug)


@pytest.fixture
def serve(
    start_agent: AgentFactory,
    mgmt: ManagementClient,
    manager: RunningManager,
    project: TestProject,
    live_key: str,
) -> Serve:
    """Start an agent, declare the specs, and wait until the gateway routes to the first."""

    def run(*specs: WorkloadSpec) -> RunningAgent:
        agent = start_agent()
        for spec in specs:
            mgmt.ensure(spec)
        for spec in specs:
            mgmt.wait_until_ready(spec.slug, timeout=60, silent=True)
        if specs[0].task_type in (None, "text2text"):
            with endpoint(manager, project, specs[0].slug, live_key) as client:
                wait_routable(client)
        return agent

    return run
