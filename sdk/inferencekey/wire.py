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


# The most workloads one page of the list holds (``?limit=``); the Manager refuses more.
MAX_WORKLOAD_PAGE_SIZE = 1000


class WorkloadPage(BaseModel):
    """Body of ``GET /api/projects/{project}/workloads?limit=N[&after=CURSOR]``: at most N
    workloads in creation order, and the cursor of the next page (None after the last).

    Without ``limit`` the Manager answers every workload and no ``next_cursor``.
    """

    model_config = ConfigDict(extra="ignore")

    workloads: list[Workload]
    next_cursor: str | None = Field(
        default=None,
        description="pass it as ?after= for the next page; null on the last page, absent "
        "without limit",
    )


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


class EndpointToggles(BaseModel):
    """Body of ``GET``/``PATCH /api/workloads/{ref}/endpoints``: each route's on/off switch.

    ``jobs`` is the master switch of the async surface; the others (``chat``, ``embeddings``,
    ...) are the workload's task type's routes, sync and async alike.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    workload_id: str
    endpoints: dict[str, bool]


class WebhookDestination(BaseModel):
    """Where a workload's job results are delivered.

    ``secret`` (``whsec_...``, the key of the deliveries' signatures) is set only in the answer
    to ``add_webhook``: store it then, the Manager shows only ``secret_prefix`` afterwards.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    url: str
    enabled: bool
    secret_prefix: str | None = None
    created_at: str
    secret: str | None = Field(default=None, repr=False)


class WebhookTestResult(BaseModel):
    """What a signed test ``ping`` to a destination did."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    delivered: bool
    status_code: int | None = None
    error: str | None = None
    duration_ms: float


class DeliveryAttempt(BaseModel):
    """One try at delivering a result to a destination."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    attempt: int
    at: str
    status_code: int | None = None
    error: str | None = None
    duration_ms: float | None = None


class WebhookDelivery(BaseModel):
    """One job result on its way to one destination, with its retries.

    ``status`` is ``pending`` (retrying, next at ``next_attempt_at``), ``delivered``,
    ``terminal`` (gave up after the last retry) or ``skipped``.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    job_id: str
    destination_id: str
    event: str
    status: str
    attempts: int
    next_attempt_at: str | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    attempt_log: list[DeliveryAttempt] = Field(default_factory=list)
    created_at: str
    delivered_at: str | None = None
