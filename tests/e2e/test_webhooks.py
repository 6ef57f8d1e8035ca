"""A job run by the real llama.cpp engine, delivered to every enabled webhook destination:
signed per destination, the same body to each, retried on failure, never to a muted one."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.serving import CHAT, Serve, chat_spec, endpoint
from tests.support import RunningManager, TestProject, wait_until
from tests.webhook_receiver import receiving, verified


def add_webhook(api: httpx.Client, url: str, **extra: Any) -> dict[str, Any]:
    added = api.post("/api/workloads/chat/webhooks", json={"url": url, **extra})
    assert added.status_code == 201, added.text
    return dict(added.json())


def test_a_job_result_reaches_every_enabled_destination_signed_and_retried(
    serve: Serve,
    gguf_model: Path,
    manager: RunningManager,
    project: TestProject,
    live_key: str,
    api: httpx.Client,
) -> None:
    serve(chat_spec(gguf_model))
    with receiving() as steady, receiving(500, 503) as flaky, receiving() as quiet:
        first = add_webhook(api, steady.url("/steady"))
        second = add_webhook(api, flaky.url("/flaky"))
        add_webhook(api, quiet.url("/quiet"), enabled=False)
        context = {"ticket": 42, "tags": ["a", None], "nested": {"x": 1.5}}
        with endpoint(manager, project, "chat", live_key) as chat:
            submitted = chat.post("/jobs", json={"kind": "chat", "body": CHAT, "context": context})
            assert submitted.status_code == 202, submitted.text
            job_id = submitted.json()["job_id"]
            (to_first,) = steady.wait_for(1, timeout=60)
            retried = flaky.wait_for(3, timeout=60)
            polled = chat.get(f"/jobs/{job_id}").json()

    # Each destination's copy is signed with its own secret; both carry the same job.
    one, other = verified(to_first, first["secret"]), verified(retried[2], second["secret"])
    sig = "x-inferencekey-signature"
    assert to_first.headers[sig] != retried[2].headers[sig]
    for received in (to_first, *retried):
        assert received.headers["x-inferencekey-event"] == "job"
        assert received.headers["x-inferencekey-job-id"] == job_id
        assert received.headers["content-type"] == "application/json"
    assert one["event"] == "job.completed" and one["job_id"] == job_id
    assert one["context"] == context
    assert one["data"] == polled["data"] and one["data"]["status"] == "ok"
    assert one["data"]["payload"]["choices"][0]["message"]["content"] is not None
    assert one["data"]["usage"]["output_tokens"] > 0
    # The same bytes to every destination, but for the attempt's timestamp.
    assert {**one, "ts": None} == {**other, "ts": None}
    bodies = [json.loads(r.body) | {"ts": None} for r in retried]
    assert all(body == bodies[0] for body in bodies)
    # Retried after the (shrunken) delays.
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(retried)]
    assert all(gap >= 0.15 for gap in gaps), gaps
    assert quiet.received == []

    def settled() -> dict[str, Any] | None:
        job = api.get(f"/api/workloads/chat/jobs/{job_id}").json()
        states = {d["status"] for d in job["deliveries"]}
        return job if states == {"delivered"} else None

    job = wait_until(settled, 10, "the deliveries were never recorded as delivered")
    by_destination = {d["destination_id"]: d for d in job["deliveries"]}
    assert set(by_destination) == {first["id"], second["id"]}  # none for the muted one
    log = by_destination[second["id"]]["attempt_log"]
    assert [(a["attempt"], a["status_code"]) for a in log] == [(1, 500), (2, 503), (3, 200)]
    assert log[0]["error"] == "answered HTTP 500" and log[2]["error"] is None
    assert by_destination[first["id"]]["attempts"] == 1
