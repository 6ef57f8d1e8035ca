"""Async jobs and webhooks in the Python SDK, over real HTTP: the management methods (endpoint
switches, webhook destinations, jobs, deliveries), what the wire fixtures cannot show of the
data-plane job methods (bytes, polling pace, the async client), and verifying deliveries.

Each test starts a small HTTP server on 127.0.0.1 that records every request and answers with
a script, one reply per request in order (wire-fixtures/jobs.json and webhooks.json are
replayed by test_wire_fixtures.py).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from inferencekey import (
    ApiError,
    AsyncDataClient,
    AsyncManagementClient,
    ConfigurationError,
    DataClient,
    DeliveryAttempt,
    InferenceKeyError,
    Job,
    JobStatus,
    JobTimeoutError,
    ManagementClient,
    NotFoundError,
    PermissionDenied,
    ValidationError,
    WebhookDelivery,
    WebhookDestination,
    WebhookTestResult,
    WebhookVerificationError,
    webhooks,
)

SDK_TOKEN = "ik_sdk_0123abcd_" + "a" * 64
LIVE_KEY = "ik_live_89abcdef_" + "b" * 64
JOB_ID = "7d0c5b1e-3f2a-4c6d-9e8f-0a1b2c3d4e5f"
LIST = "/api/projects/acme/workloads"
ROUTE = "/api/workloads/support-bot"
SECRET = "whsec_Jm4kQ9sV2xT7bN1cR8pL5wZ3"
WORKLOAD = {
    "id": "wl_01",
    "project_id": "proj_01",
    "name": "Support bot",
    "slug": "support-bot",
    "task_type": "text2text",
    "backend": "llamacpp",
    "model_name": "gemma-3-270m",
    "created_at": "2025-06-01T00:00:00Z",
    "updated_at": "2025-06-01T00:00:00Z",
}
DESTINATION = {
    "id": "whd_01",
    "url": "https://example.com/hooks/ik",
    "enabled": True,
    "secret_prefix": "whsec_Jm4k",
    "created_at": "2025-06-01T12:00:00Z",
}
DELIVERY = {
    "id": "whv_01",
    "job_id": JOB_ID,
    "destination_id": "whd_01",
    "event": "job.completed",
    "status": "terminal",
    "attempts": 6,
    "next_attempt_at": None,
    "last_status_code": 500,
    "last_error": "HTTP 500",
    "attempt_log": [
        {
            "attempt": 1,
            "at": "2025-06-01T12:00:04Z",
            "status_code": 500,
            "error": "HTTP 500",
            "duration_ms": 12.5,
        }
    ],
    "created_at": "2025-06-01T12:00:03Z",
    "delivered_at": None,
}


def job_view(status: str, **extra: Any) -> dict[str, Any]:
    return {
        "job_id": JOB_ID,
        "kind": "chat",
        "status": status,
        "attempts": 1,
        "created_at": "2025-06-01T12:00:00Z",
        "started_at": None,
        "finished_at": None,
        **extra,
    }


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: Any = None


FOUND = Reply(body={"workloads": [WORKLOAD]})


@dataclass
class Script:
    """The replies a server gives, in order (the last one repeats), and what it was sent."""

    replies: list[Reply]
    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)

    def next_reply(self, request: dict[str, Any]) -> Reply:
        self.requests.append(request)
        return self.replies[min(len(self.requests), len(self.replies)) - 1]

    @property
    def sent(self) -> list[tuple[str, str, Any]]:
        return [(r["method"], r["path"], r["body"]) for r in self.requests]


def serve(script: Script) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def handle_any(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            reply = script.next_reply(
                {
                    "at": time.monotonic(),
                    "method": self.command,
                    "path": self.path,
                    "headers": {key.lower(): value for key, value in self.headers.items()},
                    "body": json.loads(raw) if raw else None,
                }
            )
            payload = b"" if reply.body is None else json.dumps(reply.body).encode()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.send_response(reply.status)
                if payload:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        do_GET = do_POST = do_PATCH = do_DELETE = handle_any

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    return server


@pytest.fixture
def scripted() -> Iterator[Callable[..., Script]]:
    servers: list[ThreadingHTTPServer] = []

    def start(*replies: Reply) -> Script:
        script = Script(list(replies))
        server = serve(script)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        script.url = f"http://127.0.0.1:{server.server_address[1]}"
        servers.append(server)
        return script

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("INFERENCEKEY_BASE_URL", "INFERENCEKEY_PROJECT", "INFERENCEKEY_SDK_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def mgmt(script: Script) -> ManagementClient:
    return ManagementClient(base_url=script.url, sdk_token=SDK_TOKEN, project="acme")


def async_mgmt(script: Script) -> AsyncManagementClient:
    return AsyncManagementClient(base_url=script.url, sdk_token=SDK_TOKEN, project="acme")


# --- endpoint switches ----------------------------------------------------------------------


def test_endpoints_reads_the_switches_of_the_workload_found_in_the_project(
    scripted: Any,
) -> None:
    toggles = {"jobs": True, "chat": True, "completions": False}
    script = scripted(FOUND, Reply(body={"workload_id": "wl_01", "endpoints": toggles}))
    assert mgmt(script).endpoints("support-bot") == toggles
    assert script.sent == [("GET", LIST, None), ("GET", f"{ROUTE}/endpoints", None)]
    assert script.requests[1]["headers"]["authorization"] == f"Bearer {SDK_TOKEN}"


def test_set_endpoints_patches_only_the_named_switches_and_returns_them_all(
    scripted: Any,
) -> None:
    toggles = {"jobs": False, "chat": True}
    script = scripted(FOUND, Reply(body={"workload_id": "wl_01", "endpoints": toggles}))
    assert mgmt(script).set_endpoints("support-bot", {"jobs": False}) == toggles
    assert script.sent[1] == ("PATCH", f"{ROUTE}/endpoints", {"endpoints": {"jobs": False}})


@pytest.mark.parametrize(
    ("toggles", "message"),
    [
        ({}, "validation error: toggles must not be empty"),
        ({"chat": "off"}, "validation error: toggles must map endpoint names to True or False"),
    ],
)
def test_set_endpoints_checks_the_switches_before_any_request(
    scripted: Any, toggles: dict[str, Any], message: str
) -> None:
    script = scripted(FOUND)
    with pytest.raises(ValidationError) as raised:
        mgmt(script).set_endpoints("support-bot", toggles)
    assert str(raised.value) == message
    assert script.requests == []


def test_an_unknown_switch_is_the_managers_400(scripted: Any) -> None:
    refused = {
        "error": "'rerank' is not an endpoint of a text2text workload",
        "code": "validation_error",
        "message": "'rerank' is not an endpoint of a text2text workload",
        "field": "endpoints.rerank",
    }
    script = scripted(FOUND, Reply(400, refused))
    with pytest.raises(ValidationError) as raised:
        mgmt(script).set_endpoints("support-bot", {"rerank": True})
    assert raised.value.code == "validation_error" and raised.value.status == 400


# --- webhook destinations -------------------------------------------------------------------


def test_add_webhook_returns_the_secret_once_and_keeps_it_out_of_the_repr(scripted: Any) -> None:
    script = scripted(FOUND, Reply(201, {**DESTINATION, "secret": SECRET}))
    hook = mgmt(script).add_webhook("support-bot", "https://example.com/hooks/ik")
    assert script.sent[1] == (
        "POST",
        f"{ROUTE}/webhooks",
        {"url": "https://example.com/hooks/ik", "enabled": True},
    )
    assert isinstance(hook, WebhookDestination)
    assert (hook.id, hook.enabled, hook.secret) == ("whd_01", True, SECRET)
    assert SECRET not in repr(hook)


def test_a_webhook_can_be_added_muted(scripted: Any) -> None:
    script = scripted(FOUND, Reply(201, {**DESTINATION, "enabled": False, "secret": SECRET}))
    assert not mgmt(script).add_webhook("support-bot", "https://x.test/h", enabled=False).enabled
    assert script.sent[1][2] == {"url": "https://x.test/h", "enabled": False}


def test_add_webhook_refuses_a_blank_url_before_any_request(scripted: Any) -> None:
    script = scripted(FOUND)
    with pytest.raises(ValidationError, match=r"^validation error: url must not be empty$"):
        mgmt(script).add_webhook("support-bot", " ")
    assert script.requests == []


def test_an_unsafe_webhook_url_is_the_managers_400(scripted: Any) -> None:
    refused = {
        "error": "webhook URLs must use https://",
        "code": "unsafe_webhook_url",
        "message": "webhook URLs must use https://",
    }
    script = scripted(FOUND, Reply(400, refused))
    with pytest.raises(ValidationError) as raised:
        mgmt(script).add_webhook("support-bot", "http://10.0.0.1/hook")
    assert str(raised.value) == "bad request: webhook URLs must use https://"
    assert raised.value.code == "unsafe_webhook_url"


def test_list_webhooks_has_no_secrets_and_ignores_unknown_fields(scripted: Any) -> None:
    muted = {**DESTINATION, "id": "whd_02", "enabled": False, "failing_since": None}
    script = scripted(FOUND, Reply(body={"webhooks": [DESTINATION, muted]}))
    hooks = mgmt(script).list_webhooks("support-bot")
    assert [(hook.id, hook.enabled, hook.secret) for hook in hooks] == [
        ("whd_01", True, None),
        ("whd_02", False, None),
    ]
    assert script.sent[1] == ("GET", f"{ROUTE}/webhooks", None)


def test_update_webhook_sends_only_what_changes(scripted: Any) -> None:
    script = scripted(FOUND, Reply(body={**DESTINATION, "enabled": False}))
    hook = mgmt(script).update_webhook("support-bot", "whd_01", enabled=False)
    assert script.sent[1] == ("PATCH", f"{ROUTE}/webhooks/whd_01", {"enabled": False})
    assert hook.enabled is False and hook.secret is None


def test_update_webhook_can_move_a_destination(scripted: Any) -> None:
    script = scripted(FOUND, Reply(body={**DESTINATION, "url": "https://new.test/h"}))
    mgmt(script).update_webhook("support-bot", "whd_01", url="https://new.test/h", enabled=True)
    assert script.sent[1][2] == {"enabled": True, "url": "https://new.test/h"}


@pytest.mark.parametrize(
    ("destination_id", "changes", "message"),
    [
        ("whd_01", {}, "validation error: provide enabled or url"),
        ("", {"enabled": True}, "validation error: destination_id must not be empty"),
        ("whd_01", {"url": ""}, "validation error: url must not be empty"),
    ],
)
def test_update_webhook_checks_its_arguments_before_any_request(
    scripted: Any, destination_id: str, changes: dict[str, Any], message: str
) -> None:
    script = scripted(FOUND)
    with pytest.raises(ValidationError) as raised:
        mgmt(script).update_webhook("support-bot", destination_id, **changes)
    assert str(raised.value) == message
    assert script.requests == []


def test_delete_webhook_returns_none_on_204(scripted: Any) -> None:
    script = scripted(FOUND, Reply(204))
    assert mgmt(script).delete_webhook("support-bot", "whd_01") is None
    assert script.sent[1] == ("DELETE", f"{ROUTE}/webhooks/whd_01", None)


def test_deleting_an_unknown_destination_is_not_found(scripted: Any) -> None:
    missing = {
        "error": 'webhook "whd_09" not found',
        "code": "webhook_not_found",
        "message": 'webhook "whd_09" not found',
    }
    script = scripted(FOUND, Reply(404, missing))
    with pytest.raises(NotFoundError) as raised:
        mgmt(script).delete_webhook("support-bot", "whd_09")
    assert raised.value.code == "webhook_not_found"


def test_test_webhook_reports_what_the_destination_answered(scripted: Any) -> None:
    answer = {"delivered": False, "status_code": None, "error": "timed out", "duration_ms": 3001}
    script = scripted(FOUND, Reply(body=answer))
    result = mgmt(script).test_webhook("support-bot", "whd_01")
    assert script.sent[1] == ("POST", f"{ROUTE}/webhooks/whd_01/test", None)
    assert result == WebhookTestResult(
        delivered=False, status_code=None, error="timed out", duration_ms=3001.0
    )


# --- jobs and deliveries --------------------------------------------------------------------


def test_list_jobs_passes_status_and_limit_and_parses_each_job(scripted: Any) -> None:
    failed = job_view(
        "failed",
        finished_at="2025-06-01T12:00:03Z",
        context={"ticket": 42},
        data={"job_id": JOB_ID, "status": "error", "error": "out of memory"},
    )
    script = scripted(FOUND, Reply(body={"jobs": [failed]}))
    jobs = mgmt(script).list_jobs("support-bot", status=JobStatus.FAILED, limit=5)
    assert script.sent[1] == ("GET", f"{ROUTE}/jobs?status=failed&limit=5", None)
    [job] = jobs
    assert isinstance(job, Job) and job.done and job.context == {"ticket": 42}
    assert job.data is not None and job.data.error == "out of memory"


def test_list_jobs_without_filters_sends_no_query(scripted: Any) -> None:
    script = scripted(FOUND, Reply(body={"jobs": []}))
    assert mgmt(script).list_jobs("support-bot") == []
    assert script.sent[1] == ("GET", f"{ROUTE}/jobs", None)


def test_list_deliveries_reads_each_attempt(scripted: Any) -> None:
    script = scripted(FOUND, Reply(body={"deliveries": [DELIVERY]}))
    [delivery] = mgmt(script).list_deliveries("support-bot", status="terminal")
    assert script.sent[1] == ("GET", f"{ROUTE}/deliveries?status=terminal", None)
    assert isinstance(delivery, WebhookDelivery)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("terminal", 6, 500)
    assert delivery.attempt_log == [
        DeliveryAttempt(
            attempt=1,
            at="2025-06-01T12:00:04Z",
            status_code=500,
            error="HTTP 500",
            duration_ms=12.5,
        )
    ]


def test_redeliver_queues_the_delivery_again(scripted: Any) -> None:
    pending = {**DELIVERY, "status": "pending", "next_attempt_at": "2025-06-01T13:00:00Z"}
    script = scripted(FOUND, Reply(body=pending))
    delivery = mgmt(script).redeliver("support-bot", "whv_01")
    assert script.sent[1] == ("POST", f"{ROUTE}/deliveries/whv_01/redeliver", None)
    assert delivery.status == "pending"


def test_redeliver_refuses_a_blank_id_before_any_request(scripted: Any) -> None:
    script = scripted(FOUND)
    with pytest.raises(ValidationError, match=r"^validation error: delivery_id must not be empty$"):
        mgmt(script).redeliver("support-bot", "")
    assert script.requests == []


# --- how the workload is found --------------------------------------------------------------


def test_a_workload_absent_from_the_project_is_not_found_without_a_second_request(
    scripted: Any,
) -> None:
    script = scripted(Reply(body={"workloads": []}))
    with pytest.raises(NotFoundError) as raised:
        mgmt(script).list_webhooks("support-bot")
    assert str(raised.value) == 'not found: workload "support-bot" not found in project "acme"'
    assert script.sent == [("GET", LIST, None)]


def test_a_project_the_token_is_not_scoped_to_is_refused(scripted: Any) -> None:
    refused = {
        "error": "project_scope_mismatch",
        "code": "project_scope_mismatch",
        "message": 'token is not scoped to project "beta"',
    }
    script = scripted(Reply(403, refused))
    with pytest.raises(PermissionDenied) as raised:
        mgmt(script).endpoints("support-bot", project="beta")
    assert raised.value.code == "project_scope_mismatch"
    assert script.sent == [("GET", "/api/projects/beta/workloads", None)]


def test_the_async_surface_needs_a_project(scripted: Any) -> None:
    script = scripted(FOUND)
    client = ManagementClient(base_url=script.url, sdk_token=SDK_TOKEN)
    with pytest.raises(ConfigurationError, match="No project configured"):
        client.list_jobs("support-bot")
    assert script.requests == []


def test_an_answer_of_the_wrong_shape_is_a_json_api_error(scripted: Any) -> None:
    script = scripted(FOUND, Reply(body={"webhooks": [{"id": "whd_01"}]}))
    with pytest.raises(ApiError, match=r"^json error: unexpected webhook destination shape"):
        mgmt(script).list_webhooks("support-bot")


async def test_the_async_client_makes_the_same_requests(scripted: Any) -> None:
    toggles = {"workload_id": "wl_01", "endpoints": {"jobs": True}}
    script = scripted(
        FOUND,
        Reply(body=toggles),
        FOUND,
        Reply(201, {**DESTINATION, "secret": SECRET}),
        FOUND,
        Reply(body={"jobs": [job_view("queued")]}),
        FOUND,
        Reply(204),
    )
    async with async_mgmt(script) as client:
        assert await client.set_endpoints("support-bot", {"jobs": True}) == {"jobs": True}
        hook = await client.add_webhook("support-bot", "https://example.com/hooks/ik")
        jobs = await client.list_jobs("support-bot", limit=1)
        await client.delete_webhook("support-bot", hook.id)
    assert hook.secret == SECRET
    assert [job.status for job in jobs] == ["queued"]
    assert [(method, path) for method, path, _ in script.sent] == [
        ("GET", LIST),
        ("PATCH", f"{ROUTE}/endpoints"),
        ("GET", LIST),
        ("POST", f"{ROUTE}/webhooks"),
        ("GET", LIST),
        ("GET", f"{ROUTE}/jobs?limit=1"),
        ("GET", LIST),
        ("DELETE", f"{ROUTE}/webhooks/whd_01"),
    ]


# --- data-plane jobs: what the fixtures cannot show ------------------------------------------


def endpoint(script: Script) -> Any:
    return DataClient(base_url=script.url, project="acme", api_key=LIVE_KEY).endpoint("support-bot")


def test_bytes_given_as_body_b64_are_sent_base64_encoded(scripted: Any) -> None:
    script = scripted(Reply(202, {"job_id": JOB_ID}))
    job_id = endpoint(script).submit_job(
        "audio_transcriptions", body_b64=b"RIFF\x00\xff", content_type="audio/wav"
    )
    assert job_id == JOB_ID
    assert script.requests[0]["body"] == {
        "kind": "audio_transcriptions",
        "body_b64": "UklGRgD/",
        "content_type": "audio/wav",
    }


def test_wait_job_polls_quickly_at_first_then_no_faster_than_poll_interval(
    scripted: Any,
) -> None:
    script = scripted(
        Reply(body=job_view("queued")),
        Reply(body=job_view("running")),
        Reply(body=job_view("running")),
        Reply(body=job_view("succeeded", data={"job_id": JOB_ID, "status": "ok"})),
    )
    job = endpoint(script).wait_job(JOB_ID, poll_interval=0.3)
    assert job.status == JobStatus.SUCCEEDED and job.done
    times = [request["at"] for request in script.requests]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert len(gaps) == 3
    assert 0.09 <= gaps[0] < 0.25, gaps
    assert gaps[2] >= 0.29, gaps


def test_job_timeout_error_is_a_builtin_timeout_error_that_keeps_the_last_job(
    scripted: Any,
) -> None:
    script = scripted(Reply(body=job_view("running")))
    started = time.monotonic()
    with pytest.raises(TimeoutError) as raised:
        endpoint(script).wait_job(JOB_ID, timeout=0.3, poll_interval=0.05)
    assert 0.3 <= time.monotonic() - started < 2
    assert isinstance(raised.value, JobTimeoutError) and isinstance(raised.value, InferenceKeyError)
    assert raised.value.job.status == "running"
    assert str(raised.value) == f'job "{JOB_ID}" is still running after 0.3s'


async def test_the_async_endpoint_submits_and_waits(scripted: Any) -> None:
    script = scripted(
        Reply(202, {"job_id": JOB_ID}),
        Reply(body=job_view("running")),
        Reply(body=job_view("succeeded", data={"job_id": JOB_ID, "status": "ok", "output": "hi"})),
    )
    async with AsyncDataClient(base_url=script.url, project="acme", api_key=LIVE_KEY) as client:
        ep = client.endpoint("support-bot")
        job_id = await ep.submit_job("chat", body={"messages": []}, context={"n": 1})
        assert (await ep.get_job(job_id)).status == "running"
        job = await ep.wait_job(job_id, poll_interval=0.01)
    assert job.data is not None and job.data.output == "hi"
    assert script.sent[0] == (
        "POST",
        "/endpoint/acme/support-bot/jobs",
        {"kind": "chat", "body": {"messages": []}, "context": {"n": 1}},
    )
    assert script.sent[1][:2] == ("GET", f"/endpoint/acme/support-bot/jobs/{JOB_ID}")


async def test_async_local_checks_raise_before_any_request(scripted: Any) -> None:
    script = scripted(Reply(202, {"job_id": JOB_ID}))
    ep = AsyncDataClient(base_url=script.url, project="acme", api_key=LIVE_KEY).endpoint("w")
    with pytest.raises(ValidationError, match="provide body or body_b64"):
        await ep.submit_job("chat")
    with pytest.raises(ValidationError, match="job_id must not be empty"):
        await ep.wait_job("")
    assert script.requests == []


# --- verifying deliveries -------------------------------------------------------------------


def test_what_signature_header_signs_verifies_at_the_clocks_now() -> None:
    body = json.dumps({"event": "ping", "ts": "2025-06-01T12:00:00Z"}).encode()
    header = webhooks.signature_header(body, SECRET, int(time.time()))
    assert webhooks.verify(body, header, SECRET) == json.loads(body)
    assert webhooks.verify(body.decode(), header, SECRET) == json.loads(body)


def test_a_failed_verification_is_an_inferencekey_error_with_a_code() -> None:
    with pytest.raises(InferenceKeyError) as raised:
        webhooks.verify(b"{}", "t=1,v1=00", SECRET)
    assert isinstance(raised.value, WebhookVerificationError)
    assert raised.value.code == "signature_mismatch"
    assert webhooks.WebhookVerificationError is WebhookVerificationError


def test_the_header_names_are_the_contracts() -> None:
    assert webhooks.SIGNATURE_HEADER == "X-InferenceKey-Signature"
    assert webhooks.EVENT_HEADER == "X-InferenceKey-Event"
    assert webhooks.JOB_ID_HEADER == "X-InferenceKey-Job-Id"
