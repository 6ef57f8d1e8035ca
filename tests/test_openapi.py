"""The OpenAPI document is true: every /api route answers what the document says it answers.

Each route is called for real, with the credential it takes, and its answer is checked against
the document's response for that status: the media type, and for JSON the schema (the security
lane in tests/security/ drives its requests from this same document).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from inferencekey.backend import BackendPackage, package_backend
from jsonschema import Draft202012Validator

from tests.support import RunningManager, TestProject, bearer
from tests.webhook_receiver import terminal_delivery

A100 = "NVIDIA A100-SXM4-80GB"
WORKLOAD = {
    "name": "Doc bot",
    "slug": "doc-bot",
    "backend": "vllm",
    "model_name": "Qwen/Qwen2.5-0.5B-Instruct",
    "config": {"command": "vllm serve Qwen/Qwen2.5-0.5B-Instruct", "vllm_version": "0.6.3"},
    "execution_policy": "fixed",
    "execution_policy_config": {"replicas": 1},
}


class Document:
    """The served OpenAPI document, and which of its /api operations a test has called."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.called: set[tuple[str, str]] = set()

    def operations(self) -> set[tuple[str, str]]:
        return {
            (method.upper(), path)
            for path, operations in self.body["paths"].items()
            if path.startswith("/api")
            for method in operations
        }

    def response(self, method: str, path: str, status: int) -> dict[str, Any]:
        documented = self.body["paths"][path][method.lower()]["responses"]
        assert str(status) in documented, f"{method} {path} answered {status}, not documented"
        return dict(documented[str(status)])

    def check(self, method: str, path: str, response: httpx.Response) -> None:
        """``response`` is what the document says ``method path`` answers with its status."""
        self.called.add((method, path))
        content = self.response(method, path, response.status_code).get("content")
        if not content:
            assert response.content == b"", (method, path, response.text)
            return
        media_type = response.headers["content-type"].split(";")[0]
        assert media_type in content, (method, path, media_type, list(content))
        if media_type == "application/json":
            self.validate(content[media_type]["schema"], response.json())

    def validate(self, schema: dict[str, Any], instance: Any) -> None:
        assert schema, "an empty schema documents nothing"
        root = {**schema, "components": self.body["components"]}
        errors = [e.message for e in Draft202012Validator(root).iter_errors(instance)]
        assert not errors, (errors, instance)


@pytest.fixture
def document(manager: RunningManager) -> Document:
    response = httpx.get(f"{manager.url}/api/openapi.json")
    assert response.status_code == 200, response.text
    return Document(response.json())


@pytest.fixture
def sdk(manager: RunningManager, project: TestProject) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=manager.url, headers=bearer(project.sdk_token)) as client:
        yield client


def test_every_json_answer_in_the_document_has_a_schema(document: Document) -> None:
    for method, path in document.operations():
        responses = document.body["paths"][path][method.lower()]["responses"]
        for status, answer in responses.items():
            for media_type, body in answer.get("content", {}).items():
                assert body.get("schema"), (method, path, status, media_type)
                if media_type == "application/json":
                    schema = body["schema"]
                    assert "$ref" in schema or schema.get("type") == "object", (
                        method,
                        path,
                        status,
                        schema,
                    )


