"""Token usage per project, workload, key and minute, as the gateway records it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_counts",
        sa.Column("project_id", sa.String(), primary_key=True),
        sa.Column("workload_id", sa.String(), primary_key=True),
        sa.Column("key_id", sa.String(), primary_key=True),
        sa.Column("minute", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("workload_slug", sa.String(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("total_tokens", sa.BigInteger(), nullable=False),
    )
    # Reports read one project's rows over a time range.
    op.create_index("usage_counts_project_minute", "usage_counts", ["project_id", "minute"])


def downgrade() -> None:
    op.drop_table("usage_counts")
