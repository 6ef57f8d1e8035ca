"""From ensure() to a llama.cpp engine in a Docker container, through a real Docker daemon."""

from __future__ import annotations

from pathlib import Path

import docker
import httpx
import pytest
from inferencekey import ManagementClient

from tests.e2e.conftest import AgentFactory, chat, replicas
from tests.e2e.test_fixed_policy_process_runtime import spec
from tests.support import wait_until


def test_docker_runtime_serves_the_workload_from_a_labelled_container(
    start_agent: AgentFactory,
    mgmt: ManagementClient,
    api: httpx.Client,
    gguf_model: Path,
    docker_host: str,
    docker_client: docker.DockerClient,
    llamacpp_image: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DOCKER_HOST", docker_host)
    agent = start_agent(runtime="docker", images={"llamacpp": llamacpp_image})
    ref = mgmt.ensure(spec(gguf_model, slug="gemma-docker"))
    mgmt.wait_until_ready(ref.workload_slug, timeout=90)
    [replica] = replicas(api, "gemma-docker")
    # The model file is bind-mounted at the same path, so the user's command works unchanged.
    assert chat(replica["port"])["choices"]
    container = docker_client.containers.get(f"ik-{replica['id']}")
    assert container.labels["inferencekey.replica"] == replica["id"]
    assert container.labels["inferencekey.worker"] == agent.agent.worker_id
    workload_id = api.get(f"/api/workloads/{ref.workload_slug}").json()["id"]
    assert container.labels["inferencekey.workload"] == workload_id
    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
    assert mounts[str(gguf_model.parent)]["RW"] is False
    assert mgmt.delete(ref.workload_slug)

    def gone() -> bool:
        try:
            docker_client.containers.get(f"ik-{replica['id']}")
        except docker.errors.NotFound:
            return True
        return False

    wait_until(gone, 30, "the container was not removed")
