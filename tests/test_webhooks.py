"""Webhook destinations and deliveries against a real Manager, Postgres and HTTP receiver.

Jobs here are finished in SQL and queued for delivery by the very function the dispatcher calls
when a job ends (tests/e2e/test_webhooks.py runs a real job through the real engine), so each
test is about delivery: retries, terminal ones, muting, the jobs toggle, the SSRF rules, a
restart with other settings, a Manager killed mid-attempt.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import Engine, event, func, insert

from manager.db.models import Job
from manager.db.session import make_engine, make_sessionmaker
from manager.webhooks.deliverer import enqueue_deliveries
from tests.support import (
    RunningManager,
    TestProject,
    bearer,
    create_database,
    create_project,
    create_sdk_token,
    drop_database,
    free_port,
    new_admin_token,
    own_manager,
    run_sql,
    wait_until,
)
from tests.webhook_receiver import Answer, receiving, verified

REPO_ROOT = Path(__file__).resolve().parents[1]
TERMINAL_AFTER = 6  # the first attempt and one per retry delay (five)


def new_workload(api: httpx.Client, project: str, slug: str = "hooked") -> dict[str, Any]:
    body = {"name": slug, "slug": slug, "backend": "llamacpp", "model_name": "m"}
    created = api.post(f"/api/projects/{project}/workloads", json=body)
    assert created.status_code == 201, created.text
    return dict(created.json())


def add_webhook(api: httpx.Client, workload: str, url: str, **extra: Any) -> dict[str, Any]:
    added = api.post(f"/api/workloads/{workload}/webhooks", json={"url": url, **extra})
    assert added.status_code == 201, added.text
    return dict(added.json())


def finish_job(
    database_url: str,
    workload: dict[str, Any],
    *,
    status: str = "succeeded",
    result: bytes | None = b'{"answer": 42, "usage": {"prompt_tokens": 3}}',
    content_type: str = "application/json",
    context: str | None = '{"ticket": 7, "tags": ["a", null]}',
) -> tuple[str, int]:
    """A job that ended as the dispatcher ends one: its final UPDATE and its deliveries queued in
    one transaction. The job's id, and how many deliveries were queued."""
    job = {"status": status, "result": result, "content_type": content_type, "context": context}
    (job_id,), queued = asyncio.run(finish_jobs(database_url, workload, [job]))
    return job_id, queued


async def finish_jobs(
    database_url: str, workload: dict[str, Any], jobs: list[dict[str, Any]]
) -> tuple[list[str], int]:
    """Jobs (``finish_job``'s keywords each) ending in one transaction, as a dispatcher's batch
    does: their ids, and how many deliveries were queued."""
    job_ids = [str(uuid.uuid4()) for _ in jobs]
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    try:
        async with make_sessionmaker(engine)() as session:
            for job_id, job in zip(job_ids, jobs, strict=True):
                status = job.get("status", "succeeded")
                await session.execute(
                    insert(Job).values(
                        id=job_id,
                        project_id=workload["project_id"],
                        workload_id=workload["id"],
                        key_id="deadbeef",
                        kind="chat",
                        route="v1/chat/completions",
                        body=b"{}",
                        content_type="application/json",
                        context=job.get("context"),
                        status=status,
                        attempts=1,
                        result=job.get("result"),
                        result_content_type=job.get("content_type", "application/json"),
                        result_status=200,
                        error="the engine answered 500" if status == "failed" else None,
                        started_at=func.now(),
                        finished_at=func.now(),
                    )
                )
            queued = await enqueue_deliveries(session, job_ids)
            await session.commit()
            return job_ids, queued
    finally:
        await engine.dispose()


def deliveries(api: httpx.Client, workload: str, **params: Any) -> list[dict[str, Any]]:
    answer = api.get(f"/api/workloads/{workload}/deliveries", params=params)
    assert answer.status_code == 200, answer.text
    return list(answer.json()["deliveries"])


def wait_delivery(
    api: httpx.Client, workload: str, job_id: str, status: str, timeout: float = 20
) -> dict[str, Any]:
    def settled() -> dict[str, Any] | None:
        found = [d for d in deliveries(api, workload) if d["job_id"] == job_id]
        return found[0] if found and found[0]["status"] == status else None

    return wait_until(settled, timeout, f"delivery of {job_id} never {status}", interval=0.1)


