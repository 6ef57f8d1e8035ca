"""Fixtures for the agent's real engine parts; tests/engine_setup.py says where they come from."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests import engine_setup


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
