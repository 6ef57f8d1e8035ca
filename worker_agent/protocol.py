"""The agent protocol's wire models, shared by the Manager and the agent."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ReplicaState = Literal["starting", "ready", "failed", "stopped"]
MAX_WAIT_S = 30.0


class GpuWire(BaseModel):
    model_config = ConfigDict(extra="ignore")

    index: int
    uuid: str
    name: str
    memory_total_mb: int
    memory_used_mb: int = 0
    utilization_pct: int = 0


class InventoryWire(BaseModel):
    model_config = ConfigDict(extra="ignore")

    source: Literal["nvml", "simulated", "none"]
    hostname: str | None = None
    driver_version: str | None = None
    cuda_version: str | None = None
    cpu_count: int | None = None
    memory_mb: int | None = None
    gpus: list[GpuWire] = Field(default_factory=list)
    model_files: dict[str, int] = Field(default_factory=dict)


class ObservedReplica(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    state: ReplicaState
    reason: str | None = None
    log_tail: str | None = None
    port: int | None = None
    restarts: int = 0


class Heartbeat(BaseModel):
    """What an agent reports: its inventory and the observed state of its replicas."""

    model_config = ConfigDict(extra="ignore")

    agent_version: str | None = None
    address: str | None = None
    inventory: InventoryWire
    replicas: list[ObservedReplica] = Field(default_factory=list)


class ReplicaAssignment(BaseModel):
    """One replica the worker must run, with everything needed to launch it."""

    model_config = ConfigDict(extra="ignore")

    id: str
    workload_id: str
    project_slug: str
    workload_slug: str
    generation: int
    backend: str
    task_type: str
    model_name: str
    command: str | None = None
    vllm_version: str | None = None
    gpu_uuids: list[str] = Field(default_factory=list)
    claim_memory_mb: int = 0


class Assignments(BaseModel):
    """The Manager's answer to a heartbeat or a watch: the full desired set (level-triggered)."""

    worker_id: str
    version: str
    heartbeat_interval_s: float
    replicas: list[ReplicaAssignment]
    # What Manager gateways present to this agent's proxy (X-InferenceKey-Gateway).
    gateway_secret: str = ""