def test_every_api_route_answers_what_the_document_says(
    manager: RunningManager,
    admin: httpx.Client,
    project: TestProject,
    sdk: httpx.Client,
    document: Document,
    tmp_path: Path,
) -> None:
    def call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = path.format(project=project.slug, workload_slug="doc-bot", **kwargs.pop("at", {}))
        response = client.request(method, url, **kwargs)
        document.check(method, path, response)
        return response

    # The operator's routes.
    new_project = {"slug": f"doc-{secrets.token_hex(4)}"}
    assert call(admin, "POST", "/api/admin/projects", json=new_project).status_code == 201
    call(admin, "GET", "/api/admin/projects")
    call(admin, "POST", "/api/admin/tokens", json={"project": project.slug, "read_only": True})
    key = call(admin, "POST", "/api/admin/keys", json={"project": project.slug, "all": True})
    call(admin, "GET", "/api/admin/tokens", params={"project": project.slug})
    call(admin, "DELETE", "/api/admin/tokens/{token_ref}", at={"token_ref": key.json()["id"]})
    worker = call(admin, "POST", "/api/admin/workers", json={"project": project.slug}).json()

    # The agent protocol, from a worker of this project with one simulated GPU.
    with httpx.Client(base_url=manager.url, headers=bearer(worker["token"])) as agent:
        heartbeat = {
            "inventory": {
                "source": "simulated",
                "hostname": "doc-host",
                "gpus": [{"index": 0, "uuid": "GPU-doc-0", "name": A100, "memory_total_mb": 81920}],
            }
        }
        call(agent, "POST", "/api/agent/heartbeat", json=heartbeat)
        call(agent, "GET", "/api/agent/assignments", params={"wait": 0})

    # The control plane, with the project's SDK token.
    path = "/api/projects/{project}/workloads"
    assert call(sdk, "POST", path, json=WORKLOAD).status_code == 201
    assert call(sdk, "POST", path, json=WORKLOAD).status_code == 200  # the same spec again
    call(sdk, "GET", path)
    call(sdk, "GET", "/api/workloads/{workload_ref}", at={"workload_ref": "doc-bot"})
    call(
        sdk,
        "PATCH",
        "/api/workloads/{workload_ref}",
        at={"workload_ref": "doc-bot"},
        json={"description": "documents the document"},
    )
    call(sdk, "GET", "/api/workloads/{workload_ref}/events", at={"workload_ref": "doc-bot"})
    call(sdk, "GET", "/api/workloads/{workload_ref}/replicas", at={"workload_ref": "doc-bot"})
    call(sdk, "GET", "/api/workers")
    call(sdk, "GET", "/api/gpu-resources")
    price = {"name": A100, "usd_per_hour": 1.89}
    assert call(admin, "PUT", "/api/admin/gpu-prices", json=price).json()["usd_per_hour"] == 1.89
    call(sdk, "GET", "/api/gpu-catalog")
    call(admin, "GET", "/api/admin/workloads")

    # The readiness stream: its first frame is a ReadinessEvent.
    stream = "/api/projects/{project}/workloads/{workload_slug}/readiness-events"
    with sdk.stream("GET", stream.format(project=project.slug, workload_slug="doc-bot")) as answer:
        document.called.add(("GET", stream))
        assert answer.status_code == 200
        content = document.response("GET", stream, 200)["content"]
        assert answer.headers["content-type"].split(";")[0] in content
        frame = next(line for line in answer.iter_lines() if line.startswith("data:"))
    event_schema = content["text/event-stream"]["x-sse-data"]
    document.validate(event_schema, json.loads(frame.removeprefix("data:")))

    # Engine logs need a running engine (tests/e2e/test_engine_logs.py): here, the documented
    # error, as this workload's one replica has no agent to answer for it.
    call(
        sdk,
        "GET",
        "/api/workloads/{workload_ref}/replicas/{replica_id}/logs",
        at={"workload_ref": "doc-bot", "replica_id": "rep_none"},
    )
    call(admin, "GET", "/api/admin/workloads/{project}/{workload_slug}/logs")

    # Endpoint toggles, through the control plane and the operator's routes.
    toggles = "/api/workloads/{workload_ref}/endpoints"
    call(sdk, "GET", toggles, at={"workload_ref": "doc-bot"})
    switched = {"endpoints": {"completions": False}}
    call(sdk, "PATCH", toggles, at={"workload_ref": "doc-bot"}, json=switched)
    operator_toggles = "/api/admin/workloads/{project}/{workload_slug}/endpoints"
    call(admin, "GET", operator_toggles)
    answer = call(admin, "PATCH", operator_toggles, json={"endpoints": {"completions": True}})
    assert answer.json()["endpoints"]["completions"] is True

    # Webhooks, through the control plane and the operator's routes; a job and a terminal
    # delivery as the dispatcher and the deliverer leave them (tests/test_webhooks.py makes real
    # ones). The pings go to a closed port: answered, not delivered.
    closed = "http://127.0.0.1:9/hook"
    hooks, ref = "/api/workloads/{workload_ref}/webhooks", {"workload_ref": "doc-bot"}
    hook = call(sdk, "POST", hooks, at=ref, json={"url": closed}).json()
    call(sdk, "GET", hooks, at=ref)
    one = {**ref, "webhook_id": hook["id"]}
    call(sdk, "PATCH", hooks + "/{webhook_id}", at=one, json={"enabled": False})
    assert call(sdk, "POST", hooks + "/{webhook_id}/test", at=one).json()["delivered"] is False
    workload_id = sdk.get("/api/workloads/doc-bot").json()["id"]
    job_id, delivery_id = asyncio.run(
        terminal_delivery(manager.database_url, project.id, workload_id, hook["id"])
    )
    call(sdk, "GET", "/api/workloads/{workload_ref}/jobs", at=ref, params={"limit": 5})
    job = call(
        sdk, "GET", "/api/workloads/{workload_ref}/jobs/{job_id}", at={**ref, "job_id": job_id}
    )
    assert [d["id"] for d in job.json()["deliveries"]] == [delivery_id]
    call(
        sdk,
        "GET",
        "/api/workloads/{workload_ref}/deliveries",
        at=ref,
        params={"status": "terminal"},
    )
    again = "/api/workloads/{workload_ref}/deliveries/{delivery_id}/redeliver"
    assert call(sdk, "POST", again, at={**ref, "delivery_id": delivery_id}).status_code == 200
    assert call(sdk, "DELETE", hooks + "/{webhook_id}", at=one).status_code == 204
    operator_hooks = "/api/admin/workloads/{project}/{workload_slug}/webhooks"
    hook = call(admin, "POST", operator_hooks, json={"url": closed}).json()
    call(admin, "GET", operator_hooks)
    one = {"webhook_id": hook["id"]}
    call(admin, "PATCH", operator_hooks + "/{webhook_id}", at=one, json={"enabled": True})
    call(admin, "POST", operator_hooks + "/{webhook_id}/test", at=one)
    _, delivery_id = asyncio.run(
        terminal_delivery(manager.database_url, project.id, workload_id, hook["id"])
    )
    call(admin, "GET", "/api/admin/workloads/{project}/{workload_slug}/deliveries")
    again = "/api/admin/workloads/{project}/{workload_slug}/deliveries/{delivery_id}/redeliver"
    call(admin, "POST", again, at={"delivery_id": delivery_id})
    call(admin, "DELETE", operator_hooks + "/{webhook_id}", at=one)

    # Usage: one counted minute, as the gateway writes it (tests/e2e/test_usage.py makes real
    # ones), read in each grouping.
    asyncio.run(count_usage(manager.database_url, project.id, key.json()["id"]))
    for group_by in ("workload", "key", "day"):
        answer = call(sdk, "GET", "/api/projects/{project}/usage", params={"group_by": group_by})
        assert answer.json()["rows"][0]["requests"] == 3
    call(admin, "GET", "/api/admin/projects/{project}/usage", params={"from": "2026-01-01"})

    deleted = call(sdk, "DELETE", "/api/workloads/{workload_ref}", at={"workload_ref": "doc-bot"})
    assert deleted.status_code == 204

    # The custom-backend registry (tests/test_custom_backends.py has each rule): a package
    # published twice (201, then 200), listed, shown, asked for by an agent whose worker runs
    # no replica of it (the documented 404; tests/test_custom_backends.py downloads one) and
    # deleted.
    call(sdk, "GET", "/api/tenants")
    call(admin, "GET", "/api/tenants")
    package = doc_package(tmp_path)
    registry = "/api/tenants/{tenant_id}/custom-backends"
    tenant = {"tenant_id": "default"}
    for expected in (201, 200):
        with package.path.open("rb") as stream:
            published = call(
                sdk,
                "POST",
                registry,
                at=tenant,
                data={"name": "doc-echo", "version": "1.0.0", "entrypoint": "doc_echo:Echo"},
                files={"file": (package.path.name, stream, "application/gzip")},
            )
        assert published.status_code == expected, published.text
    call(sdk, "GET", registry, at=tenant)
    call(admin, "GET", registry + "/{slug}", at={**tenant, "slug": "doc-echo"})
    with httpx.Client(base_url=manager.url, headers=bearer(worker["token"])) as agent:
        download = call(
            agent,
            "GET",
            "/api/agent/custom-backends/{version_id}/package",
            at={"version_id": published.json()["id"]},
        )
    assert download.status_code == 404 and download.json()["code"] == "package_not_found"
    removed = call(sdk, "DELETE", registry + "/{slug}", at={**tenant, "slug": "doc-echo"})
    assert removed.status_code == 204
    assert document.operations() <= document.called, document.operations() - document.called


