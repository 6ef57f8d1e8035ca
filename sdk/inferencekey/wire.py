"""Wire models of the control plane, shared by the SDK and the Manager.

Requests forbid unknown fields and take strict types, so a wrong field or type is a clear
400 rather than a silent coercion. The response model ignores fields it does not know, so
an older SDK keeps working against a newer Manager.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from .enums import TaskType

# Fields a client may never set: placement is the platform's job.
PLACEMENT_FIELDS: tuple[str, ...] = ("provider", "min_vram_gb")


class CreateWorkloadRequest(BaseModel):
    """Body of ``POST /api/projects/{project}/workloads``."""

    model_config = ConfigDict(extra="forbid")

    name: StrictStr
    slug: StrictStr | None = None
    description: StrictStr | None = None
    task_type: StrictStr = TaskType.TEXT2TEXT.value
    backend: StrictStr
    model_name: StrictStr
    config: dict[str, Any] | None = None
    worker_id: StrictStr | None = None
    gpu_resource_id: StrictStr | None = None
    execution_policy: StrictStr | None = None
    execution_policy_config: dict[str, Any] | None = None


class UpdateWorkloadRequest(BaseModel):
    """Body of ``PATCH /api/workloads/{id}``: only the drifted fields. ``task_type`` is fixed."""

    model_config = ConfigDict(extra="forbid")

    name: StrictStr | None = None
    description: StrictStr | None = None
    task_type: StrictStr | None = None
    backend: StrictStr | None = None
    model_name: StrictStr | None = None
    config: dict[str, Any] | None = None
    worker_id: StrictStr | None = None
    gpu_resource_id: StrictStr | None = None
    execution_policy: StrictStr | None = None
    execution_policy_config: dict[str, Any] | None = None


class WorkloadStatus(BaseModel):
    """Where the workload is in its life: a phase and the reason for it."""

    model_config = ConfigDict(extra="ignore")

    phase: str
    reason: str | None = None
    ready_replicas: int = 0
    desired_replicas: int = 0


class Workload(BaseModel):
    """A workload as the Manager returns it; stored fields are echoed verbatim."""

    model_config = ConfigDict(extra="ignore")

    id: str
    project_id: str
    project_slug: str | None = None
    name: str
    slug: str
    workload_slug: str | None = None
    description: str | None = None
    task_type: TaskType
    backend: str
    model_name: str
    config: dict[str, Any] | None = None
    worker_id: str | None = None
    gpu_resource_id: str | None = None
    execution_policy: str | None = None
    execution_policy_config: dict[str, Any] | None = None
    generation: int | None = None
    status: WorkloadStatus | None = None
    created_at: str
    updated_at: str


class WorkloadList(BaseModel):
    """Body of ``GET /api/projects/{project}/workloads``."""

    workloads: list[Workload]


class ReadinessEvent(BaseModel):
    """One frame of the readiness stream."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    phase: str
    message: str
    elapsed_ms: int = 0
    step: str | None = None


class ErrorBody(BaseModel):
    """Every 4xx/5xx body: ``error`` is what the official client reads, ``code`` is typed.

    Some errors carry more keys (a 503 its workload's ``phase`` and ``reason``); they are kept.
    """

    model_config = ConfigDict(extra="allow")

    error: str = Field(description="the code for 403s, the sentence otherwise")
    code: str = Field(description="the typed error code")
    message: str = Field(description="the sentence")
    field: str | None = Field(default=None, description="the offending field, where there is one")
