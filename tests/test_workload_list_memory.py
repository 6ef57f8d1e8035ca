"""The plain list of a large project holds one piece of its rows at a time, so that its objects
never pile up for the garbage collector (whose collections hold the event loop)."""

from __future__ import annotations

import gc
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import select

from manager.db.migrate import upgrade_to_head_async
from manager.db.models import Project
from manager.db.session import make_engine, make_sessionmaker
from manager.services import workloads

WORKLOADS = 3000
PIECE = 100


@pytest.fixture
async def project_of_many(database: str) -> AsyncIterator[str]:
    await upgrade_to_head_async(database)
    connection = await asyncpg.connect(database)
    try:
        await connection.execute(
            f"""
            INSERT INTO tenants (id, name) VALUES ('default', 'default') ON CONFLICT DO NOTHING;
            INSERT INTO projects (id, tenant_id, slug, name)
                VALUES ('proj_many', 'default', 'many', 'Many');
            INSERT INTO workloads (id, project_id, slug, name, task_type, backend, model_name,
                config, execution_policy, execution_policy_config, generation, desired_replicas,
                ready_replicas, endpoints_off, phase, phase_reason)
            SELECT 'wl_' || lpad(i::text, 26, '0'), 'proj_many', 'w-' || i, 'Workload ' || i,
                'text2text', 'llamacpp', 'gemma', '{{"command": "llama-server -c 512"}}'::json,
                'fixed', '{{"replicas": 1}}'::json, 1, 1, 1, '{{}}', 'ready', '1/1 ready'
            FROM generate_series(1, {WORKLOADS}) i
            """
        )
    finally:
        await connection.close()
    yield database


async def test_the_plain_list_holds_one_piece_of_its_rows_at_a_time(
    project_of_many: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workloads, "_WRITTEN_AT_ONCE", PIECE)
    # With the collector off, the young generation holds every tracked object made since the
    # collection before the list and still alive: what the list holds at each row it writes.
    young: list[int] = []
    listed = workloads._listed

    def counting(row: Any, project_slug: str) -> dict[str, Any]:
        if len(young) % 50 == 0 or len(young) == WORKLOADS - 1:
            young.append(len(gc.get_objects(generation=0)))
        else:
            young.append(young[-1])
        return listed(row, project_slug)

    monkeypatch.setattr(workloads, "_listed", counting)
    engine = make_engine(project_of_many)
    try:
        async with make_sessionmaker(engine)() as session:
            project = (
                await session.execute(select(Project).where(Project.id == "proj_many"))
            ).scalar_one()
            gc.collect()
            gc.disable()
            try:
                body = await workloads.list_workloads_json(session, project, None, None)
            finally:
                gc.enable()
    finally:
        await engine.dispose()

    answer = json.loads(body)["workloads"]
    assert [w["slug"] for w in answer] == [f"w-{i}" for i in range(1, WORKLOADS + 1)]
    assert len(young) == WORKLOADS
    # Every row of the project held at once is a row and a record per workload (6,000 and
    # more); a piece at a time, a few objects for each of its 100 rows and their dicts.
    assert max(young) < WORKLOADS, f"up to {max(young)} young objects alive: {young[::300]}"
