"""From ensure() to a running llama.cpp engine, with agents using the process runtime."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from inferencekey import Backend, ManagementClient, WorkloadSpec

from tests.e2e.conftest import AgentFactory, chat, replicas, wait_phase
from tests.support import RunningManager, TestProject, free_port, wait_until


def spec(
    gguf: Path, *, replicas_wanted: int = 1, context: int = 512, slug: str = "gemma"
) -> WorkloadSpec:
    return WorkloadSpec(
        name="Gemma on CPU",
        slug=slug,
        model="gemma-3-270m",
        backend=Backend.LLAMACPP,
        command=f"llama-server -m {gguf} -c {context} --port 8080",
        execution_policy="fixed",
        execution_policy_config={"replicas": replicas_wanted},
    )


def engine_pids(state_dir: Path) -> dict[str, int]:
    records = (state_dir / "process" / "replicas").glob("*.json")
    return {path.stem: json.loads(path.read_text())["pid"] for path in records}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def ready_replicas(api: httpx.Client, slug: str = "gemma") -> list[dict]:
    return [r for r in replicas(api, slug) if r["state"] == "ready" and r["desired_state"] == "run"]


def test_ensure_places_a_replica_that_becomes_ready_and_answers(
    start_agent: AgentFactory, mgmt: ManagementClient, api: httpx.Client, gguf_model: Path
) -> None:
    start_agent()
    ref = mgmt.ensure(spec(gguf_model))
    seen = []
    mgmt.wait_until_ready(ref.workload_slug, timeout=60, on_progress=seen.append)
    assert seen[-1].phase == "ready"
    [replica] = replicas(api, "gemma")
    assert replica["state"] == "ready" and replica["port"]
    assert chat(replica["port"])["choices"][0]["message"]["content"] is not None
    events = api.get("/api/workloads/gemma/events").json()["events"]
    notices = [e["message"] for e in events if e["kind"] == "command_adjusted"]
    assert notices == ["removed --port 8080 from the command: the agent assigns the port"]


def test_scale_one_to_two_to_zero(
    start_agent: AgentFactory, mgmt: ManagementClient, api: httpx.Client, gguf_model: Path
) -> None:
    agent = start_agent()
    mgmt.ensure(spec(gguf_model))
    mgmt.wait_until_ready("gemma", timeout=60)
    mgmt.ensure(spec(gguf_model, replicas_wanted=2))
    wait_until(lambda: len(ready_replicas(api)) == 2, 60, "never two ready replicas")
    assert len({r["port"] for r in ready_replicas(api)}) == 2
    mgmt.ensure(spec(gguf_model, replicas_wanted=0))
    wait_phase(api, "gemma", "stopped")
    wait_until(lambda: replicas(api, "gemma") == [], 30, "replicas were not removed")
    wait_until(lambda: engine_pids(agent.config.state_dir) == {}, 30, "engines still running")


def test_changing_the_command_rolls_new_replicas_before_stopping_old_ones(
    start_agent: AgentFactory, mgmt: ManagementClient, api: httpx.Client, gguf_model: Path
) -> None:
    start_agent()
    mgmt.ensure(spec(gguf_model))
    mgmt.wait_until_ready("gemma", timeout=60)
    [old] = replicas(api, "gemma")
    mgmt.ensure(spec(gguf_model, context=1024))
    # Throughout the rollout some replica keeps serving, until the old one is gone.
    deadline = time.monotonic() + 60
    while True:
        current = replicas(api, "gemma")
        assert any(r["state"] == "ready" for r in current), current
        if all(r["id"] != old["id"] for r in current):
            break
        assert time.monotonic() < deadline, "the old replica was never retired"
        time.sleep(0.1)
    [new] = wait_until(lambda: ready_replicas(api), 30, "no new ready replica")
    assert new["id"] != old["id"] and new["generation"] > old["generation"]
    mgmt.wait_until_ready("gemma", timeout=30)


def agent_process(
    manager_url: str, token: str, state_dir: Path, gguf: Path, llama_server: str
) -> subprocess.Popen[bytes]:
    """`inferencekey agent` as its own process, as an operator runs it; told to stop for good, so
    that a test's SIGTERM leaves no engine behind (SIGKILL still does, as on a crash)."""
    command = [
        sys.executable, "-m", "ik_command", "agent",
        "--manager", manager_url,
        "--runtime", "process",
        "--state-dir", str(state_dir),
        "--model-dir", str(gguf.parent),
        "--binary", f"llama-server={llama_server}",
        "--advertise-url", "http://127.0.0.1:9",
        "--listen", f"127.0.0.1:{free_port()}",
        "--stop-engines-on-exit",
    ]  # fmt: skip
    return subprocess.Popen(
        command, env={**os.environ, "INFERENCEKEY_AGENT_TOKEN": token}, stdout=subprocess.DEVNULL
    )


