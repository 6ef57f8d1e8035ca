"""Hostile and careless input at every border of the Manager: a typed 4xx naming the field, never
a 500, never the offending credential echoed back, and nothing changed."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import httpx
import pytest

from tests.support import RunningManager, TestProject, bearer, create_project, free_port

BASE = {"name": "Bot", "slug": "bot", "backend": "llamacpp", "model_name": "m"}
SDK_LOOKALIKE = "ik_sdk_0123abcd_" + "cd" * 32

# (what, raw JSON body merged over BASE, expected code, expected field)
RAW_CASES: list[tuple[str, str, str, str | None]] = [
    (
        "NUL in the command",
        '"config": {"command": "llama-server -m a\\u0000b"}',
        "validation_error",
        "config.command",
    ),
    ("NUL in the name", '"name": "a\\u0000b"', "validation_error", "name"),
    ("lone surrogate in the name", '"name": "a\\ud800b"', "validation_error", "name"),
    ("lone surrogate in the model", '"model_name": "\\udfff"', "validation_error", "model_name"),
    (
        "escape in the description",
        '"description": "a\\u001b[31mred"',
        "validation_error",
        "description",
    ),
    (
        "NaN cost",
        '"execution_policy": "autoscaling", "execution_policy_config": '
        '{"max_hourly_cost_usd": NaN}',
        "validation_error",
        None,
    ),
    (
        "Infinity cost",
        '"execution_policy": "autoscaling", "execution_policy_config": '
        '{"max_hourly_cost_usd": Infinity}',
        "validation_error",
        None,
    ),
    (
        "1e309 cost",
        '"execution_policy": "autoscaling", "execution_policy_config": '
        '{"max_hourly_cost_usd": 1e309}',
        "validation_error",
        None,
    ),
    (
        "integer past bigint",
        '"execution_policy_config": {"replicas": 99999999999999999999}',
        "validation_error",
        "execution_policy_config.replicas",
    ),
]

JSON_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "replicas 2^31",
        {"execution_policy_config": {"replicas": 2**31}},
        "invalid_execution_policy_config",
        "execution_policy_config.replicas",
    ),
    (
        "replicas 200000",
        {"execution_policy_config": {"replicas": 200_000}},
        "invalid_execution_policy_config",
        "execution_policy_config.replicas",
    ),
    (
        "max_workers past the limit",
        {"execution_policy": "autoscaling", "execution_policy_config": {"max_workers": 101}},
        "invalid_execution_policy_config",
        "execution_policy_config.max_workers",
    ),
    (
        "a directory for a time zone",
        {
            "execution_policy": "scheduled",
            "execution_policy_config": {"window": "Mon 08:00-09:00 Europe"},
        },
        "invalid_execution_policy_config",
        "execution_policy_config.window",
    ),
    ("hf_ token in the name", {"name": "hf_" + "a1B2" * 9}, "secret_in_spec", "name"),
    (
        "sk- key in the description",
        {"description": "key sk-proj-" + "x" * 40},
        "secret_in_spec",
        "description",
    ),
    (
        "sk- key in the command",
        {"config": {"command": "llama-server -m m --api-key sk-" + "Q" * 40}},
        "secret_in_spec",
        "config.command",
    ),
    (
        "ik_sdk_ token as a policy key",
        {"execution_policy_config": {SDK_LOOKALIKE: 1}},
        "secret_in_spec",
        "execution_policy_config.<credential>",
    ),
]


def _workload_count(api: httpx.Client, project: TestProject) -> int:
    return len(api.get(f"/api/projects/{project.slug}/workloads").json()["workloads"])


@pytest.mark.parametrize(
    ("change", "code", "field"), [c[1:] for c in RAW_CASES], ids=[c[0] for c in RAW_CASES]
)
def test_unstorable_strings_and_numbers_are_a_typed_400(
    api: httpx.Client, project: TestProject, change: str, code: str, field: str | None
) -> None:
    raw = json.dumps(BASE)[:-1] + ", " + change + "}"
    response = api.post(
        f"/api/projects/{project.slug}/workloads",
        content=raw.encode(),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == code
    if field is not None:
        assert body["field"] == field
    assert _workload_count(api, project) == 0


@pytest.mark.parametrize(
    ("change", "code", "field"), [c[1:] for c in JSON_CASES], ids=[c[0] for c in JSON_CASES]
)
def test_out_of_bounds_and_credentials_are_a_typed_400_that_echoes_no_secret(
    api: httpx.Client, project: TestProject, change: dict[str, Any], code: str, field: str
) -> None:
    response = api.post(f"/api/projects/{project.slug}/workloads", json={**BASE, **change})
    assert response.status_code == 400, response.text
    body = response.json()
    assert (body["code"], body["field"]) == (code, field)
    for secret in ("a1B2a1B2", "x" * 40, "Q" * 40, SDK_LOOKALIKE):
        assert secret not in response.text
    assert _workload_count(api, project) == 0


@pytest.mark.parametrize(
    "raw", [b"[" * 200_000, b'{"a": ' * 100 + b"1" + b"}" * 100], ids=["unclosed", "deep"]
)
def test_deeply_nested_bodies_are_a_typed_400(
    api: httpx.Client, project: TestProject, raw: bytes
) -> None:
    response = api.post(
        f"/api/projects/{project.slug}/workloads",
        content=raw,
        headers={"content-type": "application/json"},
    )
    assert (response.status_code, response.json()["code"]) == (400, "malformed_json")


def test_a_multi_line_command_is_accepted(api: httpx.Client, project: TestProject) -> None:
    command = "llama-server -m /models/m.gguf \\\n    -c 2048"
    response = api.post(
        f"/api/projects/{project.slug}/workloads",
        json={**BASE, "config": {"command": command}},
    )
    assert response.status_code == 201, response.text


def test_the_replica_limit_is_named_in_the_error(api: httpx.Client, project: TestProject) -> None:
    response = api.post(
        f"/api/projects/{project.slug}/workloads",
        json={**BASE, "execution_policy_config": {"replicas": 2**31}},
    )
    assert "INFERENCEKEY_MAX_REPLICAS_PER_WORKLOAD" in response.json()["message"]
    assert "at most 100" in response.json()["message"]


@pytest.mark.parametrize(
    "body",
    [
        {"slug": "a\u0000b"},
        {"slug": "ok", "name": "x\ud800"},
        {"slug": "ok", "name": "sk-" + "z" * 30},
    ],
    ids=["NUL slug", "lone surrogate name", "sk- key as name"],
)
def test_admin_names_are_checked_like_specs(admin: httpx.Client, body: dict[str, Any]) -> None:
    # ensure_ascii: a lone surrogate goes as the \ud800 escape, as a hostile client sends it.
    response = admin.post(
        "/api/admin/projects",
        content=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] in ("validation_error", "secret_in_spec")
    assert "z" * 30 not in response.text


def test_a_malformed_body_without_a_credential_is_401_not_400(
    manager: RunningManager, project: TestProject
) -> None:
    for headers in ({}, bearer("ik_sdk_0123abcd_" + "00" * 32)):
        response = httpx.post(
            f"{manager.url}/api/projects/{project.slug}/workloads",
            content=b"{not json",
            headers={"content-type": "application/json", **headers},
        )
        assert (response.status_code, response.json()["code"]) == (401, "invalid_credentials")


def test_405_names_the_allowed_methods(api: httpx.Client) -> None:
    response = api.put("/api/workers")
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"
    assert "GET" in response.headers["allow"]


def _heartbeat(**inventory: Any) -> dict[str, Any]:
    return {"inventory": {"source": "simulated", **inventory}, "replicas": []}


@pytest.mark.parametrize(
    "body",
    [
        _heartbeat(cpu_count=2**40),
        _heartbeat(memory_mb=-1),
        _heartbeat(hostname="a\u0000b"),
        _heartbeat(gpus=[{"index": 0, "uuid": "GPU-\u0000", "name": "L4", "memory_total_mb": 1}]),
        _heartbeat(gpus=[{"index": 2**63, "uuid": "GPU-1", "name": "L4", "memory_total_mb": 1}]),
        {**_heartbeat(), "replicas": [{"id": "rep", "state": "ready", "port": 70000}]},
    ],
    ids=["cpu count", "negative memory", "NUL hostname", "NUL gpu uuid", "gpu index", "port"],
)
def test_agent_heartbeats_out_of_range_or_with_nul_are_a_typed_400(
    manager: RunningManager, admin: httpx.Client, body: dict[str, Any]
) -> None:
    # Private to a project of its own, so no other test sees an agentless worker in its pool.
    owner = create_project(admin)["slug"]
    worker = admin.post("/api/admin/workers", json={"project": owner}).json()
    response = httpx.post(
        f"{manager.url}/api/agent/heartbeat", json=body, headers=bearer(worker["token"])
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "validation_error"


def test_openapi_lists_bearer_schemes_and_the_real_error_responses(
    manager: RunningManager,
) -> None:
    document = httpx.get(f"{manager.url}/api/openapi.json").json()
    assert set(document["components"]["securitySchemes"]) == {
        "sdkToken",
        "adminToken",
        "agentToken",
    }
    create = document["paths"]["/api/projects/{project}/workloads"]["post"]
    assert {"400", "401", "403", "409", "413", "429", "503"} <= set(create["responses"])
    assert "422" not in create["responses"]
    assert create["security"] == [{"sdkToken": []}]


def _raw(url: str, request: bytes, read_timeout: float = 10) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=read_timeout) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


def test_the_servers_own_400_is_the_json_error_shape(manager: RunningManager) -> None:
    answer = _raw(manager.url, b"GET / HTTP/1.1\r\nhost: x\r\nbad header\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert json.loads(body)["code"] == "invalid_request"


def test_a_500_is_the_json_error_and_keeps_the_keep_alive_connection() -> None:
    # The Manager has no route known to crash; this app is the Manager's error handling
    # (install_error_handlers) around one route that does, served like the Manager is.
    import threading

    import uvicorn
    from fastapi import FastAPI

    from ik_contracts.http_server import ServerLimits, uvicorn_options
    from manager.http_errors import install_error_handlers

    app = FastAPI()
    install_error_handlers(app)

    @app.get("/crash")
    async def crash() -> None:
        raise RuntimeError("boom")

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="critical",
            **uvicorn_options(ServerLimits()),
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            for _ in range(2):
                connection.sendall(b"GET /crash HTTP/1.1\r\nhost: x\r\n\r\n")
                head = b""
                while b"\r\n\r\n" not in head:
                    head += connection.recv(65536)
                head, _, body = head.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                while len(body) < length:
                    body += connection.recv(65536)
                assert head.startswith(b"HTTP/1.1 500")
                assert b"connection: close" not in head.lower()
                assert json.loads(body)["code"] == "internal_error"
                assert "boom" not in body.decode()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
