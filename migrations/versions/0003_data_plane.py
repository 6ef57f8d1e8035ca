"""Data plane: the gateway's credential toward each agent, and demand figures per workload.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Presented by Manager gateways to the worker's agent proxy; handed to the agent over its
    # authenticated heartbeat. Every Manager process must be able to send it, so it is kept.
    op.add_column("workers", sa.Column("gateway_secret", sa.String(), nullable=True))
    op.execute("UPDATE workers SET gateway_secret = md5(random()::text) || md5(random()::text)")
    op.alter_column("workers", "gateway_secret", nullable=False)
    op.create_table(
        "workload_demand",
        sa.Column("manager_id", sa.String(), primary_key=True),
        sa.Column("workload_id", sa.String(), sa.ForeignKey("workloads.id"), primary_key=True),
        sa.Column("in_flight", sa.Integer(), nullable=False),
        sa.Column("requests_per_s", sa.Float(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
    )


def downgrade() -> None:
    op.drop_table("workload_demand")
    op.drop_column("workers", "gateway_secret")
