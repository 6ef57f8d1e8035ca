"""Connections the database drops (a restart, a failover, an operator's pg_terminate_backend)
cost at most a 503 with Retry-After per pooled connection, never a 500, and the Manager goes on
with fresh ones: the pool does not ping before each checkout (manager/db/session.py)."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.support import (
    SERVER_URL,
    bearer,
    create_project,
    create_sdk_token,
    own_manager,
    run_sql,
)

DROP_OTHERS = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
"""


DROP_IN = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = '%s' AND pid <> pg_backend_pid()
"""


def unavailable(answers: list[httpx.Response]) -> None:
    """Each 503 of these says the database is unavailable, and when to retry."""
    for answer in answers:
        if answer.status_code == 503:
            assert answer.headers.get("Retry-After"), answer.headers
            assert answer.json()["code"] == "database_unavailable", answer.text


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


def test_agent_requests_on_the_direct_pool_are_503s_while_the_database_is_closed(
    tmp_path: Path,
) -> None:
    """The delta heartbeat and the long-poll's credential check run on a pool of their own
    (manager/db/direct.py). Its dropped connections cost at most a 503 each, and while the
    database refuses new ones their requests are 503s with Retry-After, never 500s; then they
    are served again."""
    with own_manager(tmp_path, agent_max_concurrent_db=2) as manager:
        admin = httpx.Client(base_url=manager.url, headers=bearer(manager.admin_token or ""))
        project = create_project(admin)["slug"]
        created = admin.post("/api/admin/workers", json={"project": project, "name": "w0"})
        assert created.status_code == 201, created.text
        agent = httpx.Client(
            base_url=manager.url, headers=bearer(created.json()["token"]), timeout=10
        )
        inventory = {"source": "simulated", "gpus": []}
        report = {"address": "http://127.0.0.1:9", "inventory": inventory, "replicas": []}
        assert agent.post("/api/agent/heartbeat", json=report).status_code == 200
        delta = {"address": "http://127.0.0.1:9"}
        poll = "/api/agent/assignments?version=stale&wait=0"

        def both() -> list[httpx.Response]:
            return [agent.post("/api/agent/heartbeat", json=delta), agent.get(poll)]

        assert [a.status_code for a in both()] == [200, 200]
        # Dropped connections: at most a 503 for each (the direct pool's two, the engine's
        # where an answer is read again), then fresh ones serve.
        assert drop_every_connection(manager.database_url) > 0
        answers = both() + both() + both() + both()
        statuses = [a.status_code for a in answers]
        assert set(statuses) <= {200, 503}, [a.text for a in answers]
        assert statuses.count(503) <= 4 and statuses[-2:] == [200, 200], statuses
        unavailable(answers)

        name = urlsplit(manager.database_url).path.lstrip("/")
        run_sql(SERVER_URL, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            run_sql(SERVER_URL, DROP_IN % name)
            refused = both() + both()
        finally:
            run_sql(SERVER_URL, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        assert [a.status_code for a in refused] == [503] * 4, [a.text for a in refused]
        unavailable(refused)

        deadline = time.monotonic() + 15
        while [a.status_code for a in both()] != [200, 200]:
            assert time.monotonic() < deadline, "not served again after the database reopened"
            time.sleep(0.2)
        admin.close()
        agent.close()
