"""Connections the database drops (a restart, a failover, an operator's pg_terminate_backend)
cost at most a 503 with Retry-After per pooled connection, never a 500, and the Manager goes on
with fresh ones: the pool does not ping before each checkout (manager/db/session.py)."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support import bearer, create_project, create_sdk_token, own_manager, run_sql

DROP_OTHERS = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
"""


def drop_every_connection(database_url: str) -> int:
    return int(run_sql(database_url, DROP_OTHERS)[0][0])


def test_dropped_connections_are_503s_with_retry_after_then_served_again(tmp_path: Path) -> None:
    with own_manager(tmp_path, db_pool_size=4, db_max_overflow=0) as manager:
        admin = httpx.Client(base_url=manager.url, headers=bearer(manager.admin_token or ""))
        project = create_project(admin)["slug"]
        api = httpx.Client(
            base_url=manager.url, headers=bearer(create_sdk_token(admin, project)), timeout=10
        )
        path = f"/api/projects/{project}/workloads"
        # Every pooled connection in use once, so each is there to be dropped.
        for _ in range(8):
            assert api.get(path).status_code == 200

        assert drop_every_connection(manager.database_url) > 0

        answers = [api.get(path) for _ in range(12)]
        statuses = [a.status_code for a in answers]
        assert set(statuses) <= {200, 503}, [a.text for a in answers]
        for answer in answers:
            if answer.status_code == 503:
                assert answer.headers.get("Retry-After"), answer.headers
                assert answer.json()["code"] == "database_unavailable"
        # At most one 503 per pooled connection, then fresh connections serve.
        assert statuses.count(503) <= 4, statuses
        assert statuses[-4:] == [200] * 4, statuses
        admin.close()
        api.close()
