"""The list writes each workload's JSON from its row, without a model per workload
(``_listed`` in manager/services/workloads.py): byte for byte what ``workload_view`` writes for
the same workload, whatever its strings, configs and times hold, in the plain list and a page.

(Having Postgres write the JSON instead, row_to_json with the configs put in place, was tried:
its 10,000 rows cost Postgres ~55 ms more than the columns, for ~20 ms less of the Manager's.)"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import asyncpg
import pytest
from inferencekey.wire import MAX_WORKLOAD_PAGE_SIZE
from sqlalchemy import select

from manager.db.migrate import upgrade_to_head_async
from manager.db.models import Project, Workload
from manager.db.session import make_engine, make_sessionmaker
from manager.services import workloads

# Strings JSON must escape (quotes, backslashes, control characters, the short escapes), and
# some it must not (a slash, DEL, non-ASCII, U+2028, an emoji, escapes as text).
AWKWARD = 'say "hi" \\ / \x01\x1f\x7f \b\f\n\r\t é \u2028 🦙 ":"\\u0001" \\u0001'
CONFIGS = [
    # As clients write them: spaced, keys in their order, floats as written, escapes.
    '{"command": "llama-server -c 512", "env": {"B": "1", "A": "2"}}',
    '{"temperature": 1.50, "big": 1e3, "tiny": -0.0, "list": [1, 2.0, null, true]}',
    '{"text": "caf\\u00e9 \\"quoted\\" \\ud83e\\udd99", "nested": {"deep": [{"x": {}}]}}',
    "{}",
    "null",
]


@pytest.fixture
async def sql(database: str) -> AsyncIterator[asyncpg.Connection]:
    await upgrade_to_head_async(database)
    connection = await asyncpg.connect(database)
    await connection.execute(
        "INSERT INTO tenants (id, name) VALUES ('default', 'default') ON CONFLICT DO NOTHING;"
        "INSERT INTO projects (id, tenant_id, slug, name) VALUES"
        " ('pa', 'default', 'a-\"slug\"', 'A')"
    )
    rows = [
        # id, description, config, policy config, worker, created_at, updated_at
        ("wl_1", AWKWARD, CONFIGS[0], '{"replicas": 1}', None, "2026-01-02 03:04:05+00", None),
        ("wl_2", None, CONFIGS[1], None, "wrk_x", "2026-01-02 03:04:05.12+02", "epoch"),
        (
            "wl_3",
            "",
            CONFIGS[2],
            '{"min": 0, "max": 2.5}',
            None,
            "2026-01-02 03:04:05.000001+00",
            None,
        ),
        ("wl_4", "x", CONFIGS[3], "{}", None, "1999-12-31 23:59:59.999999-08", None),
        ("wl_5", "y", CONFIGS[4], "null", None, "2026-06-30 12:00:00.5+00", None),
        ("wl_6", "z", None, None, None, "2026-06-30 12:00:01+05:30", None),
    ]
    for workload_id, description, config, policy, worker, created, updated in rows:
        await connection.execute(
            "INSERT INTO workloads (id, project_id, slug, name, description, task_type, backend,"
            " model_name, config, worker_id, execution_policy, execution_policy_config,"
            " generation, desired_replicas, ready_replicas, endpoints_off, phase, phase_reason,"
            " created_at, updated_at) VALUES ($1::text, 'pa', $1::text || '-s',"
            " coalesce($2::text, 'n'), $2, 'text2text', 'llamacpp', coalesce($2::text, 'm'),"
            " $3::text::json, $4, 'fixed', $5::json, 3, 2, 1, '{}', 'ready', $2,"
            " $6::text::timestamptz, coalesce($7::text, $6::text)::timestamptz)",
            workload_id,
            description,
            config,
            worker,
            policy,
            created,
            updated,
        )
    try:
        yield connection
    finally:
        await connection.close()


async def test_the_list_writes_each_workload_as_workload_view_does(
    database: str, sql: asyncpg.Connection
) -> None:
    engine = make_engine(database)
    try:
        async with make_sessionmaker(engine)() as session:
            project = (
                await session.execute(select(Project).where(Project.id == "pa"))
            ).scalar_one()
            plain = await workloads.list_workloads_json(session, project, None, None)
            page = await workloads.list_workloads_json(
                session, project, MAX_WORKLOAD_PAGE_SIZE, None
            )
            rows = (
                (await session.execute(select(Workload).order_by(Workload.created_at)))
                .scalars()
                .all()
            )
            views = [workloads.workload_view(row, project).model_dump_json() for row in rows]
    finally:
        await engine.dispose()
    expected = "[" + ",".join(views) + "]"
    assert plain.decode() == '{"workloads":' + expected + "}"
    assert page.decode() == '{"workloads":' + expected + ',"next_cursor":null}'
    listed = json.loads(plain)["workloads"]
    # What the rows above hold, read back.
    assert [w["id"] for w in listed] == ["wl_4", "wl_2", "wl_1", "wl_3", "wl_6", "wl_5"]
    first = listed[2]
    assert first["description"] == AWKWARD and first["status"]["reason"] == AWKWARD
    assert first["project_slug"] == 'a-"slug"'
    assert first["config"] == json.loads(CONFIGS[0])
    assert [w["created_at"] for w in listed] == [
        "2000-01-01T07:59:59.999999Z",
        "2026-01-02T01:04:05.120000Z",
        "2026-01-02T03:04:05Z",
        "2026-01-02T03:04:05.000001Z",
        "2026-06-30T06:30:01Z",
        "2026-06-30T12:00:00.500000Z",
    ]
    assert listed[1]["updated_at"] == "1970-01-01T00:00:00Z"
    assert [w["config"] for w in listed[4:]] == [None, None]
    assert [w["execution_policy_config"] for w in listed[4:]] == [None, None]
