"""The Docker runtime runs llama-server in a container, finds it by label after a restart, and
removes it on stop. Runs against a real daemon; see tests/agent/conftest.py."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import httpx
import pytest

from ik_contracts.engines.llamacpp import LlamaCppEngine
from worker_agent.ports import PortAllocator
from worker_agent.runtimes.base import LaunchError, LaunchSpec
from worker_agent.runtimes.docker import DockerRuntime, container_name

ENGINE = LlamaCppEngine()
# A random start keeps concurrent test runs on one host from racing for the same first port.
PORTS = PortAllocator(43000 + random.randrange(900), 43999)


@pytest.fixture
def worker_id() -> str:
    return f"wrk_test{uuid.uuid4().hex[:8]}"


@pytest.fixture
def replica_id() -> str:
    # Unique per test: other test runs may share the daemon, and container names are global.
    return f"rep_test{uuid.uuid4().hex[:8]}"


def make_runtime(
    docker_client: docker.DockerClient, worker_id: str, gguf_model: Path, network_mode: str
) -> DockerRuntime:
    return DockerRuntime(
        worker_id=worker_id,
        model_dir=str(gguf_model.parent),
        client=docker_client,
        cache_volume="inferencekey-test-cache",
        network_mode=network_mode,
    )


@pytest.fixture(params=["bridge", "host"])
def runtime(
    request: pytest.FixtureRequest,
    docker_client: docker.DockerClient,
    worker_id: str,
    gguf_model: Path,
) -> Iterator[DockerRuntime]:
    runtime = make_runtime(docker_client, worker_id, gguf_model, request.param)
    yield runtime
    for replica_id in runtime.running():
        runtime.stop(replica_id, timeout_s=1)


def llama_spec(runtime: DockerRuntime, image: str, replica_id: str, command: str) -> LaunchSpec:
    port = PORTS.allocate()
    argv, _ = ENGINE.build_argv(command, "gemma", runtime.bind_host, port)
    return LaunchSpec(replica_id, "wl_test", runtime.worker_id, argv, {}, [], port, image)


def wait_ready(port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"engine on {port} not ready in {timeout_s} s"
        time.sleep(0.2)


def test_llama_server_container_answers_chat_and_is_labelled(
    runtime: DockerRuntime,
    replica_id: str,
    docker_client: docker.DockerClient,
    llamacpp_image: str,
    gguf_model: Path,
) -> None:
    spec = llama_spec(runtime, llamacpp_image, replica_id, f"llama-server -m {gguf_model} -c 1024")
    runtime.start(spec)
    wait_ready(spec.port)
    response = httpx.post(
        f"http://127.0.0.1:{spec.port}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8},
        timeout=60,
    )
    assert response.status_code == 200, response.text

    container = docker_client.containers.get(container_name(replica_id))
    assert container.labels == {
        "inferencekey.worker": runtime.worker_id,
        "inferencekey.workload": "wl_test",
        "inferencekey.replica": replica_id,
        "inferencekey.port": str(spec.port),
    }
    host_config = container.attrs["HostConfig"]
    assert not host_config.get("DeviceRequests")  # no GPUs asked, none requested
    assert container.attrs["Config"]["Entrypoint"] == ["/app/llama-server"]
    if runtime.network_mode == "bridge":
        assert host_config["PortBindings"] == {
            f"{spec.port}/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(spec.port)}]
        }
    engine = runtime.running()[replica_id]
    assert (engine.port, engine.alive, engine.exit_code) == (spec.port, True, None)
    assert "listening" in runtime.log_tail(replica_id)
    stream = runtime.log_stream(replica_id, tail=200, follow=False)
    assert b"listening" in b"".join(stream)
    stream.close()


@pytest.mark.parametrize("runtime", ["bridge"], indirect=True)
def test_restarted_agent_adopts_the_container_and_stop_removes_it(
    runtime: DockerRuntime,
    replica_id: str,
    docker_client: docker.DockerClient,
    llamacpp_image: str,
    gguf_model: Path,
) -> None:
    spec = llama_spec(runtime, llamacpp_image, replica_id, f"llama-server -m {gguf_model}")
    runtime.start(spec)
    wait_ready(spec.port)

    restarted = make_runtime(docker_client, runtime.worker_id, gguf_model, "bridge")
    adopted = restarted.running()[replica_id]
    assert (adopted.port, adopted.alive) == (spec.port, True)
    # Another worker's agent on the same daemon does not see it.
    other = make_runtime(docker_client, "wrk_someone_else", gguf_model, "bridge")
    assert replica_id not in other.running()

    restarted.stop(replica_id, timeout_s=2)
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(container_name(replica_id))
    assert restarted.running() == {}
    restarted.stop(replica_id)  # idempotent


@pytest.mark.parametrize("runtime", ["bridge"], indirect=True)
def test_start_replaces_a_container_left_with_the_same_name(
    runtime: DockerRuntime, replica_id: str, llamacpp_image: str, gguf_model: Path
) -> None:
    first = llama_spec(runtime, llamacpp_image, replica_id, f"llama-server -m {gguf_model}")
    runtime.start(first)
    second = llama_spec(runtime, llamacpp_image, replica_id, f"llama-server -m {gguf_model}")
    runtime.start(second)
    assert runtime.running()[replica_id].port == second.port


@pytest.mark.parametrize("runtime", ["bridge"], indirect=True)
def test_crashing_engine_container_reports_exit_code_and_log(
    runtime: DockerRuntime, replica_id: str, llamacpp_image: str
) -> None:
    runtime.start(llama_spec(runtime, llamacpp_image, replica_id, "llama-server -m /none.gguf"))
    deadline = time.monotonic() + 30
    while runtime.running()[replica_id].alive:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert runtime.running()[replica_id].exit_code not in (None, 0)
    assert "/none.gguf" in runtime.log_tail(replica_id)


@pytest.mark.parametrize("runtime", ["bridge"], indirect=True)
def test_missing_image_is_a_launch_error(runtime: DockerRuntime, replica_id: str) -> None:
    spec = LaunchSpec(replica_id, "wl", runtime.worker_id, ["llama-server"], {}, [], 1, None)
    with pytest.raises(LaunchError, match="needs an image"):
        runtime.start(spec)