@pytest.fixture
def workload(api: httpx.Client, project: TestProject) -> dict[str, Any]:
    return new_workload(api, project.slug)


# --- destinations -----------------------------------------------------------------------------


def test_a_destination_shows_its_secret_once_and_then_only_its_prefix(
    api: httpx.Client, workload: dict[str, Any]
) -> None:
    added = add_webhook(api, "hooked", "http://127.0.0.1:9/hook")
    secret = added["secret"]
    assert secret.startswith("whsec_") and len(secret) > 40
    assert added["secret_prefix"] == secret[:12]
    assert added["id"].startswith("whd_") and added["enabled"] is True
    assert set(added) >= {"id", "url", "enabled", "secret", "secret_prefix", "created_at"}

    listed = api.get("/api/workloads/hooked/webhooks")
    assert listed.status_code == 200
    assert secret not in listed.text and "secret" not in listed.json()["webhooks"][0]
    assert listed.json()["webhooks"][0]["secret_prefix"] == secret[:12]
    muted = api.patch(f"/api/workloads/hooked/webhooks/{added['id']}", json={"enabled": False})
    assert muted.status_code == 200, muted.text
    assert muted.json()["enabled"] is False and secret not in muted.text
    by_id = api.get(f"/api/workloads/{workload['id']}/webhooks")
    assert [w["id"] for w in by_id.json()["webhooks"]] == [added["id"]]


def test_a_workload_takes_at_most_ten_destinations(
    api: httpx.Client, project: TestProject, workload: dict[str, Any]
) -> None:
    for n in range(10):
        add_webhook(api, "hooked", f"http://127.0.0.1:9/hook/{n}")
    eleventh = api.post("/api/workloads/hooked/webhooks", json={"url": "http://127.0.0.1:9/x"})
    assert eleventh.status_code == 409
    assert eleventh.json()["code"] == "webhook_limit_reached"
    assert "at most 10" in eleventh.json()["message"]
    assert len(api.get("/api/workloads/hooked/webhooks").json()["webhooks"]) == 10
    # The limit is per workload.
    new_workload(api, project.slug, "other")
    add_webhook(api, "other", "http://127.0.0.1:9/hook")


def test_bad_webhook_input_is_a_typed_4xx_and_changes_nothing(
    api: httpx.Client, admin: httpx.Client, project: TestProject, workload: dict[str, Any]
) -> None:
    path = "/api/workloads/hooked/webhooks"
    for sent, status, code, words in (
        ({"content": b"{"}, 400, "malformed_json", "not valid JSON"),
        ({"content": b"[]"}, 400, "invalid_request", "must be a JSON object"),
        ({"json": {}}, 400, "validation_error", "url is required"),
        ({"json": {"url": 5}}, 400, "validation_error", "url must be a string"),
        ({"json": {"url": "http://127.0.0.1:9/", "colour": 1}}, 400, "validation_error", "unknown"),
        ({"json": {"url": "http://127.0.0.1:9/", "enabled": "yes"}}, 400, "validation_error", ""),
        ({"json": {"url": "ftp://127.0.0.1/"}}, 400, "unsafe_webhook_url", "http:// or https://"),
    ):
        answer = api.post(path, **sent)
        assert answer.status_code == status, (sent, answer.text)
        assert answer.json()["code"] == code and words in answer.json()["message"], answer.text
    assert api.get(path).json() == {"webhooks": []}

    added = add_webhook(api, "hooked", "http://127.0.0.1:9/hook")
    one = f"{path}/{added['id']}"
    for body, code in (
        ({"enabled": None}, "validation_error"),
        ({"url": None}, "validation_error"),
        ({"secret": "whsec_x"}, "validation_error"),
        ({"url": "https://user:pw@127.0.0.1/"}, "unsafe_webhook_url"),
    ):
        answer = api.patch(one, json=body)
        assert answer.status_code == 400 and answer.json()["code"] == code, (body, answer.text)
    assert api.get(path).json()["webhooks"][0]["url"] == "http://127.0.0.1:9/hook"

    for method, where, status, code in (
        ("PATCH", f"{path}/whd_nope", 404, "webhook_not_found"),
        ("DELETE", f"{path}/whd_nope", 404, "webhook_not_found"),
        ("POST", f"{path}/whd_nope/test", 404, "webhook_not_found"),
        ("GET", "/api/workloads/nope/webhooks", 404, "workload_not_found"),
        ("GET", "/api/workloads/hooked/deliveries?status=lost", 400, "validation_error"),
        ("GET", "/api/workloads/hooked/jobs?status=done", 400, "validation_error"),
        ("GET", "/api/workloads/hooked/jobs?limit=0", 400, "validation_error"),
        ("GET", "/api/workloads/hooked/jobs?limit=501", 400, "validation_error"),
        ("GET", "/api/workloads/hooked/jobs?limit=x", 400, "validation_error"),
        ("GET", f"/api/workloads/hooked/jobs/{uuid.uuid4()}", 404, "job_not_found"),
        ("POST", "/api/workloads/hooked/deliveries/whdl_nope/redeliver", 404, "delivery_not_found"),
    ):
        answer = api.request(method, where, json={} if method == "PATCH" else None)
        assert answer.status_code == status, (method, where, answer.text)
        assert answer.json()["code"] == code, (method, where, answer.text)

    # Read scope lists; writing needs the write scope; another project's token sees nothing.
    reader = create_sdk_token(admin, project.slug, read_only=True)
    assert api.get(path, headers=bearer(reader)).status_code == 200
    refused = api.post(path, json={"url": "http://127.0.0.1:9/"}, headers=bearer(reader))
    assert refused.status_code == 403 and refused.json()["code"] == "scope_insufficient"
    stranger_project = create_project(admin)["slug"]
    stranger = create_sdk_token(admin, stranger_project)
    answer = api.get(f"/api/workloads/{workload['id']}/webhooks", headers=bearer(stranger))
    assert answer.status_code == 403 and answer.json()["code"] == "project_scope_mismatch"
    assert len(api.get(path).json()["webhooks"]) == 1


