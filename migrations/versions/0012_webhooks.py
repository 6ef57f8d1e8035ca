"""Webhook destinations of a workload, the deliveries of job results to them, and the index
that lists a workload's jobs.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_destinations",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("project_id", sa.String(), sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("workload_id", sa.String(), sa.ForeignKey("workloads.id"), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret", sa.String(), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
    )
    op.create_index("webhook_destinations_workload", "webhook_destinations", ["workload_id"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column(
            "job_id", sa.String(), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "destination_id",
            sa.String(),
            sa.ForeignKey("webhook_destinations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("workload_id", sa.String(), nullable=False),
        sa.Column("project_id", sa.String(), nullable=False),
        sa.Column("event", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("claim_token", sa.String(), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column(
            "attempt_log",
            postgresql.JSONB(),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        # One delivery per job and destination, however often a job's end is recorded.
        sa.UniqueConstraint("job_id", "destination_id", name="webhook_deliveries_job_destination"),
    )
    # The deliverers' claim: pending deliveries that are due, soonest first.
    op.create_index(
        "webhook_deliveries_due",
        "webhook_deliveries",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    # The API's listings: a workload's deliveries, newest first; a destination's pending ones.
    op.create_index(
        "webhook_deliveries_workload", "webhook_deliveries", ["workload_id", "created_at"]
    )
    op.create_index("webhook_deliveries_destination", "webhook_deliveries", ["destination_id"])
    # The API's listing of a workload's jobs, newest first, whatever their status
    # (jobs_unfinished, of 0010, covers only the queued and running ones).
    op.create_index("jobs_workload_created", "jobs", ["workload_id", "created_at"])


def downgrade() -> None:
    op.drop_index("jobs_workload_created", table_name="jobs")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_destinations")
