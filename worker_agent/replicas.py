"""What the agent knows of each replica it runs; the converge loop writes it, the proxy reads it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from ik_contracts.engines import BackendInstall, Engine
from ik_contracts.protocol import EngineLoad, ReplicaAssignment, ReplicaState


@dataclass
class LocalReplica:
    """What the agent knows of one replica it runs."""

    assignment: ReplicaAssignment
    engine: Engine
    port: int
    state: ReplicaState = ReplicaState.STARTING
    reason: str | None = "launching the engine"
    log_tail: str | None = None
    restarts: int = 0
    backoff_s: float = 0.0
    restart_at: float | None = None
    ready_since: float | None = None
    health_failures: int = 0
    prepare_task: asyncio.Task[None] | None = None
    # Downloads and builds a custom backend's package before its first launch.
    install_task: asyncio.Task[BackendInstall] | None = None
    # Polls a booting engine often, so its readiness is seen at once (Agent._watch_boot).
    boot_watch: asyncio.Task[None] | None = None
    # The engine's own load figures at the last health check (ready engines with /metrics).
    engine_load: EngineLoad | None = None
    notices: list[str] = field(default_factory=list)
    served_model: str = ""  # the `model` its engine answers to

    def observed(self) -> dict[str, object]:
        return {
            "id": self.assignment.id,
            "state": self.state,
            "reason": self.reason,
            "log_tail": self.log_tail if self.state == ReplicaState.FAILED else None,
            "port": self.port,
            "restarts": self.restarts,
            "engine_load": (
                self.engine_load.model_dump(exclude_none=True)
                if self.engine_load is not None and self.state == ReplicaState.READY
                else None
            ),
        }
