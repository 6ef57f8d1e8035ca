"""The reconciler's periodic resync reads the whole fleet beside the passes, not in one of them
(manager/reconciler.py, `Reconciler._resynced`): passes go on placing what changes while it
reads, and the copy it read is brought up to date before any pass plans from it.

A Manager with no reconciler of its own serves the API and the agent protocol; the test drives
a `Reconciler` pass by pass, and holds the resync's read after its view is taken.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from manager.db.session import make_engine, make_sessionmaker
from manager.fleet import Fleet
from manager.notify import NotificationHub, plain_postgres_url
from manager.reconciler import Reconciler
from tests.support import (
    RunningManager,
    bearer,
    create_project,
    create_sdk_token,
    own_manager,
    wait_until_async,
)
from tests.test_incremental_reconcile import inventory, workload


@dataclass
class Setup:
    manager: RunningManager
    project: str
    sdk: dict[str, str]
    agent: dict[str, str]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    """A Manager with no reconciler (the test drives one), a project, and a worker."""
    with own_manager(tmp_path, run_reconciler=False) as manager:
        with httpx.Client(base_url=manager.url, headers=bearer(manager.admin_token or "")) as admin:
            project = create_project(admin)["slug"]
            sdk = bearer(create_sdk_token(admin, project))
            created = admin.post("/api/admin/workers", json={"project": project, "name": "two"})
            assert created.status_code == 201, created.text
        yield Setup(manager, project, sdk, bearer(created.json()["token"]))


async def test_passes_go_on_while_the_resync_reads_and_its_copy_misses_nothing(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager, project, sdk, agent = setup.manager, setup.project, setup.sdk, setup.agent
    database = await asyncpg.connect(plain_postgres_url(manager.database_url))
    # The reconciler's pool as the Manager makes it: a pass and the resync's read, one each.
    engine = make_engine(manager.database_url, pool_size=1, max_overflow=1, pool_timeout_s=5)
    hub = NotificationHub(manager.database_url)
    await hub.start()
    # No resync until the test makes one due.
    settings = dataclasses.replace(manager.settings, reconcile_resync_s=3600.0)
    reconciler = Reconciler(make_sessionmaker(engine), hub, settings)
    client = httpx.AsyncClient(base_url=manager.url, timeout=30)

    async def create(slug: str) -> str:
        answer = await client.post(
            f"/api/projects/{project}/workloads", json=workload(slug), headers=sdk
        )
        assert answer.status_code == 201, answer.text
        return str(answer.json()["id"])

    async def gpus(workload_id: str) -> list[list[str]]:
        """The GPUs of each of the workload's replicas meant to run."""
        rows = await database.fetch(
            "SELECT gpu_resource_ids FROM replicas"
            " WHERE workload_id = $1 AND desired_state = 'run'",
            workload_id,
        )
        return [list(row["gpu_resource_ids"]) for row in rows]

    async def desired(workload_id: str) -> int:
        query = "SELECT desired_replicas FROM workloads WHERE id = $1"
        return int(await database.fetchval(query, workload_id))

    reported: list[dict[str, Any]] = []

    async def a_pass() -> None:
        """A heartbeat that reports every replica assigned ready, then a reconcile pass."""
        answer = await client.post(
            "/api/agent/heartbeat",
            json={"inventory": inventory(2), "replicas": reported},
            headers=agent,
        )
        assert answer.status_code == 200, answer.text
        reported[:] = [
            {"id": each["id"], "state": "ready", "port": 28000 + i}
            for i, each in enumerate(answer.json()["replicas"])
        ]
        await asyncio.wait_for(reconciler.reconcile_once(), 10)

    async def ready(workload_id: str) -> bool:
        await a_pass()
        query = "SELECT phase FROM workloads WHERE id = $1"
        return bool(await database.fetchval(query, workload_id) == "ready")

    try:
        await a_pass()
        first = await create("first")
        await wait_until_async(lambda: ready(first), 10, "first was never ready")
        for _ in range(3):  # the passes that read back what the last ones wrote
            await a_pass()
        # Written behind the Manager's back: no notice names it, so only a resync finds it.
        await database.execute(
            "UPDATE workloads SET execution_policy_config = '{\"replicas\": 2}' WHERE id = $1",
            first,
        )

        # The resync's read takes its view of the database, then waits for the test.
        taken, release = asyncio.Event(), asyncio.Event()
        read = Fleet.read

        async def read_when_released(session: AsyncSession) -> Fleet:
            await session.execute(text("SELECT 1"))  # its view, from here on
            taken.set()
            await release.wait()
            return await read(session)

        monkeypatch.setattr(Fleet, "read", read_when_released)
        settings.reconcile_resync_s = 0.0  # due: the next pass begins it, and does not wait
        await a_pass()
        await asyncio.wait_for(taken.wait(), 10)
        settings.reconcile_resync_s = 3600.0  # and no other after it

        # While it reads, passes go on: a new workload takes the second GPU.
        second = await create("second")
        await wait_until_async(
            lambda: ready(second), 10, "no pass placed a workload during the resync"
        )
        assert await desired(first) == 1, "the unnamed change was read before the resync"

        release.set()

        async def found() -> bool:
            await a_pass()
            return await desired(first) == 2

        await wait_until_async(found, 10, "the resync never found the unnamed change")
        # Its copy was brought up to date before a pass planned from it: the second
        # workload's replica, placed after the resync's view was taken, holds its GPU, so the
        # first finds no room for its second replica.
        for _ in range(3):
            await a_pass()
            held = await gpus(first) + await gpus(second)
            assert len(held) == 2, held
            assert len({gpu for each in held for gpu in each}) == 2, held

        # A resync held again, then the reconciler closed (as at shutdown): the read is
        # cancelled and its transaction gone before close returns.
        taken.clear()
        release.clear()
        settings.reconcile_resync_s = 0.0
        await a_pass()
        await asyncio.wait_for(taken.wait(), 10)
        await asyncio.wait_for(reconciler.close(), 10)
        in_transaction = await database.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND state LIKE 'idle in transaction%'"
        )
        assert in_transaction == 0
    finally:
        await client.aclose()
        await hub.stop()
        await reconciler.close()
        await engine.dispose()
        await database.close()
