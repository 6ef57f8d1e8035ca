"""Upgrades keep data: a database written by the previous schema is upgraded by starting the new
Manager, and a Manager refuses a database migrated by a newer release, saying what to run."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from alembic import command
from alembic.script import ScriptDirectory

from manager.auth import token_digest
from manager.db.migrate import alembic_config
from manager.settings import Settings
from tests.support import (
    bearer,
    create_database,
    drop_database,
    free_port,
    new_admin_token,
    start_manager,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
PREVIOUS_RELEASE_HEAD = "0003"  # the schema of the release before the schema_writer table
SDK_TOKEN = "ik_sdk_0a1b2c3d_" + "5e" * 32
AGENT_TOKEN = "ik_agent_4e5f6a7b_" + "7c" * 32


@pytest.fixture
def empty_database() -> Iterator[str]:
    url = create_database()
    yield url
    drop_database(url)


async def _fill_previous_schema(url: str) -> None:
    """What a running installation of the previous release holds: a project, an SDK token, a
    worker with its credential and a GPU, a workload with a replica and events."""
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(
            """
            INSERT INTO tenants (id, name) VALUES ('default', 'default');
            INSERT INTO projects (id, tenant_id, slug, name)
                VALUES ('proj_old', 'default', 'legacy', 'Legacy');
            """
        )
        await connection.execute(
            "INSERT INTO tokens (id, kind, digest, project_id, scopes) VALUES "
            "($1, 'sdk', $2, 'proj_old', ARRAY['workload:read', 'workload:write']), "
            "($3, 'agent', $4, NULL, ARRAY[]::varchar[])",
            "0a1b2c3d",
            token_digest(SDK_TOKEN),
            "4e5f6a7b",
            token_digest(AGENT_TOKEN),
        )
        await connection.execute(
            """
            INSERT INTO workers (id, name, project_id, token_id, state, gateway_secret)
                VALUES ('wrk_old', 'box-1', 'proj_old', '4e5f6a7b', 'lost', 'secret');
            INSERT INTO gpu_resources (id, worker_id, uuid, index, name, memory_total_mb)
                VALUES ('gpu_old', 'wrk_old', 'GPU-1', 0, 'NVIDIA L4', 23034);
            """
        )
        await connection.execute(
            "INSERT INTO workloads (id, project_id, slug, name, task_type, backend, model_name, "
            "config, execution_policy, execution_policy_config, phase, description) VALUES "
            "('wl_old', 'proj_old', 'chat', 'Chat', 'text2text', 'llamacpp', 'gemma', $1::json, "
            "'fixed', $2::json, 'ready', 'kept across upgrades')",
            json.dumps({"command": "llama-server -m /models/gemma.gguf"}),
            json.dumps({"replicas": 1, "note_order": 5.0}),
        )
        await connection.execute(
            "INSERT INTO replicas (id, workload_id, worker_id, generation, spec, state) VALUES "
            "('rep_old', 'wl_old', 'wrk_old', 1, $1::jsonb, 'ready')",
            json.dumps({"backend": "llamacpp", "command": "llama-server -m /models/gemma.gguf"}),
        )
        await connection.execute(
            "INSERT INTO workload_events (workload_id, kind, message) "
            "VALUES ('wl_old', 'created', 'created at generation 1')"
        )
    finally:
        await connection.close()


def test_a_database_of_the_previous_schema_is_upgraded_by_starting_the_manager_and_keeps_all(
    empty_database: str, tmp_path: Path
) -> None:
    command.upgrade(alembic_config(empty_database), PREVIOUS_RELEASE_HEAD)
    asyncio.run(_fill_previous_schema(empty_database))

    manager = start_manager(
        Settings(
            port=free_port(),
            database_url=empty_database,
            data_dir=tmp_path,
            admin_token=new_admin_token(),
            run_reconciler=False,  # what was stored, not what the reconciler makes of it
        )
    )
    try:
        with httpx.Client(base_url=manager.url, headers=bearer(SDK_TOKEN)) as api:
            workloads = api.get("/api/projects/legacy/workloads")
            events = api.get("/api/workloads/chat/events")
            replicas = api.get("/api/workloads/chat/replicas")
        with httpx.Client(base_url=manager.url, headers=bearer(manager.admin_token or "")) as admin:
            workers = admin.get("/api/workers").json()["workers"]
            tokens = admin.get("/api/admin/tokens").json()
    finally:
        manager.stop()

    assert workloads.status_code == 200, workloads.text  # the old SDK token still opens it
    (workload,) = workloads.json()["workloads"]
    assert workload["description"] == "kept across upgrades"
    assert workload["config"] == {"command": "llama-server -m /models/gemma.gguf"}
    assert workload["execution_policy_config"] == {"replicas": 1, "note_order": 5.0}
    assert [e["kind"] for e in events.json()["events"]] == ["created"]
    assert [r["id"] for r in replicas.json()["replicas"]] == ["rep_old"]
    assert [(w["id"], w["name"]) for w in workers] == [("wrk_old", "box-1")]
    assert workers[0]["gpus"][0]["name"] == "NVIDIA L4"
    assert {"0a1b2c3d", "4e5f6a7b"} <= {t["id"] for t in tokens["tokens"]}

    async def schema_state() -> tuple[str, str]:
        connection = await asyncpg.connect(empty_database)
        try:
            row = await connection.fetchrow(
                "SELECT (SELECT version_num FROM alembic_version) AS revision, "
                "(SELECT manager_version FROM schema_writer) AS writer"
            )
            return row["revision"], row["writer"]
        finally:
            await connection.close()

    revision, writer = asyncio.run(schema_state())
    head = ScriptDirectory.from_config(alembic_config(empty_database)).get_current_head()
    assert revision == head and writer


def test_a_manager_refuses_a_schema_newer_than_it_knows_and_names_the_release(
    empty_database: str, tmp_path: Path
) -> None:
    command.upgrade(alembic_config(empty_database), "head")

    async def from_the_future() -> None:
        connection = await asyncpg.connect(empty_database)
        try:
            await connection.execute(
                "UPDATE alembic_version SET version_num = '0099';"
                "INSERT INTO schema_writer (id, manager_version, revision) "
                "VALUES (1, '9.4.0', '0099') ON CONFLICT (id) DO UPDATE "
                "SET manager_version = '9.4.0', revision = '0099'"
            )
        finally:
            await connection.close()

    asyncio.run(from_the_future())
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERENCEKEY_")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ik_command",
            "manager",
            "--port",
            str(free_port()),
            "--database-url",
            empty_database,
            "--data-dir",
            str(tmp_path),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 1, done.stderr
    assert "revision 0099" in done.stderr
    assert "InferenceKey 9.4.0" in done.stderr
    assert "inferencekey-platform>=9.4.0" in done.stderr
    assert "Traceback" not in done.stderr
