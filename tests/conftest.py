"""Fixtures: one freshly migrated database and one live Manager per test run."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from inferencekey import ManagementClient

from manager.settings import Settings
from tests import engine_setup
from tests.support import (
    AgentFactory,
    RunningAgent,
    RunningManager,
    TestProject,
    bearer,
    create_database,
    create_project,
    create_sdk_token,
    drop_database,
    free_port,
    new_admin_token,
    start_manager,
)
from worker_agent.config import AgentConfig


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    url = create_database()
    yield url
    drop_database(url)


@pytest.fixture(scope="session")
def manager(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningManager]:
    settings = Settings(
        port=free_port(),
        database_url=database_url,
        data_dir=tmp_path_factory.mktemp("manager-data"),
        admin_token=new_admin_token(),
        # Short enough for the lost-worker tests to run in seconds.
        worker_not_ready_after_s=3.0,
        worker_lost_after_s=8.0,
        heartbeat_interval_s=1.0,
        reconcile_interval_s=1.0,
        # The suite makes many failed authentications from 127.0.0.1 on purpose; the limit
        # itself is tested on a Manager of its own (tests/test_server_limits.py).
        auth_failures_per_window=1_000_000,
    )
    running = start_manager(settings)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def admin(manager: RunningManager) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=manager.url, headers=bearer(manager.admin_token)) as client:
        yield client


@pytest.fixture
def project(admin: httpx.Client) -> TestProject:
    created = create_project(admin)
    return TestProject(
        id=created["id"], slug=created["slug"], sdk_token=create_sdk_token(admin, created["slug"])
    )


@pytest.fixture
def api(manager: RunningManager, project: TestProject) -> Iterator[httpx.Client]:
    """A raw HTTP client holding the project's full-scope SDK token."""
    with httpx.Client(base_url=manager.url, headers=bearer(project.sdk_token)) as client:
        yield client


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
            listen_host="127.0.0.1",
            listen_port=(port := free_port()),
            advertise_url=f"http://127.0.0.1:{port}",
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
        agent.stop_engines()


# The real engine parts (see tests/engine_setup.py for where each comes from).


@pytest.fixture(scope="session")
def llama_server() -> str:
    return engine_setup.llama_server_path()


@pytest.fixture(scope="session")
def gguf_model() -> Path:
    return engine_setup.gguf_model_path()


@pytest.fixture(scope="session")
def docker_host() -> str:
    # CI must run Docker for real: no daemon fails these tests unless skipped on purpose.
    if os.environ.get("INFERENCEKEY_SKIP_DOCKER") == "1":
        pytest.skip("INFERENCEKEY_SKIP_DOCKER=1")
    host = engine_setup.ensure_dockerd()
    if host is None:
        pytest.fail(engine_setup.dockerd_failure())
    return host


@pytest.fixture(scope="session")
def docker_client(docker_host: str) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=docker_host)
    yield client
    client.close()


@pytest.fixture(scope="session")
def llamacpp_image(docker_host: str) -> str:
    return engine_setup.ensure_llamacpp_image(docker_host)
