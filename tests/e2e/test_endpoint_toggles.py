"""Endpoint toggles: a workload's routes and its async jobs switched on and off through the
control API, and the gateway refusing what is off, sync and async alike."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx

from tests.e2e.serving import CHAT, endpoint
from tests.support import (
    RunningManager,
    TestProject,
    bearer,
    create_project,
    create_sdk_token,
    wait_until,
)


def create_workload(api: httpx.Client, project: TestProject, slug: str, **fields: Any) -> None:
    body = {"name": slug, "slug": slug, "model_name": "m.gguf", "backend": "llamacpp", **fields}
    answer = api.post(f"/api/projects/{project.slug}/workloads", json=body)
    assert answer.status_code == 201, answer.text


def toggles(api: httpx.Client, slug: str) -> dict[str, bool]:
    answer = api.get(f"/api/workloads/{slug}/endpoints")
    assert answer.status_code == 200, answer.text
    endpoints: dict[str, bool] = answer.json()["endpoints"]
    return endpoints


def switch(api: httpx.Client, slug: str, **changes: bool) -> httpx.Response:
    return api.patch(f"/api/workloads/{slug}/endpoints", json={"endpoints": changes})


def known_by_gateway(call: Callable[[], httpx.Response]) -> httpx.Response:
    """The first answer that is not the 404 of a workload the gateway has not loaded yet."""

    def answered() -> httpx.Response | None:
        answer = call()
        return None if answer.status_code == 404 else answer

    found: httpx.Response = wait_until(answered, 10, "the gateway never knew the workload")
    return found


def test_a_new_workload_starts_with_jobs_and_its_task_types_routes_on(
    manager: RunningManager, project: TestProject, api: httpx.Client
) -> None:
    create_workload(api, project, "talk")
    create_workload(api, project, "vec", task_type="embedding")
    create_workload(api, project, "sorter", task_type="classification", backend="vllm")
    assert toggles(api, "talk") == {"jobs": True, "chat": True, "completions": True}
    assert toggles(api, "vec") == {"jobs": True, "embeddings": True}
    assert toggles(api, "sorter") == {"jobs": True, "classification": True}
    workload_id = api.get("/api/workloads/talk").json()["id"]
    assert api.get(f"/api/workloads/{workload_id}/endpoints").json()["workload_id"] == workload_id


def test_switched_off_routes_are_refused_sync_and_async_and_come_back_when_on(
    manager: RunningManager, project: TestProject, api: httpx.Client, live_key: str
) -> None:
    create_workload(api, project, "chat")  # no worker: a request that passes the toggles gets 503
    with endpoint(manager, project, "chat", live_key) as client:
        wait_until(
            lambda: client.get(f"/jobs/{uuid.uuid4()}").json()["code"] == "job_not_found",
            10,
            "the gateway never knew the workload",
        )
        queued = client.post("/jobs", json={"kind": "chat", "body": CHAT})
        assert queued.status_code == 202, queued.text

        answer = switch(api, "chat", chat=False)
        assert answer.status_code == 200, answer.text
        assert answer.json()["endpoints"] == {"jobs": True, "chat": False, "completions": True}

        def refused(path: str, **request: Any) -> dict[str, Any] | None:
            answer = client.post(path, **request)
            return answer.json() if answer.status_code == 403 else None

        problem = wait_until(
            lambda: refused("/v1/chat/completions", json=CHAT), 10, "chat was never switched off"
        )
        assert problem["code"] == "endpoint_disabled"
        assert "chat endpoint" in problem["message"]
        # The async twin of a route switched off is refused too; the other route is not.
        problem = refused("/jobs", json={"kind": "chat_completions", "body": CHAT})
        assert problem is not None and problem["code"] == "endpoint_disabled"
        completions = client.post("/v1/completions", json={"prompt": "hi"}, timeout=30)
        assert completions.status_code != 403, completions.text

        # jobs off: no job of any kind, even with its route on; the jobs already queued can
        # still be read.
        assert switch(api, "chat", chat=True, jobs=False).status_code == 200

        def jobs_refused() -> dict[str, Any] | None:
            problem = refused("/jobs", json={"kind": "chat", "body": CHAT})
            return problem if problem and "jobs endpoint" in problem["message"] else None

        problem = wait_until(jobs_refused, 10, "jobs were never switched off")
        assert problem["code"] == "endpoint_disabled"
        assert client.get(f"/jobs/{queued.json()['job_id']}").status_code == 200
        sync = client.post("/v1/chat/completions", json=CHAT, timeout=30)
        assert sync.status_code != 403, sync.text

        assert switch(api, "chat", jobs=True).json()["endpoints"]["jobs"] is True
        wait_until(
            lambda: client.post("/jobs", json={"kind": "chat", "body": CHAT}).status_code == 202,
            10,
            "jobs never came back on",
        )

    events = api.get("/api/workloads/chat/events").json()["events"]
    switched = [e["message"] for e in events if e["kind"] == "endpoints_changed"]
    assert switched == [
        "endpoints switched: chat off",
        "endpoints switched: chat on, jobs off",
        "endpoints switched: jobs on",
    ]


def test_toggle_changes_are_checked_and_scoped(
    manager: RunningManager, project: TestProject, api: httpx.Client, admin: httpx.Client
) -> None:
    create_workload(api, project, "talk")
    for changes, field in (
        ({"embeddings": False}, "endpoints.embeddings"),
        ({"v1/chat/completions": False}, "endpoints.v1/chat/completions"),
    ):
        answer = switch(api, "talk", **changes)
        assert answer.status_code == 400, answer.text
        assert answer.json()["code"] == "validation_error" and answer.json()["field"] == field
        assert "its endpoints are jobs, chat, completions" in answer.json()["message"]
    for body in ({"endpoints": {"chat": "off"}}, {"chat": False}, [1]):
        answer = api.patch("/api/workloads/talk/endpoints", json=body)
        assert answer.status_code == 400, (body, answer.text)
    assert toggles(api, "talk") == {"jobs": True, "chat": True, "completions": True}

    reader = create_sdk_token(admin, project.slug, read_only=True)
    with httpx.Client(base_url=manager.url, headers=bearer(reader)) as read_only:
        assert read_only.get("/api/workloads/talk/endpoints").status_code == 200
        answer = switch(read_only, "talk", chat=False)
        assert answer.status_code == 403 and answer.json()["code"] == "scope_insufficient"
    stranger_project = create_project(admin)
    stranger = create_sdk_token(admin, stranger_project["slug"])
    with httpx.Client(base_url=manager.url, headers=bearer(stranger)) as other:
        workload_id = api.get("/api/workloads/talk").json()["id"]
        answer = switch(other, workload_id, chat=False)
        assert answer.status_code == 403 and answer.json()["code"] == "project_scope_mismatch"
        assert switch(other, "talk", chat=False).status_code == 404
    assert toggles(api, "talk") == {"jobs": True, "chat": True, "completions": True}


def test_classification_and_reward_jobs_go_to_the_engines_own_routes(
    manager: RunningManager,
    project: TestProject,
    api: httpx.Client,
    live_key: str,
) -> None:
    create_workload(api, project, "sorter", task_type="classification", backend="vllm")
    create_workload(api, project, "rater", task_type="reward", backend="sglang")
    create_workload(api, project, "scorer", task_type="reward", backend="vllm")
    with endpoint(manager, project, "sorter", live_key) as client:
        answer = known_by_gateway(
            lambda: client.post("/jobs", json={"kind": "classification", "body": {"input": "a"}})
        )
        assert answer.status_code == 202, answer.text  # to vLLM's /classify
        # Async only: no sync route serves it.
        sync = client.post("/v1/chat/completions", json=CHAT)
        assert sync.status_code == 400 and "served as async jobs" in sync.json()["message"]
    with endpoint(manager, project, "rater", live_key) as client:
        answer = known_by_gateway(lambda: client.post("/jobs", json={"kind": "reward", "body": {}}))
        assert answer.status_code == 400 and answer.json()["code"] == "route_not_served"
        assert "need an engine with a reward route" in answer.json()["message"]
    with endpoint(manager, project, "scorer", live_key) as client:
        wrong = known_by_gateway(
            lambda: client.post("/jobs", json={"kind": "classification", "body": {}})
        )
        # vLLM has a classify route, but a reward workload's task type does not serve it.
        assert wrong.status_code == 400 and "which task type classification" in wrong.text
        right = client.post("/jobs", json={"kind": "reward", "body": {"input": "a"}})
        assert right.status_code == 202, right.text  # to vLLM's /pooling
    routes = asyncio.run(job_routes(manager.database_url, project.id))
    assert sorted(routes) == ["classify", "pooling"]


async def job_routes(database_url: str, project_id: str) -> list[str]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch("SELECT route FROM jobs WHERE project_id = $1", project_id)
        return [row["route"] for row in rows]
    finally:
        await connection.close()