def test_deleting_a_destination_deletes_its_deliveries(
    manager: RunningManager, api: httpx.Client, workload: dict[str, Any]
) -> None:
    with receiving(default=500) as receiver:
        added = add_webhook(api, "hooked", receiver.url())
        _, queued = finish_job(manager.database_url, workload)
        assert queued == 1
        receiver.wait_for(1)
        deleted = api.delete(f"/api/workloads/hooked/webhooks/{added['id']}")
        assert deleted.status_code == 204 and deleted.content == b""
        assert deliveries(api, "hooked") == []
        assert api.get("/api/workloads/hooked/webhooks").json() == {"webhooks": []}


# --- the SSRF rules ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def strict_manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningManager]:
    """A Manager with the default rules: https and public addresses only."""
    with own_manager(tmp_path_factory.mktemp("strict"), webhook_allow_private=False) as running:
        yield running


def test_every_unsafe_url_is_refused_at_save_naming_the_rule(
    strict_manager: RunningManager,
) -> None:
    with httpx.Client(
        base_url=strict_manager.url, headers=bearer(strict_manager.admin_token or "")
    ) as admin:
        slug = create_project(admin)["slug"]
        token = create_sdk_token(admin, slug)
    with httpx.Client(base_url=strict_manager.url, headers=bearer(token)) as api:
        new_workload(api, slug)
        for url, words in (
            ("https://127.0.0.1/", "127.0.0.1 is a non-public address"),
            ("https://localhost/", "refused: localhost resolves to a non-public address"),
            ("http://example.com/", "must be https://"),
            ("https://user:pw@example.com/", "must not carry credentials"),
            ("https://user@example.com/", "must not carry credentials"),
            ("https://10.0.0.1/", "10.0.0.1 is a non-public address"),
            ("https://192.168.1.10:8443/", "non-public"),
            ("https://[::1]/", "::1 is a non-public address"),
            ("https://[::ffff:127.0.0.1]/", "non-public"),
            ("https://[fd00::1]/", "non-public"),
            ("https://100.64.0.1/", "100.64.0.1 is a non-public address"),
            ("https://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local"),
            ("https://example.com:0/", "port must be from 1 to 65535"),
            ("https://0.0.0.0/", "unspecified"),
            ("https://224.0.0.1/", "multicast"),
            ("https://example.com/#fragment", "fragment"),
            ("https://" + "a" * 3000 + ".com/", "longer than 2048"),
            ("https:///no-host", "no host"),
            ("https://exa mple.com/", "plain ASCII"),
        ):
            answer = api.post("/api/workloads/hooked/webhooks", json={"url": url})
            assert answer.status_code == 400, (url, answer.text)
            assert answer.json()["code"] == "unsafe_webhook_url", (url, answer.text)
            assert answer.json()["field"] == "url"
            assert words in answer.json()["message"], (url, answer.json()["message"])
        assert api.get("/api/workloads/hooked/webhooks").json() == {"webhooks": []}


