"""The custom-backend registry: a tenant's backends, their versions, and each version's package.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "custom_backends",
        sa.Column("tenant_id", sa.String(), sa.ForeignKey("tenants.id"), primary_key=True),
        sa.Column("slug", sa.String(), primary_key=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
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
    op.create_table(
        "custom_backend_versions",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("tenant_id", sa.String(), nullable=False),
        sa.Column("slug", sa.String(), nullable=False),
        sa.Column("version", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("task_type", sa.String(), nullable=False),
        sa.Column("entrypoint", sa.String(), nullable=False),
        sa.Column("requires_python", sa.String(), nullable=False),
        sa.Column("cpu_only", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("archive_format", sa.String(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id", "slug"],
            ["custom_backends.tenant_id", "custom_backends.slug"],
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "tenant_id", "slug", "version", name="custom_backend_versions_tenant_slug_version"
        ),
    )
    # A backend's newest version (what validation and placement read), and its listing.
    op.create_index(
        "custom_backend_versions_newest",
        "custom_backend_versions",
        ["tenant_id", "slug", "created_at"],
    )
    op.create_table(
        "custom_backend_packages",
        sa.Column(
            "version_id",
            sa.String(),
            sa.ForeignKey("custom_backend_versions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("chunk", sa.Integer(), primary_key=True),
        sa.Column("data", sa.LargeBinary(), nullable=False),
    )
    # Packages are compressed archives already: store the chunks as they are, uncompressed.
    op.execute("ALTER TABLE custom_backend_packages ALTER COLUMN data SET STORAGE EXTERNAL")


def downgrade() -> None:
    op.drop_table("custom_backend_packages")
    op.drop_table("custom_backend_versions")
    op.drop_table("custom_backends")
