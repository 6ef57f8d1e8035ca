"""Engine logs reach the operator through the API and `inferencekey logs`, streamed (real
llama.cpp, process runtime)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from inferencekey import ManagementClient

from ik_command import main
from tests.e2e.serving import CHAT, chat_spec, endpoint, wait_routable
from tests.support import (
    AgentFactory,
    RunningManager,
    TestProject,
    bearer,
    create_live_key,
    create_project,
    create_sdk_token,
)


def _replica(api: httpx.Client) -> str:
    replicas = api.get("/api/workloads/chat/replicas").json()["replicas"]
    (ready,) = [r["id"] for r in replicas if r["state"] == "ready"]
    return str(ready)


def test_the_tail_and_the_followed_log_of_an_engine(
    manager: RunningManager,
    admin: httpx.Client,
    api: httpx.Client,
    project: TestProject,
    mgmt: ManagementClient,
    start_agent: AgentFactory,
    gguf_model: Path,
) -> None:
    start_agent()
    mgmt.ensure(chat_spec(gguf_model))
    mgmt.wait_until_ready("chat", timeout=60, silent=True)
    replica = _replica(api)
    path = f"/api/workloads/chat/replicas/{replica}/logs"

    tail = api.get(path, params={"tail": 5})
    assert tail.status_code == 200, tail.text
    assert tail.headers["content-type"].startswith("text/plain")
    assert 1 <= len(tail.text.splitlines()) <= 5

    key = create_live_key(admin, project.slug)
    seen = bytearray()
    with api.stream("GET", path, params={"tail": 1, "follow": 1}, timeout=30) as followed:
        assert followed.status_code == 200
        pieces = followed.iter_bytes()
        seen += next(pieces)  # the last line, at once
        with endpoint(manager, project, "chat", key) as client:
            wait_routable(client)
            assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
        deadline = time.monotonic() + 20
        # llama.cpp logs the timings of each completion: new lines arrive while we follow.
        while b"total time" not in seen and time.monotonic() < deadline:
            seen += next(pieces)
    assert b"total time" in seen


def test_logs_requests_are_checked_like_every_other(
    manager: RunningManager,
    admin: httpx.Client,
    api: httpx.Client,
    mgmt: ManagementClient,
    start_agent: AgentFactory,
    gguf_model: Path,
) -> None:
    start_agent()
    mgmt.ensure(chat_spec(gguf_model))
    mgmt.wait_until_ready("chat", timeout=60, silent=True)
    path = f"/api/workloads/chat/replicas/{_replica(api)}/logs"

    for params in ({"tail": 0}, {"tail": 10_001}, {"tail": "ten"}, {"follow": "yes"}):
        response = api.get(path, params=params)
        assert (response.status_code, response.json()["code"]) == (400, "validation_error")
    missing = api.get("/api/workloads/chat/replicas/rep_nosuchreplica/logs")
    assert (missing.status_code, missing.json()["code"]) == (404, "replica_not_found")
    outsider = create_sdk_token(admin, create_project(admin)["slug"])
    foreign = httpx.get(manager.url + path, headers=bearer(outsider))
    assert foreign.status_code in (403, 404)
    assert httpx.get(manager.url + path).status_code == 401


def test_inferencekey_logs_prints_a_workloads_engine_log(
    manager: RunningManager,
    project: TestProject,
    mgmt: ManagementClient,
    start_agent: AgentFactory,
    gguf_model: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    start_agent()
    mgmt.ensure(chat_spec(gguf_model))
    mgmt.wait_until_ready("chat", timeout=60, silent=True)
    connection = ["--base-url", manager.url, "--admin-token", manager.admin_token or ""]

    code = main(["logs", f"{project.slug}/chat", "--tail", "3", *connection])
    out, err = capfd.readouterr()
    assert code == 0, err
    assert 1 <= len(out.splitlines()) <= 3

    code = main(["logs", f"{project.slug}/nope", *connection])
    assert code == 1
    assert "not found" in capfd.readouterr().err
    assert main(["logs", "no-slash", *connection]) == 2

    # -f keeps printing until the command is stopped; here, until its thread is abandoned.
    follower = threading.Thread(
        target=main, args=(["logs", f"{project.slug}/chat", "-f", *connection],), daemon=True
    )
    follower.start()
    time.sleep(1.0)
    assert follower.is_alive()