def test_link_local_receivers_are_refused_even_where_private_ones_are_allowed(
    manager: RunningManager, api: httpx.Client, workload: dict[str, Any]
) -> None:
    """The suite's Manager allows private receivers (its receivers are on 127.0.0.1), yet the
    cloud metadata address and the rest of link-local stay refused, and so does port 0."""
    assert manager.settings.webhook_allow_private
    for url, words in (
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://169.254.0.1:8080/", "link-local"),
        ("http://[fe80::1]/", "fe80::1 is a link-local address"),
        ("http://[::ffff:169.254.169.254]/", "link-local"),
        ("http://127.0.0.1:0/hook", "port must be from 1 to 65535"),
    ):
        answer = api.post("/api/workloads/hooked/webhooks", json={"url": url})
        assert answer.status_code == 400, (url, answer.text)
        assert answer.json()["code"] == "unsafe_webhook_url"
        assert words in answer.json()["message"], (url, answer.json()["message"])
    add_webhook(api, "hooked", "http://127.0.0.1:9/loopback-is-allowed-here")


def test_a_destination_saved_while_private_addresses_were_allowed_is_refused_at_delivery(
    tmp_path: Path,
) -> None:
    """The rules are checked again at each delivery, after DNS: a Manager restarted without the
    on-prem setting refuses the receivers an earlier one accepted, and says why."""
    database_url = create_database()
    try:
        with receiving() as receiver:
            with own_manager(tmp_path / "a", database_url, webhook_allow_private=True) as first:
                with httpx.Client(
                    base_url=first.url, headers=bearer(first.admin_token or "")
                ) as admin:
                    created = create_project(admin)
                    token = create_sdk_token(admin, created["slug"])
                with httpx.Client(base_url=first.url, headers=bearer(token)) as api:
                    workload = new_workload(api, created["slug"])
                    by_name = add_webhook(
                        api,
                        "hooked",
                        receiver.url().replace("http://127.0.0.1", "https://localhost"),
                    )
                    plain = add_webhook(api, "hooked", receiver.url())
            with (
                own_manager(tmp_path / "b", database_url, webhook_allow_private=False) as second,
                httpx.Client(base_url=second.url, headers=bearer(token)) as api,
            ):
                _, queued = finish_job(second.database_url, workload)
                assert queued == 2

                def errors() -> dict[str, str] | None:
                    found = {d["destination_id"]: d for d in deliveries(api, "hooked")}
                    if any(not d["attempt_log"] for d in found.values()):
                        return None
                    return {k: d["last_error"] for k, d in found.items()}

                seen = wait_until(errors, 20, "no attempt was recorded", interval=0.1)
                refused = "refused: localhost resolves to a non-public address"
                assert seen[by_name["id"]] == refused
                assert seen[plain["id"]].startswith("refused: url must be https://")
                ping = api.post(f"/api/workloads/hooked/webhooks/{plain['id']}/test")
                assert ping.json()["delivered"] is False
                assert ping.json()["error"].startswith("refused: url must be https://")
            assert receiver.received == []
    finally:
        drop_database(database_url)


# --- delivery ---------------------------------------------------------------------------------


def test_the_test_ping_is_signed_and_verifiable(
    api: httpx.Client, workload: dict[str, Any]
) -> None:
    with receiving(200, 500) as receiver:
        added = add_webhook(api, "hooked", receiver.url("/ping?x=1"), enabled=False)
        answer = api.post(f"/api/workloads/hooked/webhooks/{added['id']}/test")
        assert answer.status_code == 200, answer.text
        result = answer.json()
        assert result["delivered"] is True and result["status_code"] == 200
        assert result["error"] is None and result["duration_ms"] >= 0
        (ping,) = receiver.received
        assert ping.path == "/ping?x=1"
        assert ping.headers["x-inferencekey-event"] == "ping"
        assert ping.headers["content-type"] == "application/json"
        assert "x-inferencekey-job-id" not in ping.headers
        assert ping.headers["host"] == f"127.0.0.1:{receiver.port}"
        event = verified(ping, added["secret"])
        assert event["event"] == "ping" and event["data"] == {"destination_id": added["id"]}
        assert event["ts"].endswith("Z")

        failed = api.post(f"/api/workloads/hooked/webhooks/{added['id']}/test").json()
        assert failed == {**failed, "delivered": False, "status_code": 500}
        assert failed["error"] == "answered HTTP 500"