def test_killed_agent_process_restarts_adopts_its_engine_and_leaves_no_orphan(
    manager: RunningManager,
    admin: httpx.Client,
    project: TestProject,
    mgmt: ManagementClient,
    api: httpx.Client,
    gguf_model: Path,
    llama_server: str,
    tmp_path: Path,
) -> None:
    token = admin.post("/api/admin/workers", json={"project": project.slug}).json()["token"]
    agent = agent_process(manager.url, token, tmp_path, gguf_model, llama_server)
    try:
        mgmt.ensure(spec(gguf_model))
        mgmt.wait_until_ready("gemma", timeout=60)
        [before] = replicas(api, "gemma")
        pids = engine_pids(tmp_path)
        agent.kill()  # SIGKILL: no chance to clean up
        agent.wait(timeout=10)
        assert all(alive(pid) for pid in pids.values()), "the engine died with its agent"
        agent = agent_process(manager.url, token, tmp_path, gguf_model, llama_server)
        time.sleep(4)  # several heartbeats and converge passes of the new agent
        [after] = ready_replicas(api)
        assert (after["id"], after["port"]) == (before["id"], before["port"])
        assert engine_pids(tmp_path) == pids, "the engine was replaced instead of adopted"
        assert all(alive(pid) for pid in pids.values())
        chat(after["port"])
    finally:
        mgmt.delete("gemma")
        try:
            wait_until(lambda: engine_pids(tmp_path) == {}, 30, "the engine outlived its workload")
        finally:
            agent.terminate()
            agent.wait(timeout=30)


def test_orphan_engine_of_a_removed_replica_is_stopped_by_the_restarted_agent(
    start_agent: AgentFactory, mgmt: ManagementClient, api: httpx.Client, gguf_model: Path
) -> None:
    agent = start_agent()
    mgmt.ensure(spec(gguf_model))
    mgmt.wait_until_ready("gemma", timeout=60)
    pids = engine_pids(agent.config.state_dir)
    agent.stop()
    # While the agent is down, the workload is deleted: its engine is now an orphan.
    assert mgmt.delete("gemma")
    start_agent(token=agent.config.token, state_dir=agent.config.state_dir)
    wait_until(
        lambda: not any(alive(pid) for pid in pids.values()), 30, "orphan engine kept running"
    )
    wait_until(lambda: engine_pids(agent.config.state_dir) == {}, 10, "stale engine record")


def test_killed_engine_is_restarted_and_the_reason_recorded(
    start_agent: AgentFactory, mgmt: ManagementClient, api: httpx.Client, gguf_model: Path
) -> None:
    agent = start_agent()
    mgmt.ensure(spec(gguf_model))
    mgmt.wait_until_ready("gemma", timeout=60)
    [pid] = engine_pids(agent.config.state_dir).values()
    os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: any(r["restarts"] >= 1 and r["state"] == "ready" for r in replicas(api, "gemma")),
        60,
        "the engine was not restarted",
    )
    events = api.get("/api/workloads/gemma/events").json()["events"]
    failures = [e["message"] for e in events if e["kind"] == "replica_failed"]
    assert failures and "engine exited with code -9" in failures[0]
    [new_pid] = engine_pids(agent.config.state_dir).values()
    assert new_pid != pid and alive(new_pid)


def test_lost_worker_replica_is_placed_on_another_agent(
    start_agent: AgentFactory, mgmt: ManagementClient, api: httpx.Client, gguf_model: Path
) -> None:
    first = start_agent()
    mgmt.ensure(spec(gguf_model))
    mgmt.wait_until_ready("gemma", timeout=60)
    [placed] = replicas(api, "gemma")
    # The first host dies: its agent and its engines are gone.
    first.stop()
    for pid in engine_pids(first.config.state_dir).values():
        os.kill(pid, signal.SIGKILL)
    second = start_agent()
    wait_until(
        lambda: any(
            r["worker_id"] != placed["worker_id"] and r["state"] == "ready"
            for r in replicas(api, "gemma")
        ),
        60,
        "the replica was not re-placed",
    )
    events = api.get("/api/workloads/gemma/events").json()["events"]
    assert any(e["kind"] == "replica_lost" and "no heartbeat" in e["message"] for e in events)
    workers = {w["id"]: w for w in api.get("/api/workers").json()["workers"]}
    assert workers[placed["worker_id"]]["state"] == "lost"
    assert second.agent.worker_id in workers


def test_deleting_the_workload_stops_its_engines(
    start_agent: AgentFactory, mgmt: ManagementClient, api: httpx.Client, gguf_model: Path
) -> None:
    agent = start_agent()
    mgmt.ensure(spec(gguf_model))
    mgmt.wait_until_ready("gemma", timeout=60)
    assert mgmt.delete("gemma") is True
    wait_until(lambda: engine_pids(agent.config.state_dir) == {}, 30, "engine still running")
