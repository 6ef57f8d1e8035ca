"""A real agent runs custom backends its Manager assigns: it prepares each package once, launches
the backend from its venv, reports each step, serves it through its proxy, and after a restart
adopts what runs and reuses what was built.

The Manager is tests/agent/scripted_manager.py (real HTTP, no database); everything on the
agent's side is the real thing: uv, the venv, the backend process, the proxy.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from inferencekey.backend import BackendPackage

from tests.agent.sample_packages import build_package, ref_of
from tests.agent.scripted_manager import ScriptedManager
from tests.support import RunningAgent, free_port, wait_until
from worker_agent.config import AgentConfig

TOKEN = "ik_agent_0123abcd_" + "cd" * 32
SECRET = "gateway-secret-0123456789"

AgentStarter = Callable[[], RunningAgent]


@pytest.fixture
def manager() -> Iterator[ScriptedManager]:
    running = ScriptedManager(TOKEN, gateway_secret=SECRET)
    yield running
    running.stop()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "agent-state"


@pytest.fixture
def start_agent(manager: ScriptedManager, state_dir: Path) -> Iterator[AgentStarter]:
    """Agents on one state dir, as one host's agent restarted; the last one started is stopped
    for good (with its engines) when the test ends, the others just stopped."""
    started: list[RunningAgent] = []
    low = random.randrange(45000, 47900, 100)

    def start() -> RunningAgent:
        config = AgentConfig(
            manager_url=manager.url,
            token=TOKEN,
            runtime="process",
            listen_host="127.0.0.1",
            listen_port=free_port(),
            state_dir=state_dir,
            port_range=(low, low + 99),
            health_interval_s=0.2,
            restart_backoff_initial_s=0.2,
        )
        started.append(RunningAgent(config))
        return started[-1]

    yield start
    for agent in reversed(started):
        if agent.thread.is_alive():
            agent.stop_for_good()
    if started:
        started[-1].stop_engines()


def replica(replica_id: str, package: BackendPackage, **config: Any) -> dict[str, Any]:
    """The assignment of one replica of demo/sample on the sample package."""
    ref = ref_of(package).model_copy(update={"config": {"greeting": "hola", **config}})
    return {
        "id": replica_id,
        "workload_id": "wl_sample",
        "project_slug": "demo",
        "workload_slug": "sample",
        "generation": 1,
        "backend": "sample",
        "task_type": "text2text",
        "model_name": "sample-model",
        "custom_backend": ref.model_dump(),
    }


def state_of(manager: ScriptedManager, replica_id: str) -> str | None:
    return manager.reported.get(replica_id, {}).get("state")


def wait_state(manager: ScriptedManager, replica_id: str, state: str) -> dict[str, Any]:
    return wait_until(
        lambda: state_of(manager, replica_id) == state and manager.reported[replica_id],
        90,
        f"{replica_id} never {state}",
    )


def chat(agent: RunningAgent, prompt: str) -> httpx.Response:
    return httpx.post(
        f"http://127.0.0.1:{agent.config.listen_port}/endpoint/demo/sample/v1/chat/completions",
        json={"model": "sample", "messages": [{"role": "user", "content": prompt}]},
        headers={"x-inferencekey-gateway": SECRET},
        timeout=30,
    )


def engine_pid(state_dir: Path, replica_id: str) -> int:
    record = state_dir / "process" / "replicas" / f"{replica_id}.json"
    return int(json.loads(record.read_text())["pid"])


def test_a_custom_backend_is_prepared_once_served_and_adopted_after_a_restart(
    tmp_path: Path, manager: ScriptedManager, start_agent: AgentStarter, state_dir: Path
) -> None:
    package = build_package(tmp_path / "dist")
    manager.add_package("cbv_sample", package.path)
    manager.assign(replica("rep_a", package))
    agent = start_agent()

    wait_state(manager, "rep_a", "ready")
    # Which steps a heartbeat catches depends on timing (each is reported as it begins).
    steps = [reason or "" for _, state, reason in manager.history if state == "starting"]
    assert any("custom backend sample 1.0.0" in step for step in steps), steps
    answer = chat(agent, "hi")
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "hola: hi"
    assert answer.json()["model"] == "sample-model"
    marker = state_dir / "custom-backends" / "sample" / f"1.0.0-{package.sha256[:12]}"
    built_at = (marker / "installed.json").stat().st_mtime_ns

    # A second replica of the same package uses the same venv.
    manager.assign(replica("rep_a", package), replica("rep_b", package))
    wait_state(manager, "rep_b", "ready")
    assert agent.agent.custom_backends.builds == 1
    assert manager.downloads["cbv_sample"] == 1

    # A restarted agent adopts both engines and builds nothing.
    pids = {rid: engine_pid(state_dir, rid) for rid in ("rep_a", "rep_b")}
    agent.stop()
    restarted = start_agent()
    wait_until(
        lambda: (
            restarted.agent.replicas.get("rep_b") is not None
            and restarted.agent.replicas["rep_b"].state == "ready"
        ),
        60,
        "the restarted agent never had rep_b ready",
    )
    assert {rid: engine_pid(state_dir, rid) for rid in ("rep_a", "rep_b")} == pids
    assert chat(restarted, "again").json()["choices"][0]["message"]["content"] == "hola: again"

    # An engine that dies is launched again from the same venv, still without a build.
    os.killpg(pids["rep_a"], signal.SIGKILL)
    wait_until(
        lambda: (
            (state_dir / "process" / "replicas" / "rep_a.json").exists()
            and engine_pid(state_dir, "rep_a") != pids["rep_a"]
            and restarted.agent.replicas["rep_a"].state == "ready"
        ),
        60,
        "rep_a was never launched again",
    )
    assert restarted.agent.custom_backends.builds == 0
    assert manager.downloads["cbv_sample"] == 1
    assert (marker / "installed.json").stat().st_mtime_ns == built_at


def test_a_package_whose_requirements_cannot_install_fails_with_uvs_words(
    tmp_path: Path,
    manager: ScriptedManager,
    start_agent: AgentStarter,
    local_index: Path,
) -> None:
    package = build_package(tmp_path / "dist", requirements=["ik-no-such-package-anywhere"])
    manager.add_package("cbv_sample", package.path)
    manager.assign(replica("rep_a", package))
    start_agent()

    failed = wait_state(manager, "rep_a", "failed")
    assert failed["reason"].startswith(
        "installing the requirements of custom backend sample 1.0.0 failed: uv exited with 1: "
    )
    assert "ik-no-such-package-anywhere" in failed["reason"]
    assert "No solution found" in failed["log_tail"]


def test_a_package_from_a_local_index_is_installed_and_imported_by_the_backend(
    tmp_path: Path,
    manager: ScriptedManager,
    start_agent: AgentStarter,
    local_index: Path,
) -> None:
    package = build_package(tmp_path / "dist", requirements=["ik-sample-extra==1.0"])
    manager.add_package("cbv_sample", package.path)
    manager.assign(replica("rep_a", package, **{"import": "ik_sample_extra"}))
    agent = start_agent()

    wait_state(manager, "rep_a", "ready")
    answer = chat(agent, "extra")
    assert answer.json()["choices"][0]["message"]["content"] == "extra module 1.0"


def test_a_backend_whose_setup_fails_is_failed_with_its_log(
    tmp_path: Path, manager: ScriptedManager, start_agent: AgentStarter
) -> None:
    package = build_package(tmp_path / "dist")
    manager.add_package("cbv_sample", package.path)
    manager.assign(replica("rep_a", package, fail_setup=True))
    start_agent()

    failed = wait_state(manager, "rep_a", "failed")
    assert failed["reason"].startswith("engine exited with code 1")
    assert "the weights are missing" in failed["log_tail"]


def test_a_backend_process_sees_neither_the_agents_credential_nor_the_download_tokens(
    tmp_path: Path,
    manager: ScriptedManager,
    start_agent: AgentStarter,
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INFERENCEKEY_AGENT_TOKEN", TOKEN)
    monkeypatch.setenv("HF_TOKEN", "hf_for_model_downloads")
    package = build_package(tmp_path / "dist")
    manager.add_package("cbv_sample", package.path)
    manager.assign(replica("rep_a", package))
    start_agent()

    wait_state(manager, "rep_a", "ready")
    # The agent (this process) has both; the backend it launched has neither.
    assert (os.environ["INFERENCEKEY_AGENT_TOKEN"], os.environ["HF_TOKEN"]) == (
        TOKEN,
        "hf_for_model_downloads",
    )
    raw = Path(f"/proc/{engine_pid(state_dir, 'rep_a')}/environ").read_bytes()
    names = {item.split(b"=", 1)[0].decode() for item in raw.split(b"\0") if item}
    assert "INFERENCEKEY_AGENT_TOKEN" not in names
    assert "HF_TOKEN" not in names
    assert {"PYTHONPATH", "IK_BACKEND_CONFIG", "IK_BACKEND_ENTRYPOINT"} <= names


def test_an_agent_stopped_mid_build_kills_its_uv_and_leaves_no_task(
    tmp_path: Path,
    manager: ScriptedManager,
    start_agent: AgentStarter,
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The requirements come from an index that takes the connection and never answers, so the
    build is still in uv when the agent stops: the agent cancels it, which kills uv's process
    group, and no task of the replica is left pending for its event loop to drop."""
    silent = socket.create_server(("127.0.0.1", 0), backlog=16)
    try:
        monkeypatch.setenv("UV_DEFAULT_INDEX", f"http://127.0.0.1:{silent.getsockname()[1]}/simple")
        monkeypatch.setenv("UV_HTTP_TIMEOUT", "300")
        package = build_package(tmp_path / "dist", requirements=["ik-sample-extra==1.0"])
        manager.add_package("cbv_sample", package.path)
        manager.assign(replica("rep_a", package))
        agent = start_agent()
        pgid_file = wait_until(
            lambda: (
                next(state_dir.rglob("uv.pgid"), None)
                if any(
                    "installing the requirements" in (reason or "")
                    for _, _, reason in manager.history
                )
                else None
            ),
            90,
            "uv never began installing the requirements",
        )
        pgid = int(pgid_file.read_text())
        os.killpg(pgid, 0)  # uv is running, waiting for the index

        agent.stop()

        install = agent.agent.replicas["rep_a"].install_task
        assert install is not None and install.cancelled()
        assert not pgid_file.exists()
        # uv itself was waited for; what it ran, killed with it, is gone a moment after.
        wait_until(lambda: not _group_alive(pgid), 10, f"uv's process group {pgid} lives on")
    finally:
        silent.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
