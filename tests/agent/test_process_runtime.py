"""The process runtime runs the real llama-server, finds it again after a restart, and stops it."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ik_contracts.engines.llamacpp import LlamaCppEngine
from tests.support import wait_until
from worker_agent.ports import PortAllocator
from worker_agent.runtimes.base import LaunchError, LaunchSpec
from worker_agent.runtimes.process import ProcessRuntime, _group_alive

ENGINE = LlamaCppEngine()
# A random start keeps concurrent test runs on one host from racing for the same first port.
PORTS = PortAllocator(42000 + random.randrange(900), 42999)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "agent-state"


@pytest.fixture
def runtime(state_dir: Path, llama_server: str) -> Iterator[ProcessRuntime]:
    runtime = ProcessRuntime(state_dir, binaries={"llama-server": llama_server})
    yield runtime
    for replica_id in ProcessRuntime(state_dir).running():
        runtime.stop(replica_id, timeout_s=5)


def llama_spec(replica_id: str, command: str) -> LaunchSpec:
    port = PORTS.allocate()
    argv, _ = ENGINE.build_argv(command, "gemma", ProcessRuntime.bind_host, port)
    return LaunchSpec(replica_id, "wl_test", "wrk_test", argv, {}, [], port, None)


async def wait_ready(port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=5) as client:
        while not await ENGINE.ready_check(f"http://127.0.0.1:{port}", client):
            assert time.monotonic() < deadline, f"engine on {port} not ready in {timeout_s} s"
            await asyncio.sleep(0.2)


def wait_dead(runtime: ProcessRuntime, replica_id: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while runtime.running()[replica_id].alive:
        assert time.monotonic() < deadline, f"{replica_id} still alive after {timeout_s} s"
        time.sleep(0.1)


async def test_llama_server_answers_chat_through_the_process_runtime(
    runtime: ProcessRuntime, gguf_model: Path
) -> None:
    spec = llama_spec("rep_chat", f"llama-server -m {gguf_model} -c 1024 --port 8080")
    runtime.start(spec)
    await wait_ready(spec.port)
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(
            f"http://127.0.0.1:{spec.port}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8},
        )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["role"] == "assistant"
    engine = runtime.running()["rep_chat"]
    assert (engine.port, engine.alive, engine.exit_code) == (spec.port, True, None)
    assert "listening" in runtime.log_tail("rep_chat")
    stream = runtime.log_stream("rep_chat", tail=200, follow=False)
    assert b"listening" in b"".join(stream)


async def test_engine_sees_only_its_assigned_gpus(runtime: ProcessRuntime, state_dir: Path) -> None:
    spec = LaunchSpec(
        "rep_env", "wl", "wrk", ["sleep", "30"], {"X": "1"}, ["GPU-a", "GPU-b"], 1, None
    )
    runtime.start(spec)
    record = (state_dir / "replicas" / "rep_env.json").read_text()
    pid = json.loads(record)["pid"]

    # Until the child has exec'd (a moment under load), /proc shows an empty environment.
    def environ() -> list[bytes] | None:
        variables = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        return variables if variables != [b""] else None

    environ_now = wait_until(environ, 5, "the engine's environment never appeared", interval=0.01)
    assert b"CUDA_VISIBLE_DEVICES=GPU-a,GPU-b" in environ_now
    assert b"X=1" in environ_now


async def test_engine_gets_an_allow_list_of_the_agents_environment_never_its_credential(
    runtime: ProcessRuntime, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERENCEKEY_AGENT_TOKEN", "ik_agent_deadbeef_" + "0" * 64)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "host-secret")
    monkeypatch.setenv("HF_TOKEN", "hf_for_downloads")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    spec = LaunchSpec("rep_allow", "wl", "wrk", ["sleep", "30"], {}, [], 1, None)
    runtime.start(spec)
    pid = json.loads((state_dir / "replicas" / "rep_allow.json").read_text())["pid"]

    def environ() -> dict[str, str] | None:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
        if not raw:
            return None
        return dict(item.decode().split("=", 1) for item in raw.split(b"\0") if item)

    seen = wait_until(environ, 5, "the engine's environment never appeared", interval=0.01)
    assert "INFERENCEKEY_AGENT_TOKEN" not in seen
    assert "AWS_SECRET_ACCESS_KEY" not in seen
    assert not [name for name in seen if name.startswith("INFERENCEKEY_")]
    assert seen["HF_TOKEN"] == "hf_for_downloads"
    assert seen["LC_ALL"] == "C.UTF-8"
    assert "PATH" in seen


async def test_a_custom_backend_process_gets_no_download_token_or_other_credential(
    runtime: ProcessRuntime, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERENCEKEY_AGENT_TOKEN", "ik_agent_deadbeef_" + "0" * 64)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "VLLM_API_KEY", "HUGGINGFACE_HUB_TOKEN"):
        monkeypatch.setenv(name, "secret")
    monkeypatch.setenv("UV_INDEX_URL", "https://user:secret@index.example/simple")
    monkeypatch.setenv("HF_HOME", "/models/hf")
    spec = LaunchSpec(
        "rep_custom",
        "wl",
        "wrk",
        ["sleep", "30"],
        {"IK_BACKEND_CONFIG": "{}"},
        [],
        1,
        None,
        plain_process=True,
    )
    runtime.start(spec)
    pid = json.loads((state_dir / "replicas" / "rep_custom.json").read_text())["pid"]

    def environ() -> dict[str, str] | None:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
        if not raw:
            return None
        return dict(item.decode().split("=", 1) for item in raw.split(b"\0") if item)

    seen = wait_until(environ, 5, "the backend's environment never appeared", interval=0.01)
    assert not [name for name in seen if "TOKEN" in name or name.startswith(("UV_", "VLLM_"))]
    assert (seen["HF_HOME"], seen["IK_BACKEND_CONFIG"]) == ("/models/hf", "{}")


async def test_restarted_agent_adopts_a_live_engine_and_can_stop_it(
    runtime: ProcessRuntime, state_dir: Path, gguf_model: Path
) -> None:
    spec = llama_spec("rep_adopt", f"llama-server -m {gguf_model} -c 1024")
    runtime.start(spec)
    await wait_ready(spec.port)

    restarted = ProcessRuntime(state_dir)
    adopted = restarted.running()["rep_adopt"]
    assert (adopted.port, adopted.alive, adopted.exit_code) == (spec.port, True, None)

    restarted.stop("rep_adopt")
    assert "rep_adopt" not in restarted.running()
    assert "rep_adopt" not in runtime.running()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{spec.port}/health")
    restarted.stop("rep_adopt")  # idempotent


def test_stop_kills_the_whole_process_group_even_when_sigterm_is_ignored(
    runtime: ProcessRuntime, state_dir: Path
) -> None:
    # The shell and the sleeps it forks ignore SIGTERM (ignored signals survive exec).
    script = "trap '' TERM; sleep 300 & sleep 300 & while true; do sleep 0.1; done"
    runtime.start(LaunchSpec("rep_group", "wl", "wrk", ["sh", "-c", script], {}, [], 1, None))
    pgid = json.loads((state_dir / "replicas" / "rep_group.json").read_text())["pgid"]
    time.sleep(0.3)
    assert _group_alive(pgid)

    started = time.monotonic()
    runtime.stop("rep_group", timeout_s=1)
    assert time.monotonic() - started >= 1  # waited for SIGTERM, then escalated
    assert not _group_alive(pgid)
    assert runtime.running() == {}


def test_crashing_engine_is_reported_dead_with_its_log(
    runtime: ProcessRuntime, state_dir: Path
) -> None:
    runtime.start(llama_spec("rep_crash", "llama-server -m /nonexistent.gguf"))
    wait_dead(runtime, "rep_crash")
    engine = runtime.running()["rep_crash"]
    assert engine.exit_code not in (None, 0)
    assert "/nonexistent.gguf" in runtime.log_tail("rep_crash")
    # A restarted agent forgets engines that died before it came up.
    assert ProcessRuntime(state_dir).running() == {}


def test_missing_binary_is_a_launch_error(state_dir: Path) -> None:
    runtime = ProcessRuntime(state_dir)
    with pytest.raises(LaunchError, match="not installed"):
        runtime.start(LaunchSpec("rep_x", "wl", "wrk", ["no-such-engine"], {}, [], 1, None))
