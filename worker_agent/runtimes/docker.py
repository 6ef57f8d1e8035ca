"""Engines as Docker containers, one per replica, named `ik-<replica id>` and labelled.

The labels are the record: `running()` lists this worker's containers by label, so a restarted
agent finds the engines of its previous run without any state of its own.

Networking (the `network_mode` setting):
- "bridge" (default): the engine listens on 0.0.0.0 inside its container and the agent-assigned
  port is published on the host at `publish_host:port`, 127.0.0.1 by default: only the agent's
  proxy on this host talks to engines, so nothing is exposed on the host's other interfaces.
- "host": the container shares the host's network and the engine listens on 127.0.0.1:port;
  for hosts where the bridge or port publishing does not work (no iptables, rootless setups).
Either way the engine answers at http://127.0.0.1:<port> on the agent's host.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
import docker.types

from ik_contracts.engines import container_entrypoints
from worker_agent.runtimes.base import PASSTHROUGH_ENV, LaunchError, LaunchSpec, RunningEngine

LABEL_WORKER = "inferencekey.worker"
LABEL_WORKLOAD = "inferencekey.workload"
LABEL_REPLICA = "inferencekey.replica"
LABEL_PORT = "inferencekey.port"
CACHE_MOUNT = "/root/.cache"  # where engines keep downloaded weights (HF, vLLM, llama.cpp caches)
_REMOVAL_WAIT_S = 30.0


class ContainerLogStream:
    """A container's log through the daemon's stream, which close() ends."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        if self._stream is not None:
            yield from self._stream

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()


class DockerRuntime:
    name = "docker"

    def __init__(
        self,
        worker_id: str,
        model_dir: str | None,
        client: docker.DockerClient | None = None,
        cache_volume: str = "inferencekey-model-cache",
        network_mode: str = "bridge",
        publish_host: str = "127.0.0.1",
        passthrough_env: tuple[str, ...] = PASSTHROUGH_ENV,
        entrypoints: dict[str, str] | None = None,
    ) -> None:
        if network_mode not in ("bridge", "host"):
            raise ValueError(f"network_mode must be 'bridge' or 'host', not {network_mode!r}")
        self.client = client or docker.from_env()
        self.worker_id = worker_id
        self.model_dir = os.path.abspath(model_dir) if model_dir else None
        self.cache_volume = cache_volume
        self.network_mode = network_mode
        self.publish_host = publish_host
        self.passthrough_env = passthrough_env
        self.entrypoints = container_entrypoints() if entrypoints is None else entrypoints
        self.bind_host = "0.0.0.0" if network_mode == "bridge" else "127.0.0.1"

    def start(self, spec: LaunchSpec) -> None:
        if spec.image is None:
            raise LaunchError("the docker runtime needs an image for every engine")
        self.stop(spec.replica_id, timeout_s=0)
        options: dict[str, Any] = {
            "name": container_name(spec.replica_id),
            "entrypoint": [self.entrypoints.get(spec.argv[0], spec.argv[0])],
            "command": spec.argv[1:],
            "environment": {**self._passthrough(), **spec.env},
            "labels": {
                LABEL_WORKER: spec.worker_id,
                LABEL_WORKLOAD: spec.workload_id,
                LABEL_REPLICA: spec.replica_id,
                LABEL_PORT: str(spec.port),
            },
            "volumes": self._volumes(),
            # vLLM and SGLang share tensors between processes through /dev/shm, which Docker
            # caps at 64 MB in a container's own IPC namespace.
            "ipc_mode": "host",
            "detach": True,
        }
        if self.network_mode == "host":
            options["network_mode"] = "host"
        else:
            options["ports"] = {f"{spec.port}/tcp": (self.publish_host, spec.port)}
        if spec.gpu_uuids:
            options["device_requests"] = [
                docker.types.DeviceRequest(device_ids=spec.gpu_uuids, capabilities=[["gpu"]])
            ]
        try:
            self._ensure_image(spec.image)
            container = self.client.containers.create(spec.image, **options)
            container.start()
        except docker.errors.DockerException as error:
            raise LaunchError(f"cannot start container for {spec.replica_id}: {error}") from error

    def stop(self, replica_id: str, timeout_s: float = 10) -> None:
        name = container_name(replica_id)
        try:
            container = self.client.containers.get(name)
            if container.status == "running":
                container.stop(timeout=int(timeout_s))
            container.remove(force=True)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as error:
            if error.status_code != 409:  # 409: a removal is already under way; wait for it
                raise
        deadline = time.monotonic() + _REMOVAL_WAIT_S
        while time.monotonic() < deadline:
            try:
                self.client.containers.get(name)
            except docker.errors.NotFound:
                return
            time.sleep(0.1)
        raise LaunchError(f"container {name} was not removed within {_REMOVAL_WAIT_S:.0f} s")

    def running(self) -> dict[str, RunningEngine]:
        engines = {}
        containers = self.client.containers.list(
            all=True, filters={"label": f"{LABEL_WORKER}={self.worker_id}"}, ignore_removed=True
        )
        for container in containers:
            labels = container.labels
            replica_id = labels[LABEL_REPLICA]
            alive = container.status == "running"
            state = container.attrs.get("State", {})
            engines[replica_id] = RunningEngine(
                replica_id=replica_id,
                port=int(labels[LABEL_PORT]),
                alive=alive,
                exit_code=None if alive else state.get("ExitCode"),
            )
        return engines

    def log_tail(self, replica_id: str, lines: int = 40) -> str:
        try:
            container = self.client.containers.get(container_name(replica_id))
        except docker.errors.NotFound:
            return ""
        logs: bytes = container.logs(tail=lines)
        return logs.decode(errors="replace").rstrip("\n")

    def log_stream(self, replica_id: str, tail: int, follow: bool) -> ContainerLogStream:
        try:
            container = self.client.containers.get(container_name(replica_id))
        except docker.errors.NotFound:
            return ContainerLogStream(None)
        return ContainerLogStream(container.logs(stream=True, follow=follow, tail=tail))

    def _ensure_image(self, image: str) -> None:
        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            self.client.images.pull(image)

    def _volumes(self) -> dict[str, dict[str, str]]:
        volumes = {self.cache_volume: {"bind": CACHE_MOUNT, "mode": "rw"}}
        if self.model_dir:
            # Same path inside as outside, so a command's `-m /models/x.gguf` works unchanged.
            volumes[self.model_dir] = {"bind": self.model_dir, "mode": "ro"}
        return volumes

    def _passthrough(self) -> dict[str, str]:
        return {name: os.environ[name] for name in self.passthrough_env if name in os.environ}


def container_name(replica_id: str) -> str:
    return f"ik-{replica_id}"
