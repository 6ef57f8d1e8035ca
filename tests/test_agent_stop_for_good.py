"""Engines outlive an agent that stops, so a restarted agent adopts them; an agent told to stop
for good (`--stop-engines-on-exit`) stops every engine it runs as it exits, naming each.

The engines here are tests/fake_engine.py: real processes under the process runtime that answer
the health check like llama-server, without a model (so these run in the fast lane)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from inferencekey import Backend, ManagementClient, WorkloadSpec

from tests.support import AgentFactory, RunningManager, TestProject, free_port, wait_until

REPO = Path(__file__).resolve().parent.parent


def spec(model: Path, slug: str) -> WorkloadSpec:
    return WorkloadSpec(
        name=slug,
        slug=slug,
        model="fake",
        backend=Backend.LLAMACPP,
        command=f"llama-server -m {model}",
        execution_policy="fixed",
        execution_policy_config={"replicas": 1},
    )


def engine_pids(state_dir: Path) -> dict[str, int]:
    records = (state_dir / "process" / "replicas").glob("*.json")
    return {path.stem: json.loads(path.read_text())["pid"] for path in records}


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def ready_replicas(api: httpx.Client, slug: str) -> list[dict[str, object]]:
    response = api.get(f"/api/workloads/{slug}/replicas")
    assert response.status_code == 200, response.text
    return [r for r in response.json()["replicas"] if r["state"] == "ready"]


def models_dir(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    models.mkdir()
    (models / "fake.gguf").write_bytes(b"GGUF" + bytes(1024))
    return models


def agent_process(
    manager: RunningManager, token: str, state_dir: Path, models: Path, engine: str, *flags: str
) -> tuple[subprocess.Popen[bytes], Path]:
    """`inferencekey agent` as an operator runs it; its log goes to a file, returned."""
    port = free_port()
    log = state_dir.parent / f"agent-{port}.log"
    command = [
        sys.executable, "-m", "ik_command", "agent",
        "--manager", manager.url,
        "--runtime", "process",
        "--state-dir", str(state_dir),
        "--model-dir", str(models),
        "--binary", f"llama-server={engine}",
        "--listen", f"127.0.0.1:{port}",
        "--advertise-url", f"http://127.0.0.1:{port}",
        *flags,
    ]  # fmt: skip
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env={**os.environ, "INFERENCEKEY_AGENT_TOKEN": token},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    return process, log


def test_agent_stopped_for_good_stops_every_engine_and_names_each(
    manager: RunningManager,
    admin: httpx.Client,
    project: TestProject,
    mgmt: ManagementClient,
    api: httpx.Client,
    fake_llama_server: str,
    tmp_path: Path,
) -> None:
    token = admin.post("/api/admin/workers", json={"project": project.slug}).json()["token"]
    state_dir, models = tmp_path / "agent-state", models_dir(tmp_path)
    agent, log = agent_process(manager, token, state_dir, models, fake_llama_server)
    try:
        for slug in ("first", "second"):
            mgmt.ensure(spec(models / "fake.gguf", slug))
        ready = {
            slug: wait_until(lambda s=slug: ready_replicas(api, s), 30, f"{slug} never ready")[0]
            for slug in ("first", "second")
        }
        pids = engine_pids(state_dir)
        assert set(pids) == {replica["id"] for replica in ready.values()}

        # A plain stop (a restart, an upgrade): the engines keep serving.
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0, log.read_text()
        assert all(alive(pid) for pid in pids.values()), "an engine died with its agent"
        assert "engines left running for the next agent run to adopt" in log.read_text()

        # Taking the agent off the host: run it once more, told to stop for good, then stop it.
        agent, log = agent_process(
            manager, token, state_dir, models, fake_llama_server, "--stop-engines-on-exit"
        )
        wait_until(
            lambda: log.read_text().count("adopted running engine") == 2,
            30,
            "the agent never adopted both engines",
        )
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0, log.read_text()
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()

    assert not any(alive(pid) for pid in pids.values()), "an engine outlived the agent"
    assert engine_pids(state_dir) == {}
    output = log.read_text()
    for slug, replica in ready.items():
        assert f"stopped engine for replica {replica['id']} ({project.slug}/{slug})" in output
    assert "stopped 2 engine(s) for good" in output
    assert "agent stopped for good, with its engines" in output


def test_agent_fixture_stopping_for_good_leaves_no_engine(
    start_bare_agent: AgentFactory,
    mgmt: ManagementClient,
    api: httpx.Client,
    fake_llama_server: str,
    tmp_path: Path,
) -> None:
    models = models_dir(tmp_path)
    agent = start_bare_agent(binaries={"llama-server": fake_llama_server}, model_dir=models)
    mgmt.ensure(spec(models / "fake.gguf", "served"))
    wait_until(lambda: ready_replicas(api, "served"), 30, "never ready")
    pids = engine_pids(agent.config.state_dir)
    assert len(pids) == 1 and all(alive(pid) for pid in pids.values())

    agent.stop_for_good()

    assert not any(alive(pid) for pid in pids.values()), "the engine outlived its agent"
    assert engine_pids(agent.config.state_dir) == {}
