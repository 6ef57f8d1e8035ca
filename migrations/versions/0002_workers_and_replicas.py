"""Workers, their GPUs, and the replicas placed on them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_NOW = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("project_id", sa.String(), sa.ForeignKey("projects.id"), nullable=True),
        sa.Column("token_id", sa.String(8), sa.ForeignKey("tokens.id"), nullable=False),
        sa.Column("state", sa.String(), nullable=False, server_default="registered"),
        sa.Column("state_reason", sa.Text(), nullable=True),
        sa.Column("address", sa.String(), nullable=True),
        sa.Column("inventory", postgresql.JSONB(), nullable=True),
        sa.Column("simulated", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("last_heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
    )
    op.create_index("ix_workers_token_id", "workers", ["token_id"], unique=True)
    op.create_table(
        "gpu_resources",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("worker_id", sa.String(), sa.ForeignKey("workers.id"), nullable=False),
        sa.Column("uuid", sa.String(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("memory_total_mb", sa.Integer(), nullable=False),
        sa.Column("memory_used_mb", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("utilization_pct", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("simulated", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("present", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.UniqueConstraint("worker_id", "uuid", name="uq_gpu_resources_worker_uuid"),
    )
    op.create_table(
        "replicas",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("workload_id", sa.String(), sa.ForeignKey("workloads.id"), nullable=False),
        sa.Column("worker_id", sa.String(), sa.ForeignKey("workers.id"), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("spec", postgresql.JSONB(), nullable=False),
        sa.Column(
            "gpu_resource_ids", postgresql.ARRAY(sa.String()), nullable=False, server_default="{}"
        ),
        sa.Column("claim_memory_mb", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("desired_state", sa.String(), nullable=False, server_default="run"),
        sa.Column("state", sa.String(), nullable=False, server_default="pending"),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("log_tail", sa.Text(), nullable=True),
        sa.Column("port", sa.Integer(), nullable=True),
        sa.Column("restarts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=_NOW, nullable=False),
        sa.Column("ready_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("desired_state IN ('run', 'stop')", name="ck_replicas_desired_state"),
    )
    op.create_index("ix_replicas_workload_id", "replicas", ["workload_id"])
    op.create_index("ix_replicas_worker_id", "replicas", ["worker_id"])
    op.add_column(
        "workloads", sa.Column("desired_replicas", sa.Integer(), nullable=False, server_default="0")
    )
    op.add_column(
        "workloads", sa.Column("ready_replicas", sa.Integer(), nullable=False, server_default="0")
    )


def downgrade() -> None:
    op.drop_column("workloads", "ready_replicas")
    op.drop_column("workloads", "desired_replicas")
    op.drop_table("replicas")
    op.drop_table("gpu_resources")
    op.drop_table("workers")
