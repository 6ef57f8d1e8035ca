"""No request smuggling through the gateway or the agent: hostile bytes in a path or header never
reach a request line, and one project's traffic never gets another's answers (real llama.cpp).
"""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
from inferencekey import Backend, ManagementClient, WorkloadSpec

from tests.support import (
    AgentFactory,
    RunningManager,
    TestProject,
    bearer,
    create_live_key,
    create_project,
    create_sdk_token,
    wait_until,
)

# The repro of the report: a models request whose path, once decoded, holds a second request
# for another project's workload.
SMUGGLED = (
    "/endpoint/{a}/echo/v1/models%20HTTP/1.1%0D%0Ahost:%20x%0D%0Acontent-length:%200%0D%0A%0D%0A"
    "POST%20/endpoint/{b}/victim/v1/chat/completions"
)


def models_spec(gguf: Path, slug: str, alias: str) -> WorkloadSpec:
    # The alias is what llama.cpp's /v1/models answers with: it tells the projects' answers apart.
    return WorkloadSpec(
        name=slug,
        slug=slug,
        model=alias,
        backend=Backend.LLAMACPP,
        command=f"llama-server -m {gguf} -c 256 --alias {alias}",
        execution_policy_config={"replicas": 1},
    )


def raw_exchange(url: str, request: bytes) -> tuple[int, bytes]:
    """Sends exactly these bytes (no client normalises them) and reads the answer to the close."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    return status, answer.partition(b"\r\n\r\n")[2]


def get(path: str, key: str, *headers: bytes) -> bytes:
    extra = b"".join(header + b"\r\n" for header in headers)
    return (
        b"GET %s HTTP/1.1\r\nhost: x\r\nauthorization: Bearer %s\r\n%sconnection: close\r\n\r\n"
        % (path.encode(), key.encode(), extra)
    )


def model_ids(manager: RunningManager, project: str, workload: str, key: str) -> list[str]:
    response = httpx.get(
        f"{manager.url}/endpoint/{project}/{workload}/v1/models", headers=bearer(key), timeout=30
    )
    assert response.status_code == 200, response.text
    return [model["id"] for model in response.json()["data"]]


def test_smuggled_request_is_refused_and_no_project_gets_anothers_answer(
    manager: RunningManager,
    admin: httpx.Client,
    project: TestProject,
    mgmt: ManagementClient,
    start_agent: AgentFactory,
    gguf_model: Path,
) -> None:
    victim = create_project(admin)["slug"]
    worker = admin.post("/api/admin/workers", json={"project": victim}).json()
    start_agent()
    start_agent(token=worker["token"])
    mgmt.ensure(models_spec(gguf_model, "echo", "alpha-model"))
    with ManagementClient(
        base_url=manager.url, sdk_token=create_sdk_token(admin, victim), project=victim
    ) as victim_mgmt:
        victim_mgmt.ensure(models_spec(gguf_model, "victim", "bravo-model"))
        victim_mgmt.wait_until_ready("victim", timeout=120, silent=True)
    mgmt.wait_until_ready("echo", timeout=120, silent=True)
    key_a = create_live_key(admin, project.slug)
    key_b = create_live_key(admin, victim)
    wait_until(
        lambda: model_ids(manager, victim, "victim", key_b) == ["bravo-model"], 30, "never routed"
    )
    wait_until(
        lambda: model_ids(manager, project.slug, "echo", key_a) == ["alpha-model"], 30, "no route"
    )

    for _ in range(5):
        status, body = raw_exchange(
            manager.url, get(SMUGGLED.format(a=project.slug, b=victim), key_a)
        )
        assert status == 404 and b'"route_not_found"' in body

    status, body = raw_exchange(
        manager.url,
        get(f"/endpoint/{project.slug}/echo/v1/models", key_a, b"x-note: caf\xc3\xa9"),
    )
    assert status == 400 and b'"invalid_header"' in body

    for _ in range(25):
        assert model_ids(manager, project.slug, "echo", key_a) == ["alpha-model"]
        assert model_ids(manager, victim, "victim", key_b) == ["bravo-model"]


def test_engine_paths_and_dot_segments_are_a_typed_404_at_the_gateway(
    manager: RunningManager, admin: httpx.Client, project: TestProject
) -> None:
    key = create_live_key(admin, project.slug)
    for route in (
        "health",
        "slots",
        "metrics",
        "props",
        "api/pull",
        "api/delete",
        "v1/../../..",
        "v1/../health",
        "v1/%2e%2e/slots",
        "v1/models%0d%0ax-injected:%201",
    ):
        status, body = raw_exchange(manager.url, get(f"/endpoint/{project.slug}/w/{route}", key))
        assert (status, b'"route_not_found"' in body) == (404, True), route


def test_the_agent_refuses_smuggling_paths_and_unsafe_headers_even_from_its_gateway(
    manager: RunningManager,
    mgmt: ManagementClient,
    project: TestProject,
    start_agent: AgentFactory,
    gguf_model: Path,
) -> None:
    running = start_agent()
    mgmt.ensure(models_spec(gguf_model, "echo", "alpha-model"))
    mgmt.wait_until_ready("echo", timeout=120, silent=True)
    gateway = b"x-inferencekey-gateway: " + running.agent.gateway_secret.encode()
    agent_url = running.config.advertise_url

    status, body = raw_exchange(
        agent_url, get(SMUGGLED.format(a=project.slug, b="b"), "-", gateway)
    )
    assert status == 404 and b'"route_not_found"' in body
    status, body = raw_exchange(
        agent_url, get(f"/endpoint/{project.slug}/echo/slots", "-", gateway)
    )
    assert status == 404 and b'"route_not_found"' in body
    status, body = raw_exchange(
        agent_url,
        get(f"/endpoint/{project.slug}/echo/v1/models", "-", gateway, b"x-note: caf\xc3\xa9"),
    )
    assert status == 400 and b'"invalid_header"' in body
    status, body = raw_exchange(
        agent_url, get(f"/endpoint/{project.slug}/echo/v1/models", "-", gateway)
    )
    assert status == 200 and b"alpha-model" in body
