"""Containers for the engines that have images, plain processes for those that run on the host.

A docker agent still runs custom backends as processes: their runtime listens on 127.0.0.1 of
the host, from a venv the agent built there. Each half keeps its own record (container labels,
the process runtime's record files), so after an agent restart ``running()`` finds the engines
of both, and the restarted agent adopts them.
"""

from __future__ import annotations

from worker_agent.runtimes.base import LaunchSpec, LogStream, RunningEngine, Runtime
from worker_agent.runtimes.process import ProcessRuntime


class SplitRuntime:
    def __init__(self, containers: Runtime, processes: ProcessRuntime) -> None:
        self.containers = containers
        self.processes = processes
        self.name = containers.name
        # Engines from images are told this address; host processes choose their own.
        self.bind_host = containers.bind_host

    def _runtime_of(self, replica_id: str) -> Runtime:
        return self.processes if self.processes.knows(replica_id) else self.containers

    def start(self, spec: LaunchSpec) -> None:
        if spec.plain_process:
            self.containers.stop(spec.replica_id)  # a replica is one engine, wherever it ran
            self.processes.start(spec)
        else:
            self.processes.stop(spec.replica_id)
            self.containers.start(spec)

    def stop(self, replica_id: str, timeout_s: float = 10) -> None:
        self._runtime_of(replica_id).stop(replica_id, timeout_s)

    def running(self) -> dict[str, RunningEngine]:
        return {**self.containers.running(), **self.processes.running()}

    def log_tail(self, replica_id: str, lines: int = 40) -> str:
        return self._runtime_of(replica_id).log_tail(replica_id, lines)

    def log_stream(self, replica_id: str, tail: int, follow: bool) -> LogStream:
        return self._runtime_of(replica_id).log_stream(replica_id, tail, follow)
