"""SQLAlchemy models. The schema itself only changes through Alembic migrations.

Each index a migration creates is declared here too, under the same name (the index test of
tests/test_query_plans.py compares them), so that the models say how each table is read.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ik_contracts.protocol import ReplicaState
from manager.states import DesiredState, WorkerState


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String, primary_key=True)
    name: Mapped[str] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    slug: Mapped[str] = mapped_column(String)
    name: Mapped[str] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Token(Base):
    """A credential. Only the SHA-256 digest of the whole token is stored."""

    __tablename__ = "tokens"
    __table_args__ = (Index("ix_tokens_project_id", "project_id"),)

    id: Mapped[str] = mapped_column(String(8), primary_key=True)
    kind: Mapped[str] = mapped_column(String)
    digest: Mapped[bytes] = mapped_column()
    name: Mapped[str | None] = mapped_column(String, nullable=True)
    project_id: Mapped[str | None] = mapped_column(ForeignKey("projects.id"), nullable=True)
    scopes: Mapped[list[str]] = mapped_column(ARRAY(String), default=list)
    # Workload slugs an ik_live_ key may call; ["*"] means every workload of the project.
    workload_grants: Mapped[list[str]] = mapped_column(ARRAY(String), default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Workload(Base):
    """Desired state of one workload. Spec fields are stored exactly as the client wrote them."""

    __tablename__ = "workloads"
    __table_args__ = (
        # A slug is unique among the live workloads of a project; a deleted one frees it.
        Index(
            "uq_workloads_project_slug_live",
            "project_id",
            "slug",
            unique=True,
            postgresql_where=text("deleted_at IS NULL"),
        ),
        # A project's live workloads in creation order: the keyset of the listing's pages.
        Index(
            "workloads_project_live_created",
            "project_id",
            "created_at",
            "id",
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String, primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    slug: Mapped[str] = mapped_column(String)
    name: Mapped[str] = mapped_column(String)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    task_type: Mapped[str] = mapped_column(String)
    backend: Mapped[str] = mapped_column(String)
    model_name: Mapped[str] = mapped_column(String)
    # JSON (not JSONB) keeps the text as written, so echoes are verbatim.
    config: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    worker_id: Mapped[str | None] = mapped_column(String, nullable=True)
    gpu_resource_id: Mapped[str | None] = mapped_column(String, nullable=True)
    execution_policy: Mapped[str | None] = mapped_column(String, nullable=True)
    execution_policy_config: Mapped[dict[str, Any] | None] = mapped_column(
        JSON(none_as_null=True), nullable=True
    )
    generation: Mapped[int] = mapped_column(Integer, default=1)
    desired_replicas: Mapped[int] = mapped_column(Integer, default=0)
    ready_replicas: Mapped[int] = mapped_column(Integer, default=0)
    # When the reconciler last changed desired_replicas (migration 0005); None until it first does.
    last_scaled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Endpoint toggles switched off (migration 0011): toggle names of ik_contracts.endpoint_paths.
    endpoints_off: Mapped[list[str]] = mapped_column(ARRAY(String), default=list)
    phase: Mapped[str] = mapped_column(String)
    phase_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class WorkloadEvent(Base):
    """Append-only history of a workload: what changed, what the platform did and why."""

    __tablename__ = "workload_events"
    __table_args__ = (Index("ix_workload_events_workload_id", "workload_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    workload_id: Mapped[str] = mapped_column(ForeignKey("workloads.id"))
    kind: Mapped[str] = mapped_column(String)
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Worker(Base):
    """A host running the agent. ``project_id`` set means private to that project."""

    __tablename__ = "workers"
    __table_args__ = (Index("ix_workers_token_id", "token_id", unique=True),)

    id: Mapped[str] = mapped_column(String, primary_key=True)
    name: Mapped[str] = mapped_column(String)
    project_id: Mapped[str | None] = mapped_column(ForeignKey("projects.id"), nullable=True)
    token_id: Mapped[str] = mapped_column(ForeignKey("tokens.id"))
    state: Mapped[str] = mapped_column(String, default=WorkerState.REGISTERED)
    state_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    address: Mapped[str | None] = mapped_column(String, nullable=True)
    inventory: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    simulated: Mapped[bool] = mapped_column(default=False)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    # The gateway's credential toward this worker's agent proxy (see migration 0003).
    gateway_secret: Mapped[str] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class GpuResource(Base):
    """One GPU of a worker; its ``gpu_…`` id stays the same for the same (worker, UUID)."""

    __tablename__ = "gpu_resources"

    id: Mapped[str] = mapped_column(String, primary_key=True)
    worker_id: Mapped[str] = mapped_column(ForeignKey("workers.id"))
    uuid: Mapped[str] = mapped_column(String)
    index: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String)
    memory_total_mb: Mapped[int] = mapped_column(Integer)
    memory_used_mb: Mapped[int] = mapped_column(Integer, default=0)
    utilization_pct: Mapped[int] = mapped_column(Integer, default=0)
    simulated: Mapped[bool] = mapped_column(default=False)
    present: Mapped[bool] = mapped_column(default=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Replica(Base):
    """One engine instance of a workload on a worker.

    ``spec`` snapshots what to run at ``generation``, so a rolling change can keep old replicas
    serving until new ones are ready. ``desired_state`` is the Manager's; ``state`` the agent's.
    """

    __tablename__ = "replicas"
    __table_args__ = (
        Index("ix_replicas_workload_id", "workload_id"),
        Index("ix_replicas_worker_id", "worker_id"),
    )

    id: Mapped[str] = mapped_column(String, primary_key=True)
    workload_id: Mapped[str] = mapped_column(ForeignKey("workloads.id"))
    worker_id: Mapped[str] = mapped_column(ForeignKey("workers.id"))
    generation: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONB)
    gpu_resource_ids: Mapped[list[str]] = mapped_column(ARRAY(String), default=list)
    claim_memory_mb: Mapped[int] = mapped_column(Integer, default=0)
    desired_state: Mapped[str] = mapped_column(String, default=DesiredState.RUN)
    state: Mapped[str] = mapped_column(String, default=ReplicaState.PENDING)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    log_tail: Mapped[str | None] = mapped_column(Text, nullable=True)
    port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    ready_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # The engine's own load at its agent's last report (migration 0009); None: not reported.
    engine_running: Mapped[int | None] = mapped_column(Integer, nullable=True)
    engine_waiting: Mapped[int | None] = mapped_column(Integer, nullable=True)
    kv_cache_usage: Mapped[float | None] = mapped_column(nullable=True)


class WorkloadDemand(Base):
    """What one Manager process's gateway sees of a workload's traffic, for the autoscaler."""

    __tablename__ = "workload_demand"

    manager_id: Mapped[str] = mapped_column(String, primary_key=True)
    workload_id: Mapped[str] = mapped_column(ForeignKey("workloads.id"), primary_key=True)
    in_flight: Mapped[int] = mapped_column(Integer)
    requests_per_s: Mapped[float] = mapped_column()
    # Requests in flight on average over the report's window (migration 0008).
    concurrency: Mapped[float] = mapped_column(default=0.0)
    last_request_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class UsageCount(Base):
    """Requests and tokens the gateway saw in one minute, per project, workload and key.

    No foreign keys: usage outlives the workload and key it counts (the workload's slug is kept
    for the report; a key's id stays resolvable, as keys are revoked, never deleted).
    """

    __tablename__ = "usage_counts"
    __table_args__ = (Index("usage_counts_project_minute", "project_id", "minute"),)

    project_id: Mapped[str] = mapped_column(String, primary_key=True)
    workload_id: Mapped[str] = mapped_column(String, primary_key=True)
    key_id: Mapped[str] = mapped_column(String, primary_key=True)
    minute: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    workload_slug: Mapped[str] = mapped_column(String)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    total_tokens: Mapped[int] = mapped_column(BigInteger, default=0)


class GpuPrice(Base):
    """The operator's hourly price for a GPU display name, for cost ceilings and the catalog."""

    __tablename__ = "gpu_prices"

    name: Mapped[str] = mapped_column(String, primary_key=True)
    usd_per_hour: Mapped[float] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Job(Base):
    """An async job: what was submitted, who runs it under which lease, and its result."""

    __tablename__ = "jobs"
    __table_args__ = (
        # The dispatcher's claim: the oldest unfinished jobs of a workload.
        Index(
            "jobs_unfinished",
            "workload_id",
            "created_at",
            postgresql_where=text("status IN ('queued', 'running')"),
        ),
        # The API's listing of a workload's jobs, whatever their status.
        Index("jobs_workload_created", "workload_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String, primary_key=True)  # a UUID, the client's job_id
    project_id: Mapped[str] = mapped_column(String)
    workload_id: Mapped[str] = mapped_column(String)
    key_id: Mapped[str] = mapped_column(String)
    kind: Mapped[str] = mapped_column(String)
    route: Mapped[str] = mapped_column(String)  # the sync twin it is sent to
    body: Mapped[bytes] = mapped_column(LargeBinary)
    content_type: Mapped[str] = mapped_column(String)
    context: Mapped[str | None] = mapped_column(Text, nullable=True)  # the caller's JSON, as sent
    status: Mapped[str] = mapped_column(String, default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_by: Mapped[str | None] = mapped_column(String, nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    result: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    result_content_type: Mapped[str | None] = mapped_column(String, nullable=True)
    result_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class WebhookDestination(Base):
    """Where a workload's job results are POSTed (migration 0012), signed with its own secret.

    The secret is kept in plain text because every delivery is signed with it; the API shows it
    once, when the destination is added, and only its prefix afterwards.
    """

    __tablename__ = "webhook_destinations"
    __table_args__ = (Index("webhook_destinations_workload", "workload_id"),)

    id: Mapped[str] = mapped_column(String, primary_key=True)  # whd_...
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    workload_id: Mapped[str] = mapped_column(ForeignKey("workloads.id"))
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(String)
    enabled: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class WebhookDelivery(Base):
    """One job's result on its way to one destination: its retry state and every attempt.

    ``next_attempt_at`` is when a pending delivery is due; a deliverer that claims one moves it
    past its lease (``claim_token`` says whose claim it is), so a process that dies mid-attempt
    leaves it to be sent again when the lease passes. Deleting the destination deletes its
    deliveries (ON DELETE CASCADE).
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        # The deliverers' claim: pending deliveries that are due, soonest first.
        Index(
            "webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
        Index("webhook_deliveries_workload", "workload_id", "created_at"),
        Index("webhook_deliveries_destination", "destination_id"),
    )

    id: Mapped[str] = mapped_column(String, primary_key=True)  # whdl_...
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    destination_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_destinations.id", ondelete="CASCADE")
    )
    workload_id: Mapped[str] = mapped_column(String)
    project_id: Mapped[str] = mapped_column(String)
    event: Mapped[str] = mapped_column(String)  # job.completed | job.failed
    status: Mapped[str] = mapped_column(String, default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    claim_token: Mapped[str | None] = mapped_column(String, nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # [{attempt, at, status_code, error, duration_ms}], oldest first.
    attempt_log: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class CustomBackend(Base):
    """A custom backend a tenant published (migration 0013): the slug workloads name as their
    ``backend``. Its name and description are its newest version's."""

    __tablename__ = "custom_backends"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    slug: Mapped[str] = mapped_column(String, primary_key=True)
    name: Mapped[str] = mapped_column(String)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class CustomBackendVersion(Base):
    """One published version of a custom backend: its manifest's facts and its package's digest.

    The package's bytes live in ``custom_backend_packages``, so listing versions never reads them.
    """

    __tablename__ = "custom_backend_versions"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "slug"],
            ["custom_backends.tenant_id", "custom_backends.slug"],
            ondelete="CASCADE",
        ),
        UniqueConstraint(
            "tenant_id", "slug", "version", name="custom_backend_versions_tenant_slug_version"
        ),
        # A backend's newest version, and its listing.
        Index("custom_backend_versions_newest", "tenant_id", "slug", "created_at"),
    )

    id: Mapped[str] = mapped_column(String, primary_key=True)  # cbv_...
    tenant_id: Mapped[str] = mapped_column(String)
    slug: Mapped[str] = mapped_column(String)
    version: Mapped[str] = mapped_column(String)
    name: Mapped[str] = mapped_column(String)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    task_type: Mapped[str] = mapped_column(String)  # "" means any task type
    entrypoint: Mapped[str] = mapped_column(String)
    requires_python: Mapped[str] = mapped_column(String)
    cpu_only: Mapped[bool] = mapped_column(default=False)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    archive_format: Mapped[str] = mapped_column(String)  # "tar.gz" or "zip"
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class CustomBackendPackageChunk(Base):
    """A piece of a version's package, in order of ``chunk``: uploads are written and downloads
    streamed a piece at a time, so neither holds a whole package in memory."""

    __tablename__ = "custom_backend_packages"

    version_id: Mapped[str] = mapped_column(
        ForeignKey("custom_backend_versions.id", ondelete="CASCADE"), primary_key=True
    )
    chunk: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
