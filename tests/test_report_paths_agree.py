"""A report stored by the quick path (``workers.record_report_quickly``: one or two statements
on the direct pool) leaves the rows, events and notices the long way
(``workers.record_heartbeat`` in an ORM session) leaves for the same report.

Two workers in two projects, each with one workload's replica, get the same sequence of
reports through the real heartbeat route: one's stored by whichever way the Manager picks (the
quick one, where it can: the test checks it did), the other's always the long way. After each
report the two workers' rows, events and notices must be the same, ids aside.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ik_contracts.protocol import REPORTED_STATES
from manager.notify import plain_postgres_url
from manager.services import workers
from tests.support import RunningManager, own_manager
from tests.test_agent_protocol_load import (
    DELTA,
    WORKLOAD,
    agent_and_sdk,
    full,
    gpu_inventory,
    heartbeat,
    listen,
)

# The columns a report writes, and those that say when (compared as "changed or not").
REPORTED = (
    "state",
    "reason",
    "port",
    "log_tail",
    "restarts",
    "engine_running",
    "engine_waiting",
    "kv_cache_usage",
)
GPU_COLUMNS = ("index", "name", "memory_total_mb", "memory_used_mb", "utilization_pct")
SETTLE_S = 0.2  # for the step's notices to arrive


@pytest.fixture
def own(tmp_path: Path) -> Iterator[RunningManager]:
    with own_manager(tmp_path) as running:
        yield running


class Side:
    """One worker, its replica, and what its rows looked like after the last report."""

    def __init__(self, agent: Any, worker_id: str, workload_id: str, replica_id: str) -> None:
        self.agent = agent
        self.worker_id = worker_id
        self.workload_id = workload_id
        self.replica_id = replica_id
        self.stamps: dict[str, datetime | None] = {}
        self.notices_seen = 0

    def hidden(self, text: str) -> str:
        for value, name in (
            (self.replica_id, "<replica>"),
            (self.worker_id, "<worker>"),
            (self.workload_id, "<workload>"),
        ):
            text = text.replace(value, name)
        return text

    async def snapshot(self, connection: asyncpg.Connection, heard: list[str]) -> dict[str, Any]:
        """What the last report left, ids hidden; timestamps as whether they moved."""
        replica = await connection.fetchrow("SELECT * FROM replicas WHERE id = $1", self.replica_id)
        gpus = await connection.fetch(
            "SELECT * FROM gpu_resources WHERE worker_id = $1 ORDER BY index", self.worker_id
        )
        worker = await connection.fetchrow(
            "SELECT state, inventory, last_heartbeat_at FROM workers WHERE id = $1", self.worker_id
        )
        events = await connection.fetch(
            "SELECT kind, message, data FROM workload_events WHERE workload_id = $1"
            " AND kind = ANY($2) ORDER BY id",
            self.workload_id,
            [f"replica_{state}" for state in REPORTED_STATES],
        )
        stamps = {
            "replica updated_at": replica["updated_at"],
            "replica ready_at": replica["ready_at"],
            "worker last_heartbeat_at": worker["last_heartbeat_at"],
            **{f"gpu {g['index']} updated_at": g["updated_at"] for g in gpus},
        }
        moved = {key: stamps[key] != self.stamps.get(key) for key in stamps}
        self.stamps = stamps
        notices = heard.count(self.workload_id) - self.notices_seen
        self.notices_seen += notices
        return {
            "replica": {column: replica[column] for column in REPORTED},
            "ready_at set": replica["ready_at"] is not None,
            "gpus": [{column: g[column] for column in GPU_COLUMNS} for g in gpus],
            "worker": (worker["state"], json.loads(worker["inventory"])),
            "events": [
                (e["kind"], self.hidden(e["message"]), self.hidden(e["data"])) for e in events
            ],
            "moved": moved,
            "workload notices": notices,
            "worker notices": heard.count(self.worker_id),
        }


class Ways:
    """Which way each worker's reports went; ``long`` workers' always go the long way."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.long: set[str] = set()
        self.taken: list[tuple[str, str]] = []  # (worker id, "quick" | "long")
        quickly, slowly = workers.record_report_quickly, workers.record_heartbeat

        async def quick_unless_long(
            pool: Any, worker_id: str, body: dict[str, Any], now: datetime
        ) -> bool | None:
            if worker_id in self.long:
                return None
            recorded = await quickly(pool, worker_id, body, now)
            if recorded is not None:
                self.taken.append((worker_id, "quick"))
            return recorded

        async def long_way(session: Any, worker_id: str, body: dict[str, Any], now: Any) -> bool:
            self.taken.append((worker_id, "long"))
            return await slowly(session, worker_id, body, now)

        monkeypatch.setattr(workers, "record_report_quickly", quick_unless_long)
        monkeypatch.setattr(workers, "record_heartbeat", long_way)


