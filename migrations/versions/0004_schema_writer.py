"""Which Manager release last migrated the database, so an older one can say what to run.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "schema_writer",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("manager_version", sa.String(), nullable=False),
        sa.Column("revision", sa.String(), nullable=False),
        sa.Column(
            "written_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("id = 1", name="ck_schema_writer_one_row"),
    )


def downgrade() -> None:
    op.drop_table("schema_writer")
