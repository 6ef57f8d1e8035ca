"""Calling workloads through the Manager's /endpoint gateway, as the docs show (real llama.cpp)."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openai
import pytest
from inferencekey import DataClient, ManagementClient

from tests.e2e.serving import CHAT, Serve, chat_spec, embed_spec, endpoint, wait_routable
from tests.e2e.test_fixed_policy_process_runtime import engine_pids
from tests.support import (
    AgentFactory,
    RunningManager,
    TestProject,
    bearer,
    create_live_key,
    create_project,
    revoke,
    wait_until,
)

# For the gateway's answers before any engine: named in a command, never loaded (no engine lane).
UNLOADED_GGUF = Path("/models/gemma-3-270m-q4_k_m.gguf")


def ready_replicas(api: httpx.Client) -> list[dict[str, Any]]:
    replicas = api.get("/api/workloads/chat/replicas").json()["replicas"]
    return [r for r in replicas if r["state"] == "ready"]


@pytest.fixture
def data(manager: RunningManager, project: TestProject, live_key: str) -> DataClient:
    return DataClient(base_url=manager.url, project=project.slug, api_key=live_key)


def test_data_client_generates_streams_and_embeds(
    serve: Serve, data: DataClient, gguf_model: Path
) -> None:
    serve(chat_spec(gguf_model), embed_spec(gguf_model))
    chat = data.endpoint("chat")
    out = chat.generate_text(prompt="Hola", temperature=0.2, max_tokens=8)
    assert isinstance(out.text, str) and out.model
    chunks = list(chat.generate_text_stream(prompt="Count to three", max_tokens=8))
    assert len(chunks) > 1 and chunks[-1].finish_reason == "length"
    emb = data.endpoint("emb").embed(input=["a", "b"])
    assert len(emb.embeddings) == 2 and len(emb.embeddings[0]) > 10


def test_official_openai_client_chats_streams_and_embeds(
    serve: Serve, gguf_model: Path, manager: RunningManager, project: TestProject, live_key: str
) -> None:
    serve(chat_spec(gguf_model), embed_spec(gguf_model))
    base = f"{manager.url}/endpoint/{project.slug}"
    chat = openai.OpenAI(base_url=f"{base}/chat/v1", api_key=live_key, max_retries=0)
    completion = chat.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "Hi"}], max_tokens=8
    )
    assert completion.choices[0].message.content is not None
    stream = chat.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, stream=True
    )
    deltas = [c.choices[0].delta.content for c in stream if c.choices]
    assert len(deltas) > 1
    embedder = openai.OpenAI(base_url=f"{base}/emb/v1", api_key=live_key, max_retries=0)
    vectors = embedder.embeddings.create(model="emb", input=["one", "two"])
    assert [len(d.embedding) > 10 for d in vectors.data] == [True, True]


def test_key_matrix_on_data_routes(
    manager: RunningManager,
    admin: httpx.Client,
    api: httpx.Client,
    project: TestProject,
    mgmt: ManagementClient,
) -> None:
    # No agent: a request that passes every check is answered 503 (no ready replica).
    mgmt.ensure(chat_spec(UNLOADED_GGUF))
    mgmt.ensure(chat_spec(UNLOADED_GGUF, slug="other"))
    other_project = create_project(admin)["slug"]
    # Private to another project, so no other test sees an agentless worker in its pool.
    worker = admin.post("/api/admin/workers", json={"project": other_project}).json()
    keys = {
        "wildcard": create_live_key(admin, project.slug),
        "granted": create_live_key(admin, project.slug, ["chat"]),
        "not granted": create_live_key(admin, project.slug, ["other"]),
        "other project": create_live_key(admin, other_project),
        "sdk": project.sdk_token,
        "admin": manager.admin_token or "",
        "agent": worker["token"],
        "unknown": f"ik_live_{secrets.token_hex(4)}_{secrets.token_hex(32)}",
        "malformed": "ik_live_oops",
    }
    revoked = create_live_key(admin, project.slug)
    revoke(admin, revoked)
    keys["revoked"] = revoked
    expected = {
        "wildcard": (503, "no_ready_replica"),
        "granted": (503, "no_ready_replica"),
        "not granted": (403, "scope_insufficient"),
        "other project": (403, "project_scope_mismatch"),
        "sdk": (403, "wrong_credential_type"),
        "admin": (403, "wrong_credential_type"),
        "agent": (403, "wrong_credential_type"),
        "unknown": (401, "invalid_credentials"),
        "malformed": (401, "invalid_credentials"),
        "revoked": (401, "invalid_credentials"),
    }
    url = f"{manager.url}/endpoint/{project.slug}/chat/v1/chat/completions"
    for name, token in keys.items():
        response = httpx.post(url, json=CHAT, headers=bearer(token))
        assert (response.status_code, response.json()["code"]) == expected[name], name
        if response.status_code == 403:
            assert response.json()["error"] == expected[name][1]
    assert httpx.post(url, json=CHAT).status_code == 401
    key = keys["wildcard"]
    response = httpx.post(
        f"{manager.url}/endpoint/{project.slug}/nope/v1/chat/completions",
        json=CHAT,
        headers=bearer(key),
    )
    assert (response.status_code, response.json()["code"]) == (404, "workload_not_found")


def test_not_yours_and_not_there_look_the_same_to_a_key(
    manager: RunningManager,
    admin: httpx.Client,
    project: TestProject,
    mgmt: ManagementClient,
) -> None:
    mgmt.ensure(chat_spec(UNLOADED_GGUF))
    outsider = create_live_key(admin, create_project(admin)["slug"])
    narrow = create_live_key(admin, project.slug, ["chat"])

    def answer(path: str, key: str) -> tuple[int, dict[str, Any]]:
        response = httpx.post(manager.url + path, json=CHAT, headers=bearer(key))
        body = response.json()
        # The message names the path the caller gave, so compare everything but it.
        return response.status_code, {k: v for k, v in body.items() if k not in ("message",)}

    real = answer(f"/endpoint/{project.slug}/chat/v1/chat/completions", outsider)
    absent = answer("/endpoint/no-such-project/chat/v1/chat/completions", outsider)
    assert (
        real
        == absent
        == (403, {"error": "project_scope_mismatch", "code": "project_scope_mismatch"})
    )
    other_workload = answer(f"/endpoint/{project.slug}/other/v1/chat/completions", narrow)
    absent_workload = answer(f"/endpoint/{project.slug}/nope/v1/chat/completions", narrow)
    assert other_workload == absent_workload
    assert other_workload[0] == 403 and other_workload[1]["code"] == "scope_insufficient"


def test_revoked_key_is_refused_within_a_second(
    start_agent: AgentFactory,
    mgmt: ManagementClient,
    gguf_model: Path,
    manager: RunningManager,
    admin: httpx.Client,
    project: TestProject,
) -> None:
    start_agent()
    mgmt.ensure(chat_spec(gguf_model))
    mgmt.wait_until_ready("chat", timeout=60, silent=True)
    key = create_live_key(admin, project.slug)
    with endpoint(manager, project, "chat", key) as client:
        wait_routable(client)  # the key is now cached by the gateway
        revoke(admin, key)
        revoked_at = time.monotonic()
        wait_until(
            lambda: client.post("/v1/chat/completions", json=CHAT).status_code == 401,
            1.0,
            "the revoked key still worked after a second",
            interval=0.05,
        )
    assert time.monotonic() - revoked_at < 1.0


def test_route_the_task_type_does_not_serve_is_400_naming_the_task_type(
    mgmt: ManagementClient,
    manager: RunningManager,
    project: TestProject,
    live_key: str,
) -> None:
    mgmt.ensure(chat_spec(UNLOADED_GGUF))
    with endpoint(manager, project, "chat", live_key) as client:
        response = client.post("/v1/embeddings", json={"model": "chat", "input": ["a"]})
    assert response.status_code == 400
    assert response.json()["code"] == "route_not_served"
    assert "served by task type embedding" in response.json()["message"]


def test_no_ready_replica_is_503_with_phase_reason_and_retry_after(
    mgmt: ManagementClient,
    manager: RunningManager,
    project: TestProject,
    live_key: str,
) -> None:
    mgmt.ensure(chat_spec(UNLOADED_GGUF))  # no worker in this project: unschedulable
    with endpoint(manager, project, "chat", live_key) as client:
        wait_until(
            lambda: (
                client.post("/v1/chat/completions", json=CHAT).json().get("phase")
                == "unschedulable"
            ),
            10,
            "the 503 never said unschedulable",
        )
        response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert "worker" in response.json()["reason"]  # what is missing, e.g. "no worker is registered"


def test_two_replicas_share_the_load(
    start_agent: AgentFactory,
    mgmt: ManagementClient,
    api: httpx.Client,
    gguf_model: Path,
    manager: RunningManager,
    project: TestProject,
    live_key: str,
) -> None:
    start_agent()
    start_agent()
    mgmt.ensure(chat_spec(gguf_model, replicas=2))
    wait_until(lambda: len(ready_replicas(api)) == 2, 60, "two replicas never became ready")
    seen: Counter[str] = Counter()
    errors: list[str] = []

    def call(client: httpx.Client) -> None:
        for _ in range(6):
            response = client.post("/v1/chat/completions", json=CHAT)
            if response.status_code != 200:
                errors.append(response.text)
            seen[response.headers.get("x-inferencekey-replica", "?")] += 1

    with endpoint(manager, project, "chat", live_key) as client:
        wait_until(
            lambda: (
                len(
                    {
                        client.post("/v1/chat/completions", json=CHAT).headers.get(
                            "x-inferencekey-replica"
                        )
                        for _ in range(6)
                    }
                )
                == 2
            ),
            20,
            "the gateway never saw both replicas",
        )
        threads = [threading.Thread(target=call, args=(client,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors
    assert set(seen) == {r["id"] for r in ready_replicas(api)}
    assert min(seen.values()) >= 4  # least outstanding with 4 concurrent callers spreads them


def test_killing_one_replica_mid_traffic_moves_new_requests_to_the_other(
    start_agent: AgentFactory,
    mgmt: ManagementClient,
    api: httpx.Client,
    gguf_model: Path,
    manager: RunningManager,
    project: TestProject,
    live_key: str,
) -> None:
    first = start_agent()
    start_agent()
    mgmt.ensure(chat_spec(gguf_model, replicas=2))
    wait_until(lambda: len(ready_replicas(api)) == 2, 60, "two replicas never became ready")
    results: list[tuple[int, float]] = []
    stop = threading.Event()

    def traffic() -> None:
        with endpoint(manager, project, "chat", live_key) as client:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    status = client.post("/v1/chat/completions", json=CHAT, timeout=10).status_code
                except httpx.HTTPError:
                    status = 0
                results.append((status, time.monotonic() - started))

    with endpoint(manager, project, "chat", live_key) as client:
        wait_routable(client)
    callers = [threading.Thread(target=traffic) for _ in range(2)]
    for caller in callers:
        caller.start()
    time.sleep(1.0)
    killed_at = len(results)
    for pid in engine_pids(first.config.state_dir).values():
        os.kill(pid, signal.SIGKILL)
    time.sleep(3.0)
    stop.set()
    for caller in callers:
        caller.join(timeout=20)
    after = results[killed_at:]
    assert after, "no traffic after the kill"
    assert all(status == 200 for status, _ in after), Counter(s for s, _ in after)
    # A hang would run into the 10 s client timeout (status 0); a slow answer while the killed
    # engine reloads and takes both cores is not one.
    assert max(seconds for _, seconds in after) < 8, "a request hung"


def test_client_disconnect_cancels_the_upstream_generation(
    start_agent: AgentFactory,
    mgmt: ManagementClient,
    api: httpx.Client,
    gguf_model: Path,
    manager: RunningManager,
    project: TestProject,
    live_key: str,
) -> None:
    start_agent()
    # A context long enough that 4000 tokens take many seconds: only a cancel ends it early.
    mgmt.ensure(chat_spec(gguf_model, context=4096))
    mgmt.wait_until_ready("chat", timeout=60, silent=True)
    [replica] = api.get("/api/workloads/chat/replicas").json()["replicas"]
    slots = f"http://127.0.0.1:{replica['port']}/slots"

    def busy() -> bool:
        return any(slot.get("is_processing") for slot in httpx.get(slots).json())

    with endpoint(manager, project, "chat", live_key) as client:
        wait_routable(client)
        # ignore_eos (llama.cpp): a long generation whatever the tiny model would say.
        long = {**CHAT, "max_tokens": 4000, "stream": True, "ignore_eos": True}
        with client.stream("POST", "/v1/chat/completions", json=long) as stream:
            # Keep the iterator: dropping a half-read one makes httpx close the connection.
            lines = stream.iter_lines()
            first = next(lines)
            assert stream.status_code == 200, first
            wait_until(busy, 10, "the engine was not generating", interval=0.05)
            assert next(lines) is not None  # still streaming to us
        # Leaving the block closed the connection; the engine must stop soon after.
        # 4000 tokens take far longer than this on these CPUs: stopping in time means cancelled.
        wait_until(lambda: not busy(), 8, "the engine kept generating for a gone client")


def test_gateway_records_demand_for_the_autoscaler(
    start_agent: AgentFactory,
    mgmt: ManagementClient,
    gguf_model: Path,
    manager: RunningManager,
    project: TestProject,
    live_key: str,
    api: httpx.Client,
) -> None:
    start_agent()
    mgmt.ensure(chat_spec(gguf_model))
    mgmt.wait_until_ready("chat", timeout=60, silent=True)
    workload_id = api.get("/api/workloads/chat").json()["id"]
    with endpoint(manager, project, "chat", live_key) as client:
        wait_routable(client)
        for _ in range(5):
            assert client.post("/v1/chat/completions", json=CHAT).status_code == 200

    async def demand() -> list[Any]:
        connection = await asyncpg.connect(manager.database_url)
        try:
            return await connection.fetch(
                "SELECT in_flight, requests_per_s FROM workload_demand WHERE workload_id = $1",
                workload_id,
            )
        finally:
            await connection.close()

    rows = wait_until(lambda: asyncio.run(demand()), 10, "no demand figures written")
    assert sum(row["requests_per_s"] for row in rows) > 0
    assert all(row["in_flight"] >= 0 for row in rows)


def test_agent_port_refuses_requests_without_the_gateway_credential(
    start_agent: AgentFactory,
    mgmt: ManagementClient,
    gguf_model: Path,
    project: TestProject,
    live_key: str,
) -> None:
    agent = start_agent()
    mgmt.ensure(chat_spec(gguf_model))
    mgmt.wait_until_ready("chat", timeout=60, silent=True)
    url = f"{agent.config.advertise_url}/endpoint/{project.slug}/chat/v1/chat/completions"
    for headers in ({}, bearer(live_key), {"X-InferenceKey-Gateway": "0" * 64}):
        response = httpx.post(url, json=CHAT, headers=headers)
        assert (response.status_code, response.json()["code"]) == (401, "invalid_credentials")


def test_an_engine_error_keeps_its_status_through_the_gateway(
    start_agent: AgentFactory,
    mgmt: ManagementClient,
    gguf_model: Path,
    manager: RunningManager,
    project: TestProject,
    live_key: str,
) -> None:
    start_agent()
    mgmt.ensure(chat_spec(gguf_model))
    mgmt.wait_until_ready("chat", timeout=60, silent=True)
    with endpoint(manager, project, "chat", live_key) as client:
        wait_routable(client)
        # llama.cpp refuses a chat request without messages with a 4xx of its own.
        response = client.post("/v1/chat/completions", json={"max_tokens": 8})
        streamed = client.post("/v1/chat/completions", json={"max_tokens": 8, "stream": True})
    assert 400 <= response.status_code < 500, response.text
    assert streamed.status_code == response.status_code
    assert "x-inferencekey-replica" in response.headers


def test_a_down_agent_is_named_unreachable_not_no_ready_replica(
    serve: Serve,
    manager: RunningManager,
    project: TestProject,
    gguf_model: Path,
    live_key: str,
) -> None:
    agent = serve(chat_spec(gguf_model))
    agent.stop()  # the agent's proxy is gone; the database still says ready until it is lost
    with endpoint(manager, project, "chat", live_key) as client:
        answers = [client.post("/v1/chat/completions", json=CHAT) for _ in range(3)]
    last = answers[-1]
    assert last.status_code == 503, last.text
    assert last.json()["code"] == "worker_unreachable"
    assert "cannot be reached" in last.json()["message"]
    assert "ready" not in last.json()["message"].split("(")[0]
    assert last.headers["retry-after"]
