"""A workload's endpoint toggles: the routes (and the async ``jobs`` surface) switched off.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # What is off, not what is on: every workload, old or new, starts with all its task type's
    # routes and jobs on, and a constant default rewrites no rows.
    op.add_column(
        "workloads",
        sa.Column(
            "endpoints_off",
            postgresql.ARRAY(sa.String()),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
    )


def downgrade() -> None:
    op.drop_column("workloads", "endpoints_off")