def doc_package(tmp_path: Path) -> BackendPackage:
    source = tmp_path / "doc_echo.py"
    source.write_text(
        "from inferencekey.backend import CustomBackend, Result\n\n\n"
        "class Echo(CustomBackend):\n"
        "    def setup(self, ctx):\n        pass\n\n"
        "    def process(self, job):\n        return Result({'text': job.text()})\n"
    )
    return package_backend(
        source, entrypoint="doc_echo:Echo", name="doc-echo", version="1.0.0", out=tmp_path
    )


async def count_usage(database_url: str, project_id: str, key_id: str) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            "INSERT INTO usage_counts (project_id, workload_id, key_id, minute, workload_slug, "
            "requests, prompt_tokens, completion_tokens, total_tokens) "
            "VALUES ($1, 'wl_doc', $2, date_trunc('minute', now()), 'doc-bot', 3, 30, 12, 42)",
            project_id,
            key_id,
        )
    finally:
        await connection.close()


def test_errors_are_the_documented_error_body(
    manager: RunningManager, project: TestProject, sdk: httpx.Client, document: Document
) -> None:
    path = "/api/workloads/{workload_ref}"
    unknown = sdk.get("/api/workloads/no-such-workload")
    assert unknown.status_code == 404
    document.check("GET", path, unknown)
    anonymous = httpx.get(f"{manager.url}/api/workloads/doc-bot")
    assert anonymous.status_code == 401
    document.check("GET", path, anonymous)
    invalid = sdk.post(f"/api/projects/{project.slug}/workloads", content=b"{")
    assert invalid.status_code == 400
    document.check("POST", "/api/projects/{project}/workloads", invalid)