def test_a_destination_that_never_succeeds_ends_terminal_after_six_attempts_and_redelivers(
    manager: RunningManager, api: httpx.Client, workload: dict[str, Any]
) -> None:
    with receiving(default=500) as receiver:
        added = add_webhook(api, "hooked", receiver.url())
        job_id, _ = finish_job(manager.database_url, workload, status="failed", result=None)
        terminal = wait_delivery(api, "hooked", job_id, "terminal")
        assert terminal["attempts"] == TERMINAL_AFTER and terminal["event"] == "job.failed"
        assert [a["attempt"] for a in terminal["attempt_log"]] == [1, 2, 3, 4, 5, 6]
        assert {a["status_code"] for a in terminal["attempt_log"]} == {500}
        assert terminal["last_error"] == "answered HTTP 500" and terminal["next_attempt_at"] is None
        time.sleep(0.6)  # no seventh attempt
        assert len(receiver.received) == TERMINAL_AFTER
        event = verified(receiver.received[0], added["secret"])
        assert event["data"]["status"] == "error"
        assert event["data"]["error"] == "the engine answered 500"

        listed = deliveries(api, "hooked", status="terminal")
        assert [d["id"] for d in listed] == [terminal["id"]]
        assert deliveries(api, "hooked", status="pending") == []
        again = api.post(f"/api/workloads/hooked/deliveries/{terminal['id']}/redeliver")
        assert again.status_code == 200, again.text
        assert again.json()["attempts"] == 0 and again.json()["attempt_log"] == []
        receiver.default = Answer(200)
        delivered = wait_delivery(api, "hooked", job_id, "delivered")
        assert delivered["attempts"] == 1 and delivered["delivered_at"] is not None
        assert delivered["last_status_code"] == 200 and delivered["last_error"] is None
        assert len(receiver.received) == TERMINAL_AFTER + 1
        not_terminal = api.post(f"/api/workloads/hooked/deliveries/{terminal['id']}/redeliver")
        assert not_terminal.status_code == 409
        assert not_terminal.json()["code"] == "delivery_not_terminal"

    job = api.get(f"/api/workloads/hooked/jobs/{job_id}").json()
    assert job["status"] == "failed" and [d["id"] for d in job["deliveries"]] == [terminal["id"]]
    assert job_id in [j["job_id"] for j in api.get("/api/workloads/hooked/jobs").json()["jobs"]]
    failed = api.get("/api/workloads/hooked/jobs", params={"status": "failed", "limit": 1})
    assert [j["job_id"] for j in failed.json()["jobs"]] == [job_id]


def test_a_muted_destination_gets_nothing_and_its_pending_deliveries_are_skipped(
    manager: RunningManager, api: httpx.Client, workload: dict[str, Any]
) -> None:
    with receiving() as on, receiving() as muted, receiving(default=500) as failing:
        add_webhook(api, "hooked", on.url())
        add_webhook(api, "hooked", muted.url(), enabled=False)
        late = add_webhook(api, "hooked", failing.url())
        _, queued = finish_job(manager.database_url, workload)
        assert queued == 2  # none for the muted destination
        on.wait_for(1)
        failing.wait_for(2)
        switched = api.patch(
            f"/api/workloads/hooked/webhooks/{late['id']}", json={"enabled": False}
        )
        assert switched.status_code == 200
        found = {d["destination_id"]: d for d in deliveries(api, "hooked")}
        assert found[late["id"]]["status"] == "skipped"
        assert found[late["id"]]["last_error"] == "destination muted"
        time.sleep(0.3)  # an attempt claimed just before the mute may still arrive
        count = len(failing.received)
        time.sleep(0.8)
        assert len(failing.received) == count  # nothing more after the mute
        assert muted.received == []


