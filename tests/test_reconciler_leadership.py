"""Any number of Managers share one database; exactly one leads the reconcile loop at a time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from manager.reconciler import LEADER_LOCK_KEY
from manager.settings import Settings
from tests.support import (
    RunningManager,
    bearer,
    create_database,
    create_project,
    create_sdk_token,
    drop_database,
    free_port,
    new_admin_token,
    start_manager,
    wait_until,
)

# pg_locks shows a bigint advisory key split in two: the high half in classid, the low in objid.
LEADER_LOCKS = """
SELECT pid FROM pg_locks
WHERE locktype = 'advisory' AND granted
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND ((classid::bigint << 32) | objid::bigint) = $1
"""


RECONCILE_INTERVAL_S = Settings().reconcile_interval_s  # the default: how often followers try


def leader_pids(database_url: str) -> list[int]:
    """Backend pids holding the leader lock in this database (not the session Manager's)."""

    async def query() -> list[int]:
        connection = await asyncpg.connect(database_url)
        try:
            return [row["pid"] for row in await connection.fetch(LEADER_LOCKS, LEADER_LOCK_KEY)]
        finally:
            await connection.close()

    return asyncio.run(query())


class Cluster:
    """Managers started one after another on one fresh database, with one admin token."""

    def __init__(self, tmp_path: Path) -> None:
        self.database_url = create_database()
        self.admin_token = new_admin_token()
        self.tmp_path = tmp_path
        self.managers: list[RunningManager] = []

    def start(self) -> RunningManager:
        settings = Settings(
            port=free_port(),
            database_url=self.database_url,
            data_dir=self.tmp_path / f"manager-{len(self.managers)}",
            admin_token=self.admin_token,
        )
        self.managers.append(start_manager(settings))
        return self.managers[-1]

    def close(self) -> None:
        for running in self.managers:
            if running.thread.is_alive():
                running.stop()
        drop_database(self.database_url)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(tmp_path)
    yield running
    running.close()


def create_workload(manager: RunningManager, project: str, token: str, slug: str) -> None:
    body = {
        "name": slug,
        "slug": slug,
        "backend": "vllm",
        "model_name": "m",
        "config": {"command": "vllm serve m"},
        "execution_policy": "fixed",
        "execution_policy_config": {"replicas": 1},
    }
    response = httpx.post(
        f"{manager.url}/api/projects/{project}/workloads", json=body, headers=bearer(token)
    )
    assert response.status_code == 201, response.text
    assert response.json()["status"]["phase"] == "scheduling"


def wait_reconciled(manager: RunningManager, token: str, slug: str, timeout: float) -> dict:
    def phase() -> dict | None:
        status = httpx.get(f"{manager.url}/api/workloads/{slug}", headers=bearer(token)).json()
        return status["status"] if status["status"]["phase"] != "scheduling" else None

    return wait_until(phase, timeout, f"{slug} was never reconciled", interval=0.1)


def terminate(database_url: str, pid: int) -> None:
    async def run() -> None:
        connection = await asyncpg.connect(database_url)
        try:
            await connection.execute("SELECT pg_terminate_backend($1)", pid)
        finally:
            await connection.close()

    asyncio.run(run())


def test_one_manager_leads_and_workloads_created_on_another_get_reconciled(
    cluster: Cluster,
) -> None:
    first = cluster.start()
    [leader_pid] = wait_until(
        lambda: leader_pids(cluster.database_url), 10, "the first Manager never took the lead"
    )
    second = cluster.start()
    time.sleep(2.5 * RECONCILE_INTERVAL_S)  # more than one of the second Manager's attempts
    assert leader_pids(cluster.database_url) == [leader_pid]

    with httpx.Client(base_url=second.url, headers=bearer(cluster.admin_token)) as admin:
        project = create_project(admin)["slug"]
        token = create_sdk_token(admin, project)
    create_workload(second, project, token, "via-follower")
    status = wait_reconciled(second, token, "via-follower", timeout=5)
    assert status["phase"] == "unschedulable"
    assert "no worker is registered for this project or the shared pool" in status["reason"]

    first.stop()
    [new_leader_pid] = wait_until(
        lambda: (pids := leader_pids(cluster.database_url)) and pids != [leader_pid] and pids,
        5,
        "the second Manager never took over the lead",
        interval=0.1,
    )
    assert new_leader_pid != leader_pid
    create_workload(second, project, token, "after-takeover")
    status = wait_reconciled(second, token, "after-takeover", timeout=5)
    assert status["phase"] == "unschedulable"


def test_a_leader_that_loses_its_database_connection_is_replaced(cluster: Cluster) -> None:
    cluster.start()
    [old_pid] = wait_until(lambda: leader_pids(cluster.database_url), 10, "nobody took the lead")
    second = cluster.start()
    terminate(cluster.database_url, old_pid)  # as when the leader's host drops off the network
    [new_pid] = wait_until(
        lambda: (pids := leader_pids(cluster.database_url)) and pids != [old_pid] and pids,
        3 * RECONCILE_INTERVAL_S,
        "nobody took the lead again",
        interval=0.1,
    )
    time.sleep(2.5 * RECONCILE_INTERVAL_S)
    assert leader_pids(cluster.database_url) == [new_pid]

    with httpx.Client(base_url=second.url, headers=bearer(cluster.admin_token)) as admin:
        project = create_project(admin)["slug"]
        token = create_sdk_token(admin, project)
    create_workload(second, project, token, "after-failover")
    assert wait_reconciled(second, token, "after-failover", timeout=5)["phase"] == "unschedulable"
