"""The agent protocol's wire models, shared by the Manager and the agent."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

MAX_WAIT_S = 30.0
MAX_LOG_TAIL_CHARS = 64 * 1024
# How long an agent keeps an idle connection to the Manager open. Longer than the Manager's
# heartbeat interval (10 s), so that each heartbeat goes on the connection the last one left: at
# httpx's default (5 s) every heartbeat opened a new one, an accept and a new protocol on the
# Manager, and under overload a wait in its listen queue, where a request is neither served nor
# shed (bench/control_plane.py found heartbeats 31-41 s late there and workers lapsing). Shorter
# than the Manager's keep-alive (ik_contracts.http_server.ServerLimits: 15 s), so that the agent
# closes an idle connection first and never sends on one the server is closing. The Manager
# warns at start when its settings break either (manager.settings.agent_connection_warnings).
AGENT_KEEPALIVE_S = 12.0


class ReplicaState(StrEnum):
    """A replica's state as its agent observes it (``replicas.state`` on the Manager)."""

    # Written by the Manager when it creates the replica; no agent has reported on it yet.
    PENDING = "pending"
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"


# What an agent may report: every state but PENDING, which only the Manager writes.
REPORTED_STATES: tuple[ReplicaState, ...] = (
    ReplicaState.STARTING,
    ReplicaState.READY,
    ReplicaState.FAILED,
    ReplicaState.STOPPED,
)

_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


def _no_control_characters(value: str) -> str:
    if re.search(r"[\x00-\x1f\x7f]", value) or _UNSTORABLE.search(value):
        raise ValueError("must not hold control characters")
    return value


def _scrub_text(value: object) -> object:
    # Engine output is whatever the engine printed: keep it, minus what Postgres cannot store.
    if isinstance(value, str):
        return _UNSTORABLE.sub("\ufffd", value)[-MAX_LOG_TAIL_CHARS:]
    return value


def _reported_state(value: object) -> object:
    if value not in REPORTED_STATES:
        raise ValueError(f"must be one of: {', '.join(REPORTED_STATES)}")
    return value


# Names and ids: one line, bounded. Counts and sizes: within the database's columns.
Name = Annotated[str, Field(max_length=512), AfterValidator(_no_control_characters)]
Text = Annotated[str, BeforeValidator(_scrub_text)]
Count = Annotated[int, Field(ge=0, le=2**31 - 1)]
Bytes = Annotated[int, Field(ge=0, le=2**63 - 1)]
ReportedState = Annotated[ReplicaState, BeforeValidator(_reported_state)]


class GpuWire(BaseModel):
    model_config = ConfigDict(extra="ignore")

    index: Count
    uuid: Name
    name: Name
    memory_total_mb: Count
    memory_used_mb: Count = 0
    utilization_pct: Annotated[int, Field(ge=0, le=100)] = 0


class InventoryWire(BaseModel):
    model_config = ConfigDict(extra="ignore")

    source: Literal["nvml", "simulated", "none"]
    hostname: Name | None = None
    driver_version: Name | None = None
    cuda_version: Name | None = None
    cpu_count: Count | None = None
    memory_mb: Count | None = None
    gpus: list[GpuWire] = Field(default_factory=list, max_length=1024)
    model_files: dict[Name, Bytes] = Field(default_factory=dict, max_length=100_000)


class EngineLoad(BaseModel):
    """What a ready engine says of its own load on its Prometheus /metrics, where it has one."""

    model_config = ConfigDict(extra="ignore")

    running: Count | None = None  # requests it is working on
    waiting: Count | None = None  # requests queued inside it
    kv_cache_usage: Annotated[float, Field(ge=0, le=1)] | None = None  # share of its KV cache


class ObservedReplica(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: Name
    state: ReportedState
    reason: Text | None = None
    log_tail: Text | None = None
    port: Annotated[int, Field(ge=0, le=65535)] | None = None
    restarts: Count = 0
    engine_load: EngineLoad | None = None


class Heartbeat(BaseModel):
    """What an agent reports: its inventory and the observed state of its replicas.

    Both are deltas: absent (or null) means "unchanged since my last acknowledged heartbeat"
    (worker_agent/heartbeats.py decides what to send). A heartbeat with neither is the common
    one, and renews the worker's lease only; an agent that sends both every time (as agents
    before deltas did) is still understood.
    """

    model_config = ConfigDict(extra="ignore")

    agent_version: Name | None = None
    address: Name | None = None
    inventory: InventoryWire | None = None
    replicas: list[ObservedReplica] | None = Field(default=None, max_length=10_000)


class CustomBackendRef(BaseModel):
    """The custom-backend package a replica runs, as its version was when the replica was placed.

    The agent downloads it from ``GET /api/agent/custom-backends/{id}/package`` (its own
    credential), checks ``sha256`` and ``size_bytes``, installs it for ``requires_python`` and
    serves ``entrypoint`` with ``config`` (the workload's ``config``) as ``IK_BACKEND_CONFIG``.
    A new version of the slug is a new replica with a new ref, never a changed one.
    """

    model_config = ConfigDict(extra="ignore")

    id: str  # the version's id, cbv_...
    slug: str
    version: str
    sha256: str
    size_bytes: int
    entrypoint: str
    requires_python: str = ""
    task_type: str = ""
    cpu_only: bool = False
    config: dict[str, Any] = Field(default_factory=dict)


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
    # Set when ``backend`` is a custom backend's slug: the package to run (no command applies).
    custom_backend: CustomBackendRef | None = None


class Assignments(BaseModel):
    """The Manager's answer to a heartbeat or a watch: the full desired set (level-triggered)."""

    worker_id: str
    version: str
    heartbeat_interval_s: float
    replicas: list[ReplicaAssignment]
    # What Manager gateways present to this agent's proxy (X-InferenceKey-Gateway).
    gateway_secret: str = ""
