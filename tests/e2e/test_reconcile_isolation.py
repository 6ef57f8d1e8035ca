"""One broken workload never stops placement for the others. The healthy one is served by the
stand-in llama-server (tests/fake_engine.py): this is about reconciling, not serving."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import httpx
import pytest
from inferencekey import Backend, ManagementClient, WorkloadSpec

from tests.e2e.conftest import wait_phase
from tests.support import AgentFactory, RunningManager


def test_a_workload_whose_row_breaks_its_reconcile_leaves_the_others_placed(
    manager: RunningManager,
    mgmt: ManagementClient,
    api: httpx.Client,
    start_bare_agent: AgentFactory,
    fake_llama_server: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gguf_model = tmp_path / "models" / "gemma.gguf"
    gguf_model.parent.mkdir()
    gguf_model.write_bytes(b"GGUF")
    start_bare_agent(binaries={"llama-server": fake_llama_server}, model_dir=gguf_model.parent)
    base = {"model": "gemma-3-270m", "backend": Backend.LLAMACPP}
    mgmt.ensure(WorkloadSpec(name="broken", slug="broken", command="llama-server -m x", **base))
    # A row written before the border checked for NUL (or by hand): the command's NUL cannot
    # go into the replica's JSONB spec, so this workload's writes fail in the database.
    broken_id = api.get("/api/workloads/broken").json()["id"]

    async def corrupt() -> None:
        connection = await asyncpg.connect(manager.database_url)
        try:
            await connection.execute(
                "UPDATE workloads SET config = $1::json WHERE id = $2",
                '{"command": "llama-server -m x\\u0000y"}',
                broken_id,
            )
            # As a write through the API would: the reconcile leader reads what is named.
            await connection.execute("SELECT pg_notify('ik_reconcile', $1)", broken_id)
        finally:
            await connection.close()

    asyncio.run(corrupt())
    mgmt.ensure(
        WorkloadSpec(
            name="healthy", slug="healthy", command=f"llama-server -m {gguf_model} -c 256", **base
        )
    )

    wait_phase(api, "healthy", "ready", timeout=120)
    broken = wait_phase(api, "broken", "error", timeout=30)
    assert "internal error" in broken["reason"]
    # The database's error was logged, without the statement's parameters (the spec).
    logged = [r for r in caplog.records if r.name == "inferencekey.reconciler" and r.exc_text]
    assert logged, "the failure was not logged"
    assert all("parameters hidden" in r.exc_text for r in logged if "[SQL" in r.exc_text)
    assert not any("llama-server -m x" in r.getMessage() + r.exc_text for r in logged)