def test_jobs_switched_off_queue_no_delivery(
    manager: RunningManager, api: httpx.Client, workload: dict[str, Any]
) -> None:
    with receiving() as receiver:
        add_webhook(api, "hooked", receiver.url())
        run_sql(
            manager.database_url,
            "UPDATE workloads SET endpoints_off = '{jobs}' WHERE id = $1",
            workload["id"],
        )
        job_id, queued = finish_job(manager.database_url, workload)
        assert queued == 0 and deliveries(api, "hooked") == []
        rows = run_sql(
            manager.database_url, "SELECT 1 FROM webhook_deliveries WHERE job_id = $1", job_id
        )
        assert rows == []
        run_sql(
            manager.database_url,
            "UPDATE workloads SET endpoints_off = '{}' WHERE id = $1",
            workload["id"],
        )
        job_id, queued = finish_job(manager.database_url, workload)
        assert queued == 1
        wait_delivery(api, "hooked", job_id, "delivered")
        assert len(receiver.received) == 1


def test_a_job_body_carries_its_context_verbatim_and_binary_results_as_base64(
    manager: RunningManager, api: httpx.Client, workload: dict[str, Any]
) -> None:
    with receiving() as receiver:
        added = add_webhook(api, "hooked", receiver.url())
        context = '{"ticket": 7, "tags": ["a", null], "x": 1.5}'
        job_id, _ = finish_job(manager.database_url, workload, context=context)
        (received,) = receiver.wait_for(1)
        event = verified(received, added["secret"])
        assert received.headers["x-inferencekey-event"] == "job"
        assert received.headers["x-inferencekey-job-id"] == job_id
        assert f'"context":{context},' in received.body.decode()
        assert event["event"] == "job.completed" and event["job_id"] == job_id
        assert event["data"] == api.get(f"/api/workloads/hooked/jobs/{job_id}").json()["data"]
        assert event["data"]["payload"]["answer"] == 42 and event["data"]["status"] == "ok"

        job_id, _ = finish_job(
            manager.database_url,
            workload,
            result=b"\x89PNG",
            content_type="image/png",
            context=None,
        )
        received = receiver.wait_for(2)[1]
        event = verified(received, added["secret"])
        assert "context" not in event
        assert (
            event["data"]["binary_b64"] == "iVBORw=="
            and event["data"]["content_type"] == "image/png"
        )


def test_a_binary_result_over_the_ceiling_is_not_delivered_and_says_where_to_read_it(
    manager: RunningManager, api: httpx.Client, project: TestProject, workload: dict[str, Any]
) -> None:
    with receiving() as receiver:
        add_webhook(api, "hooked", receiver.url())
        big = b"\x00" * (1024 * 1024 + 1)
        job_id, _ = finish_job(manager.database_url, workload, result=big, content_type="audio/wav")
        terminal = wait_delivery(api, "hooked", job_id, "terminal")
        assert terminal["last_error"] == (
            "binary result over the 1 MiB delivery ceiling; read it with "
            f"GET /endpoint/{project.slug}/hooked/jobs/{job_id}"
        )
        assert terminal["attempts"] == 0
        # A JSON result of the same size is delivered.
        large_json = json.dumps({"text": "x" * (1024 * 1024)}).encode()
        job_id, _ = finish_job(manager.database_url, workload, result=large_json)
        wait_delivery(api, "hooked", job_id, "delivered")
        assert len(receiver.received) == 1


def test_a_destination_deleted_while_a_job_finishes_drops_out_of_its_deliveries(
    manager: RunningManager, api: httpx.Client, workload: dict[str, Any]
) -> None:
    """A destination deleted while the dispatcher's transaction queues a job's deliveries must
    not fail that transaction (the job's result with it): the finish waits for the delete, then
    queues to the destinations that are left."""
    with receiving() as receiver:
        doomed = add_webhook(api, "hooked", receiver.url("/doomed"))
        kept = add_webhook(api, "hooked", receiver.url("/kept"))

        async def race() -> tuple[list[str], int]:
            deleter = await asyncpg.connect(manager.database_url)
            watcher = await asyncpg.connect(manager.database_url)  # sees activity afresh
            try:
                deleting = deleter.transaction()
                await deleting.start()
                await deleter.execute(
                    "DELETE FROM webhook_destinations WHERE id = $1", doomed["id"]
                )
                finishing = asyncio.create_task(finish_jobs(manager.database_url, workload, [{}]))
                for _ in range(200):  # until the finish waits on the deleted row
                    waiting = await watcher.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND query LIKE 'INSERT INTO webhook_deliveries%'"
                    )
                    if waiting or finishing.done():
                        break
                    await asyncio.sleep(0.05)
                assert waiting == 1, "the finish never waited on the delete"
                await deleting.commit()
                return await finishing
            finally:
                await deleter.close()
                await watcher.close()

        (job_id,), queued = asyncio.run(race())
        assert queued == 1
        delivered = wait_delivery(api, "hooked", job_id, "delivered")
        assert delivered["destination_id"] == kept["id"]
        assert [r.path for r in receiver.received] == ["/kept"]
    rows = run_sql(manager.database_url, "SELECT status FROM jobs WHERE id = $1", job_id)
    assert [row["status"] for row in rows] == ["succeeded"]