async def placed(agent: Any, sdk: Any, project: str) -> Side:
    """A ready worker with one workload's replica assigned to it."""
    answer = await heartbeat(agent, full(gpu_inventory(), []))
    created = await sdk.post(f"/api/projects/{project}/workloads", json=WORKLOAD)
    assert created.status_code == 201, created.text
    watched = await agent.get(
        "/api/agent/assignments", params={"version": answer["version"], "wait": 20}
    )
    [assigned] = watched.json()["replicas"]
    return Side(agent, watched.json()["worker_id"], created.json()["id"], assigned["id"])


async def test_a_report_stored_quickly_leaves_what_the_long_way_leaves(
    own: RunningManager,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ways = Ways(monkeypatch)
    async with (
        agent_and_sdk(own, "twin") as (project_q, agent_q, sdk_q),
        agent_and_sdk(own, "twin") as (project_l, agent_l, sdk_l),
    ):
        quick = await placed(agent_q, sdk_q, project_q)
        long = await placed(agent_l, sdk_l, project_l)
        ways.long.add(long.worker_id)

        def replica(side: Side, **fields: Any) -> dict[str, Any]:
            return {"id": side.replica_id, **fields}

        starting = {"state": "starting", "reason": "engine launched; loading the model"}
        ready = {"state": "ready", "port": 41000, "log_tail": "loaded"}
        serving = {
            **ready,
            "log_tail": "loaded\nserved 3 requests",
            "restarts": 0,
            "engine_load": {"running": 3, "waiting": 1, "kv_cache_usage": 0.25},
        }
        busy = gpu_inventory(memory_used_mb=9000, utilization_pct=87)
        busier = gpu_inventory(memory_used_mb=12000, utilization_pct=99)
        failed = {**serving, "state": "failed", "reason": "engine exited with status 1"}
        # (what the step is, the report given the side's replica)
        steps: list[tuple[str, Any]] = [
            ("starting", lambda s: full(gpu_inventory(), [replica(s, **starting)])),
            ("nothing new (delta)", lambda s: DELTA),
            ("starting, again", lambda s: full(gpu_inventory(), [replica(s, **starting)])),
            ("ready, GPU busy", lambda s: full(busy, [replica(s, **ready)])),
            ("engine load", lambda s: {**DELTA, "replicas": [replica(s, **serving)]}),
            ("GPU figures alone", lambda s: {**DELTA, "inventory": busier}),
            ("a restart", lambda s: full(busier, [replica(s, **{**serving, "restarts": 2})])),
            ("the same again", lambda s: full(busier, [replica(s, **{**serving, "restarts": 2})])),
            ("failed", lambda s: full(busier, [replica(s, **failed)])),
            ("failed, unchanged", lambda s: full(busier, [replica(s, **failed)])),
        ]
        connection = await asyncpg.connect(plain_postgres_url(own.database_url))
        try:
            async with listen(own) as notices:
                for side in (quick, long):
                    await side.snapshot(connection, notices.payloads)  # the stamps before
                for name, report in steps:
                    ways.taken.clear()
                    after = {}
                    for side in (quick, long):
                        await heartbeat(side.agent, report(side))
                        await asyncio.sleep(SETTLE_S)
                        after[side.worker_id] = await side.snapshot(connection, notices.payloads)
                    assert after[quick.worker_id] == after[long.worker_id], name
                    if report(quick) is not DELTA:
                        assert (quick.worker_id, "quick") in ways.taken, (name, ways.taken)
                    assert (long.worker_id, "quick") not in ways.taken, name
        finally:
            await connection.close()
        # Each transition told its workload, and the workers' readiness told no one.
        assert notices.payloads.count(quick.workload_id) == 3
        assert quick.worker_id not in notices.payloads
