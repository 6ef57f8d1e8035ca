"""Demand for the autoscaler: average concurrency over a report's window, and the last request.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "workload_demand",
        sa.Column("concurrency", sa.Float(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column(
        "workload_demand",
        sa.Column("last_request_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_column("workload_demand", "last_request_at")
    op.drop_column("workload_demand", "concurrency")