def test_every_body_is_strict_json_and_one_that_cannot_be_ends_terminal_alone(
    manager: RunningManager, api: httpx.Client, workload: dict[str, Any]
) -> None:
    """NaN and Infinity are not JSON: no receiver is sent them. A job whose body could only be
    written with them ends its delivery terminal, saying why, and the other jobs claimed with it
    are delivered."""
    with receiving() as receiver:
        add_webhook(api, "hooked", receiver.url())
        jobs: list[dict[str, Any]] = [
            {"context": '{"ticket": NaN}'},  # a row no submit writes today (it refuses NaN)
            {"result": b'{"score": NaN, "limit": Infinity}'},
            {"context": '{"ticket": 8}'},
        ]
        (bad_context, nan_result, good), queued = asyncio.run(
            finish_jobs(manager.database_url, workload, jobs)
        )
        assert queued == 3
        wait_delivery(api, "hooked", good, "delivered")
        terminal = wait_delivery(api, "hooked", bad_context, "terminal")
        assert terminal["attempts"] == 0 and terminal["attempt_log"] == []
        assert terminal["last_error"].startswith(
            "its body cannot be built: the context is not JSON (NaN is not JSON"
        ), terminal["last_error"]

        def settled() -> dict[str, Any] | None:
            found = [d for d in deliveries(api, "hooked") if d["job_id"] == nan_result]
            return found[0] if found[0]["status"] in ("delivered", "terminal") else None

        # Read with NaN and Infinity as null, the job's data is delivered; were they kept, its
        # body could not be built.
        outcome = wait_until(settled, 20, "the NaN result was never settled", interval=0.1)
        if outcome["status"] == "terminal":
            assert "the data is not JSON" in outcome["last_error"], outcome["last_error"]

        def refuse(name: str) -> Any:
            raise AssertionError(f"a body carried {name}")

        for received in receiver.received:
            json.loads(received.body, parse_constant=refuse)
        assert {r.headers["x-inferencekey-job-id"] for r in receiver.received} <= {
            good,
            nan_result,
        }


def test_test_pings_in_flight_are_bounded_and_the_rest_answered_at_once(
    api: httpx.Client, workload: dict[str, Any]
) -> None:
    slow = Answer(200, delay_s=1.5)
    with receiving(default=slow) as receiver:
        added = add_webhook(api, "hooked", receiver.url())
        path = f"/api/workloads/hooked/webhooks/{added['id']}/test"
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda _: api.post(path).json(), range(16)))
    delivered = [r for r in results if r["delivered"]]
    refused = [r for r in results if not r["delivered"]]
    assert refused and len(delivered) == len(receiver.received), results
    for result in refused:
        assert result["error"].startswith("not sent: 8 test pings are being sent already")
        assert result["status_code"] is None and result["duration_ms"] < 1000
    arrivals = sorted(r.at for r in receiver.received)
    held_at_once = max(sum(1 for t in arrivals if a <= t < a + 1.4) for a in arrivals)
    assert held_at_once <= 8, arrivals


