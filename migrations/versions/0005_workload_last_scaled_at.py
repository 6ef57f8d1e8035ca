"""When a workload's wanted replica count last changed, for the scaling policies' cool-downs.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable without a default: adding it rewrites no rows, and NULL reads as "never scaled".
    op.add_column(
        "workloads", sa.Column("last_scaled_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("workloads", "last_scaled_at")
