"""An agent's heartbeat never waits for a reconcile pass ("Locking" in docs/DESIGN.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from manager.db.session import make_engine, make_sessionmaker
from manager.notify import NotificationHub
from manager.planning import Action, CreateReplica, WorkloadView
from manager.reconciler import Reconciler
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
)

HEARTBEAT = {
    "inventory": {
        "source": "simulated",
        "gpus": [
            {"index": 0, "uuid": "GPU-guard-0", "name": "NVIDIA A100", "memory_total_mb": 81920}
        ],
    },
    "replicas": [],
}
WORKLOAD = {
    "name": "guarded",
    "slug": "guarded",
    "backend": "vllm",
    "model_name": "m",
    "config": {"command": "vllm serve m"},
    "execution_policy": "fixed",
    "execution_policy_config": {"replicas": 1},
}


@pytest.fixture
def lone_manager(tmp_path: Path) -> Iterator[RunningManager]:
    """A Manager on a database of its own and without a reconciler: the test drives one."""
    database_url = create_database()
    running = start_manager(
        Settings(
            port=free_port(),
            database_url=database_url,
            data_dir=tmp_path,
            admin_token=new_admin_token(),
            run_reconciler=False,
        )
    )
    yield running
    running.stop()
    drop_database(database_url)


async def test_a_heartbeat_completes_while_a_pass_holds_its_write_transaction_open(
    lone_manager: RunningManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    with httpx.Client(
        base_url=lone_manager.url, headers=bearer(lone_manager.admin_token or "")
    ) as admin:
        project = create_project(admin)["slug"]
        sdk_token = create_sdk_token(admin, project)
        created = admin.post("/api/admin/workers", json={"project": project, "name": "guard"})
        assert created.status_code == 201, created.text
        agent = bearer(created.json()["token"])

    engine = make_engine(lone_manager.database_url)
    reconciler = Reconciler(
        make_sessionmaker(engine),
        NotificationHub(lone_manager.database_url),
        lone_manager.settings,
    )
    # Pause the pass inside the transaction that places the replica on this very worker, once
    # the row is written: it holds the workload's row, and the insert's key-share lock on the
    # worker's row, until it commits.
    inside, release = asyncio.Event(), asyncio.Event()
    write = reconciler._write

    async def write_then_pause(
        session: AsyncSession,
        now: Any,
        workload: WorkloadView,
        action: Action,
        touched: set[str],
    ) -> dict[str, Any]:
        status = await write(session, now, workload, action, touched)
        if isinstance(action, CreateReplica):
            await session.flush()
            inside.set()
            await release.wait()
        return status

    monkeypatch.setattr(reconciler, "_write", write_then_pause)

    async with httpx.AsyncClient(base_url=lone_manager.url, timeout=30) as client:
        registered = await client.post("/api/agent/heartbeat", json=HEARTBEAT, headers=agent)
        assert registered.status_code == 200, registered.text
        workload = await client.post(
            f"/api/projects/{project}/workloads", json=WORKLOAD, headers=bearer(sdk_token)
        )
        assert workload.status_code == 201, workload.text

        reconcile = asyncio.create_task(reconciler.reconcile_once())
        try:
            await asyncio.wait_for(inside.wait(), timeout=15)
            during = await asyncio.wait_for(
                client.post("/api/agent/heartbeat", json=HEARTBEAT, headers=agent), timeout=5
            )
            assert during.status_code == 200, during.text
            # The steady heartbeat, which reports nothing new, is one statement on the same row.
            renewed = await asyncio.wait_for(
                client.post("/api/agent/heartbeat", json={}, headers=agent), timeout=5
            )
            assert renewed.status_code == 200, renewed.text
            assert not reconcile.done(), "the pass was to be still open"
        finally:
            release.set()
            completed = await reconcile
            await engine.dispose()
        assert completed

        after = await client.post("/api/agent/heartbeat", json=HEARTBEAT, headers=agent)
    [assigned] = after.json()["replicas"]
    assert assigned["workload_slug"] == "guarded"