def test_listing_jobs_and_preparing_deliveries_never_read_a_jobs_request_body(
    manager: RunningManager, api: httpx.Client, project: TestProject, workload: dict[str, Any]
) -> None:
    """A job's request can be megabytes: the jobs listing and the deliverer leave it unread, and
    the deliverer reads a result only where it sends it (a binary one over the ceiling is judged
    by its stored size and type, unread and unencoded)."""
    statements: list[tuple[str, str]] = []

    def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, repr(parameters)))

    event.listen(Engine, "before_cursor_execute", seen)
    try:
        with receiving() as receiver:
            add_webhook(api, "hooked", receiver.url())
            sent, _ = finish_job(manager.database_url, workload)
            big = b"\x00" * (1024 * 1024 + 1)
            unsent, _ = finish_job(
                manager.database_url, workload, result=big, content_type="audio/wav"
            )
            wait_delivery(api, "hooked", sent, "delivered")
            wait_delivery(api, "hooked", unsent, "terminal")
            listed = api.get("/api/workloads/hooked/jobs")
            assert {j["job_id"] for j in listed.json()["jobs"]} == {sent, unsent}
            one = api.get(f"/api/workloads/hooked/jobs/{sent}")
            assert one.json()["data"]["payload"]["answer"] == 42
    finally:
        event.remove(Engine, "before_cursor_execute", seen)
    reads = [(s, p) for s, p in statements if s.lstrip().upper().startswith("SELECT")]
    # The listing's and the job's reads (by workload), and the deliverer's (by job ids).
    job_reads = [
        s
        for s, _ in reads
        if "FROM jobs" in s and ("jobs.workload_id = " in s or "jobs.id IN (" in s)
    ]
    assert job_reads and not [s for s in job_reads if "jobs.body" in s]
    result_reads = [p for s, p in reads if re.search(r"\bjobs\.result[,\s]", s)]
    assert any(sent in p for p in result_reads)
    assert not any(unsent in p for p in result_reads)
    index = run_sql(
        manager.database_url,
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'jobs_workload_created'",
    )
    assert [row["indexdef"] for row in index] == [
        "CREATE INDEX jobs_workload_created ON public.jobs USING btree (workload_id, created_at)"
    ]


# --- a Manager killed mid-attempt ------------------------------------------------------------


def test_a_delivery_survives_its_manager_killed_mid_attempt(tmp_path: Path) -> None:
    """The first attempt fails; the Manager is SIGKILLed while the receiver holds the second;
    a new Manager sends it again once the claim's lease passes, and it is delivered. A database
    of its own: no other Manager may deliver it meanwhile."""
    database_url = create_database()
    port = free_port()
    admin_token = new_admin_token()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERENCEKEY_")}
    env.update(
        INFERENCEKEY_ADMIN_TOKEN=admin_token,
        INFERENCEKEY_WEBHOOK_ALLOW_PRIVATE="true",
        INFERENCEKEY_WEBHOOK_RETRY_DELAYS_S="0.2,0.2,0.2,0.2,0.2",
        INFERENCEKEY_WEBHOOK_TIMEOUT_S="2",
        INFERENCEKEY_WEBHOOK_LEASE_S="1",
    )
    stderr_path = tmp_path / "stderr"
    try:
        with receiving(500, Answer(200, delay_s=1.5)) as receiver:
            with stderr_path.open("w") as stderr:
                doomed = subprocess.Popen(
                    [sys.executable, "-m", "ik_command", "manager", "--port", str(port),
                     "--database-url", database_url, "--data-dir", str(tmp_path)],
                    cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
                )  # fmt: skip
            try:
                wait_until(
                    lambda: doomed.poll() is not None or _healthy(port),
                    60,
                    "the Manager never answered",
                )
                assert doomed.poll() is None, stderr_path.read_text()[-3000:]
                base = f"http://127.0.0.1:{port}"
                with httpx.Client(base_url=base, headers=bearer(admin_token)) as admin:
                    created = create_project(admin)
                    token = create_sdk_token(admin, created["slug"])
                with httpx.Client(base_url=base, headers=bearer(token)) as api:
                    workload = new_workload(api, created["slug"])
                    added = add_webhook(api, "hooked", receiver.url())
                job_id, _ = finish_job(database_url, workload)
                receiver.wait_for(2)  # the receiver holds the second attempt now
                doomed.send_signal(signal.SIGKILL)
                doomed.wait(timeout=10)
            finally:
                if doomed.poll() is None:
                    doomed.kill()
                    doomed.wait()
            (row,) = run_sql(database_url, "SELECT status, attempts FROM webhook_deliveries")
            assert (row["status"], row["attempts"]) == ("pending", 2)

            with (
                own_manager(tmp_path / "next", database_url) as successor,
                httpx.Client(base_url=successor.url, headers=bearer(token)) as api,
            ):
                delivered = wait_delivery(api, "hooked", job_id, "delivered", timeout=30)
        received = receiver.received
        assert len(received) == 3
        assert {r.headers["x-inferencekey-job-id"] for r in received} == {job_id}
        assert delivered["attempts"] == 3
        log = delivered["attempt_log"]
        assert [(a["attempt"], a["status_code"]) for a in log] == [(1, 500), (3, 200)]
        verified(received[-1], added["secret"])
    finally:
        drop_database(database_url)


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
