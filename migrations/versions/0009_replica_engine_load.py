"""A ready replica's engine load as its agent last reported it (the engine's own /metrics).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: adding them rewrites no rows; NULL reads as "not reported".
    op.add_column("replicas", sa.Column("engine_running", sa.Integer(), nullable=True))
    op.add_column("replicas", sa.Column("engine_waiting", sa.Integer(), nullable=True))
    op.add_column("replicas", sa.Column("kv_cache_usage", sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column("replicas", "kv_cache_usage")
    op.drop_column("replicas", "engine_waiting")
    op.drop_column("replicas", "engine_running")
