"""A project's live workloads in creation order: the keyset of the workload listing's pages.

``GET /api/projects/{project}/workloads?limit=N&after=...`` reads the live workloads of one project
after a (created_at, id) cursor, in that order. Without this index Postgres found the project's
live workloads through ``uq_workloads_project_slug_live`` (ordered by slug) and sorted all of them
for every page; with it a page reads its rows in order and stops after the limit.
(tests/test_query_plans.py plans every query the loops run at fleet scale.)

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "workloads_project_live_created",
        "workloads",
        ["project_id", "created_at", "id"],
        postgresql_where=sa.text("deleted_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("workloads_project_live_created", table_name="workloads")
