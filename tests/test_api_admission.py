"""The control API's turns (manager.admission): a request past the limit waits, past its wait it
is answered 503 overloaded with Retry-After, and neither the agents' requests nor the API's
streams are held back by it."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from manager.notify import plain_postgres_url
from tests.support import (
    RunningManager,
    bearer,
    create_project,
    create_sdk_token,
    histogram_buckets,
    own_manager,
)

WORKLOAD = {
    "name": "Queued",
    "slug": "queued",
    "backend": "llamacpp",
    "model_name": "x",
    "config": {"command": "llama-server -m /models/x.gguf"},
    "execution_policy": "fixed",
    "execution_policy_config": {"replicas": 1},
}
INVENTORY = {"source": "none", "hostname": "cpu-box", "gpus": []}


@pytest.fixture
def one_at_a_time(tmp_path: Path) -> Iterator[RunningManager]:
    """A Manager that works on one API request at a time and lets the next wait 1 s."""
    with own_manager(tmp_path, api_max_concurrent=1, api_admission_wait_s=1.0) as running:
        yield running


@contextlib.asynccontextmanager
async def workload_row_locked(manager: RunningManager, workload_id: str) -> AsyncIterator[None]:
    """The workload's row locked by a transaction of the test's own: a PATCH of it waits in its
    route, holding its turn, until the block ends."""
    connection = await asyncpg.connect(plain_postgres_url(manager.database_url))
    try:
        async with connection.transaction():
            await connection.execute(
                "SELECT 1 FROM workloads WHERE id = $1 FOR UPDATE", workload_id
            )
            yield
    finally:
        await connection.close()


async def test_api_requests_past_the_limit_wait_then_are_shed_and_agents_are_not_held_back(
    one_at_a_time: RunningManager,
) -> None:
    manager = one_at_a_time
    with httpx.Client(base_url=manager.url, headers=bearer(manager.admin_token or "")) as admin:
        project = create_project(admin)["slug"]
        sdk = bearer(create_sdk_token(admin, project))
        made = admin.post("/api/admin/workers", json={"project": project, "name": "w"})
        assert made.status_code == 201, made.text
        agent = bearer(made.json()["token"])
    async with httpx.AsyncClient(base_url=manager.url, timeout=30) as client:
        created = await client.post(
            f"/api/projects/{project}/workloads", json=WORKLOAD, headers=sdk
        )
        assert created.status_code == 201, created.text
        workload_id = created.json()["id"]

        async with workload_row_locked(manager, workload_id):
            patch = asyncio.create_task(
                client.patch(
                    f"/api/workloads/{workload_id}", json={"description": "later"}, headers=sdk
                )
            )
            await asyncio.sleep(0.5)  # the PATCH has the one turn, and waits on the row
            assert not patch.done()
            shed = await client.get(f"/api/workloads/{workload_id}", headers=sdk)
            assert shed.status_code == 503, shed.text
            assert shed.json()["code"] == "overloaded"
            assert "API requests" in shed.json()["message"]
            assert int(shed.headers["retry-after"]) >= 1
            # The agent protocol has turns of its own: a heartbeat is answered meanwhile.
            beat = await client.post(
                "/api/agent/heartbeat",
                json={"address": "http://127.0.0.1:9", "inventory": INVENTORY, "replicas": []},
                headers=agent,
            )
            assert beat.status_code == 200, beat.text
            # A request that comes while the turn is taken waits for it, within its wait.
            waiting = asyncio.create_task(client.get(f"/api/workloads/{workload_id}", headers=sdk))
            await asyncio.sleep(0.3)
            assert not waiting.done()
        patched = await patch
        assert patched.status_code == 200, patched.text
        assert patched.json()["description"] == "later"
        answered = await waiting
        assert answered.status_code == 200, answered.text
        # The shed GET changed nothing and the Manager serves on.
        again = await client.get(f"/api/workloads/{workload_id}", headers=sdk)
        assert again.json()["description"] == "later"
    # Each wait was timed: the shed GET's full second and the waiting one's part of it, beside
    # the turns taken at once.
    metrics = httpx.get(
        f"{manager.url}/metrics", headers=bearer(manager.admin_token or ""), timeout=10
    ).text
    waits = histogram_buckets(metrics, "inferencekey_admission_wait_seconds", kind="api")
    assert waits[0.001] >= 3  # the creates, the PATCH and the last GET: a free turn
    assert waits[math.inf] - waits[0.5] >= 1  # the shed GET: its whole second
    assert waits[math.inf] - waits[0.1] >= 2  # and the one that waited for the PATCH
    # And each turn's hold: the PATCH held its turn while it waited on the locked row (over
    # half a second); the heartbeat held an agent slot, briefly (no row of it was locked).
    holds = histogram_buckets(metrics, "inferencekey_admission_hold_seconds", kind="api")
    assert holds[math.inf] - holds[0.5] >= 1, holds
    assert holds[math.inf] >= 4  # the creates, the PATCH and the two GETs answered
    agent_holds = histogram_buckets(metrics, "inferencekey_admission_hold_seconds", kind="agent")
    assert agent_holds[math.inf] >= 1 and agent_holds[math.inf] == agent_holds[2.5], agent_holds


async def test_an_open_stream_gives_its_turn_back(one_at_a_time: RunningManager) -> None:
    manager = one_at_a_time
    with httpx.Client(base_url=manager.url, headers=bearer(manager.admin_token or "")) as admin:
        project = create_project(admin)["slug"]
        sdk = bearer(create_sdk_token(admin, project))
    async with httpx.AsyncClient(base_url=manager.url, timeout=30, headers=sdk) as client:
        created = await client.post(f"/api/projects/{project}/workloads", json=WORKLOAD)
        assert created.status_code == 201, created.text
        stream = f"/api/projects/{project}/workloads/queued/readiness-events"
        async with client.stream("GET", stream) as events:
            assert events.status_code == 200
            first = await anext(events.aiter_lines())
            assert first  # the snapshot frame: the stream is open, and stays open
            for _ in range(3):  # one turn, taken and given back by each
                listed = await client.get(f"/api/projects/{project}/workloads")
                assert listed.status_code == 200, listed.text
