"""Async jobs through the gateway with the real llama.cpp engine: submitted in milliseconds,
claimed from Postgres, run through a ready replica, read back by the submitting key's peers."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from tests.e2e.serving import CHAT, Serve, chat_spec, embed_spec, endpoint
from tests.support import RunningManager, TestProject, create_live_key, wait_until


def wait_job(client: httpx.Client, job_id: str, timeout: float = 60) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        answer = client.get(f"/jobs/{job_id}")
        assert answer.status_code == 200, answer.text
        job = answer.json()
        return job if job["status"] in ("succeeded", "failed") else None

    return wait_until(finished, timeout, f"job {job_id} never finished", interval=0.2)


def test_chat_and_embeddings_jobs_run_and_come_back_with_their_context(
    serve: Serve,
    gguf_model: Path,
    manager: RunningManager,
    project: TestProject,
    live_key: str,
) -> None:
    serve(chat_spec(gguf_model), embed_spec(gguf_model))
    context = {"ticket": 42, "tags": ["a", None], "nested": {"x": 1.5}}
    with endpoint(manager, project, "chat", live_key) as chat:
        started = time.monotonic()
        submitted = chat.post("/jobs", json={"kind": "chat", "body": CHAT, "context": context})
        submit_s = time.monotonic() - started
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["job_id"]
        assert uuid.UUID(job_id) and set(submitted.json()) == {"job_id"}
        job = wait_job(chat, job_id)
    assert submit_s < 2, submit_s
    assert job["status"] == "succeeded", job
    assert job["kind"] == "chat" and job["attempts"] == 1
    assert job["context"] == context  # verbatim, apart from internal metadata
    data = job["data"]
    assert data["status"] == "ok" and data["job_id"] == job_id
    assert data["payload"]["choices"][0]["message"]["content"] is not None
    assert data["usage"]["output_tokens"] > 0 and data["usage"]["input_tokens"] > 0

    with endpoint(manager, project, "emb", live_key) as emb:
        submitted = emb.post("/jobs", json={"kind": "embeddings", "body": {"input": ["a", "b"]}})
        assert submitted.status_code == 202, submitted.text
        job = wait_job(emb, submitted.json()["job_id"])
    assert job["status"] == "succeeded", job
    assert "context" not in job
    assert len(job["data"]["payload"]["data"]) == 2


def test_job_routes_refuse_what_the_contract_refuses_and_change_nothing(
    manager: RunningManager,
    project: TestProject,
    live_key: str,
    admin: httpx.Client,
    api: httpx.Client,
    gguf_model: Path,
) -> None:
    spec = chat_spec(gguf_model, slug="quiet")
    body = {"name": "quiet", "slug": "quiet", "model_name": spec.model, "backend": "llamacpp"}
    assert api.post(f"/api/projects/{project.slug}/workloads", json=body).status_code == 201
    with endpoint(manager, project, "quiet", live_key) as client:
        wait_until(
            lambda: client.get(f"/jobs/{uuid.uuid4()}").json()["code"] == "job_not_found",
            10,
            "the gateway never knew the workload",
        )
        for envelope, code, words in (
            ({"kind": "poetry", "body": CHAT}, "validation_error", "kind must be one of chat,"),
            ({"kind": "chat"}, "validation_error", "exactly one of body"),
            ({"kind": "audio_voices", "body": {}}, "validation_error", "cannot be submitted"),
            (
                {"kind": "chat", "body_b64": "YQ==", "content_type": "text/plain"},
                "validation_error",
                "takes body, not body_b64",
            ),
            ({"kind": "chat", "body": {"messages": []}}, "validation_error", "non-empty list"),
            (
                {"kind": "embeddings", "body": {"input": ["a"]}},
                "route_not_served",
                "which task type embedding serves",
            ),
        ):
            answer = client.post("/jobs", json=envelope)
            assert answer.status_code == 400, (envelope, answer.text)
            assert answer.json()["code"] == code
            assert words in answer.json()["message"], answer.json()
        unknown = client.get(f"/jobs/{uuid.uuid4()}")
        assert unknown.json()["code"] == "job_not_found"
        assert client.get("/jobs").status_code == 405
        assert client.delete(f"/jobs/{uuid.uuid4()}").status_code == 405
    # Nothing was queued by any of them.
    assert asyncio.run(job_count(manager.database_url, project.id)) == 0

    # A job is seen only through keys that may call its workload.
    with endpoint(manager, project, "quiet", live_key) as client:
        job_id = client.post("/jobs", json={"kind": "chat", "body": CHAT}).json()["job_id"]
        assert client.get(f"/jobs/{job_id}").json()["status"] in ("queued", "running")
    other = create_live_key(admin, project.slug, workloads=["chat"])
    with endpoint(manager, project, "quiet", other) as client:
        assert client.get(f"/jobs/{job_id}").status_code == 403
    with endpoint(manager, project, "chat", live_key) as client:
        assert client.get(f"/jobs/{job_id}").status_code == 404  # another workload's job


async def job_count(database_url: str, project_id: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        return int(
            await connection.fetchval("SELECT count(*) FROM jobs WHERE project_id = $1", project_id)
        )
    finally:
        await connection.close()


async def abandoned_job(database_url: str, project_id: str, workload_id: str) -> str:
    """A job a Manager claimed and then died with: running, under a lease that has expired."""
    job_id = str(uuid.uuid4())
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            "INSERT INTO jobs (id, project_id, workload_id, key_id, kind, route, body, "
            "content_type, status, attempts, claimed_by, lease_until, started_at) VALUES "
            "($1, $2, $3, 'deadbeef', 'chat', 'v1/chat/completions', $4, 'application/json', "
            "'running', 1, 'mgr_killed', now() - interval '1 second', now() - interval '1 minute')",
            job_id,
            project_id,
            workload_id,
            json.dumps(CHAT).encode(),
        )
    finally:
        await connection.close()
    return job_id


def test_a_job_whose_manager_died_mid_run_is_claimed_again_when_its_lease_expires(
    serve: Serve,
    gguf_model: Path,
    manager: RunningManager,
    project: TestProject,
    live_key: str,
    api: httpx.Client,
) -> None:
    serve(chat_spec(gguf_model))
    workload_id = api.get("/api/workloads/chat").json()["id"]
    job_id = asyncio.run(abandoned_job(manager.database_url, project.id, workload_id))
    with endpoint(manager, project, "chat", live_key) as client:
        job = wait_job(client, job_id)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2  # the dead Manager's attempt and this one
    assert job["data"]["payload"]["choices"]
