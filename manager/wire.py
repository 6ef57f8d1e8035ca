"""The Manager's own response shapes: what operators, the CLI and the console read.

The shapes the SDK reads (a workload, the workload list, a readiness frame, the error body) are
defined once in ``inferencekey.wire`` and the agent protocol's in ``ik_contracts.protocol``;
these are the rest. Optional keys that a view leaves out (a secret shown once, a kind's own
fields) are left unset, and the routes answer with ``response_model_exclude_unset`` so that they
stay out of the JSON rather than turning into nulls.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, StrictBool

from ik_contracts.protocol import EngineLoad

TokenKindName = Literal["sdk", "live", "admin", "agent"]


class Project(BaseModel):
    id: str
    slug: str
    name: str
    created_at: str


class ProjectList(BaseModel):
    projects: list[Project]


class Tenant(BaseModel):
    """A tenant: what ``/api/tenants/{tenant_id}/...`` names (``default`` also names it)."""

    id: str
    name: str


class TenantList(BaseModel):
    tenants: list[Tenant]


class Token(BaseModel):
    """A credential as the admin API shows it; never its secret, except once when minted."""

    id: str = Field(description="the 8-hex public id (safe to show)")
    kind: TokenKindName
    display: str = Field(description="the prefix and id, e.g. ik_sdk_1a2b3c4d…")
    name: str | None
    project_id: str | None
    project_slug: str | None
    created_at: str
    revoked_at: str | None
    scopes: list[str] | None = Field(default=None, description="SDK tokens only")
    grants: list[str] | None = Field(
        default=None, description='live keys only: "project/workload" or "project/*"'
    )
    token: str | None = Field(default=None, description="the secret: only in the minting answer")


class TokenList(BaseModel):
    tokens: list[Token]


class GpuResource(BaseModel):
    id: str
    worker_id: str
    index: int
    uuid: str
    name: str
    memory_total_mb: int
    memory_used_mb: int
    utilization_pct: int
    simulated: bool


class PoolGpuResource(GpuResource):
    """A GPU in ``GET /api/gpu-resources``, with the name of the worker it is on."""

    worker_name: str


class GpuResourceList(BaseModel):
    gpu_resources: list[PoolGpuResource]


class GpuCatalogEntry(BaseModel):
    """A GPU display name the shared pool has (or had, or the operator priced)."""

    name: str = Field(description='the display name gpu_pool uses, e.g. "NVIDIA A100-SXM4-80GB"')
    memory_total_mb: int | None = Field(description="null when none is in the pool now")
    total: int = Field(description="how many are in the shared pool now")
    free: int = Field(description="how many of those are on a ready worker and held by no replica")
    cuda_versions: list[str] = Field(description="CUDA versions of the workers that have one")
    usd_per_hour: float | None = Field(
        description="the operator's price (`inferencekey admin gpu-price set`); null: unpriced, "
        "so a pool with max_hourly_cost_usd does not use it"
    )


class GpuCatalog(BaseModel):
    gpus: list[GpuCatalogEntry]


class Worker(BaseModel):
    id: str
    name: str
    project_id: str | None
    pool: Literal["private", "shared"]
    state: str
    state_reason: str | None
    address: str | None
    simulated: bool
    inventory_source: str | None
    hostname: str | None
    driver_version: str | None
    cuda_version: str | None
    gpus: list[GpuResource]
    last_heartbeat_at: str | None
    created_at: str
    token: str | None = Field(
        default=None, description="the ik_agent_ credential: only in the registering answer"
    )


class WorkerList(BaseModel):
    workers: list[Worker]


class WorkloadEvent(BaseModel):
    id: int
    kind: str
    message: str
    data: dict[str, Any] | None
    created_at: str


class WorkloadEventList(BaseModel):
    events: list[WorkloadEvent]


class Replica(BaseModel):
    id: str
    worker_id: str
    generation: int
    gpu_resource_ids: list[str]
    desired_state: str
    state: str
    reason: str | None
    log_tail: str | None
    port: int | None
    restarts: int
    created_at: str
    ready_at: str | None
    engine_load: EngineLoad | None = Field(
        default=None, description="the engine's own load at the last report, where it has /metrics"
    )


class ReplicaList(BaseModel):
    replicas: list[Replica]


UsageGrouping = Literal["workload", "key", "day"]


class UsageTotals(BaseModel):
    requests: int = Field(description="data-plane requests an engine answered")
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class UsageRow(UsageTotals):
    """One group's counts; only the keys of the chosen grouping are present."""

    workload: str | None = Field(
        default=None, description="the workload's slug (group_by=workload)"
    )
    workload_id: str | None = None
    key: str | None = Field(default=None, description="the key's display form (group_by=key)")
    key_name: str | None = None
    day: str | None = Field(default=None, description="a UTC day, YYYY-MM-DD (group_by=day)")


class UsageReport(BaseModel):
    """Token usage of one project's data-plane traffic, as the engines reported it."""

    project: str
    from_: str = Field(alias="from", description="start of the range (inclusive), ISO 8601 UTC")
    to: str = Field(description="end of the range (exclusive), ISO 8601 UTC")
    group_by: UsageGrouping
    rows: list[UsageRow]
    total: UsageTotals


class EndpointToggles(BaseModel):
    """A workload's endpoint toggles: ``jobs`` (the async surface) and one per route it serves."""

    workload_id: str
    endpoints: dict[str, bool] = Field(
        description="toggle name -> on; a route switched off also refuses its async twin"
    )


class UpdateEndpointToggles(BaseModel):
    model_config = {"extra": "forbid"}

    endpoints: dict[str, StrictBool] = Field(description="the toggles to change, name -> on")
