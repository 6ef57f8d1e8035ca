"""Async jobs and webhooks through the public SDK, against the real Manager and llama.cpp: what a
user types (``submit_job``, ``wait_job``, ``add_webhook``, ``webhooks.verify``) and the typed
errors the Manager's answers become."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from inferencekey import (
    AsyncDataClient,
    Backend,
    DataClient,
    Job,
    ManagementClient,
    NotFoundError,
    PermissionDenied,
    ValidationError,
    WebhookVerificationError,
    WorkloadSpec,
    webhooks,
)

from tests.e2e.serving import Serve, chat_spec, embed_spec
from tests.support import RunningManager, TestProject, wait_until
from tests.webhook_receiver import Received, receiving

# A short answer that cannot be empty: the model may not stop before max_tokens.
CHAT = {
    "messages": [{"role": "user", "content": "Say hi"}],
    "max_tokens": 12,
    "ignore_eos": True,
}
CONTEXT = {"ticket": 42, "tags": ["a", None], "nested": {"x": 1.5}}


def data_client(manager: RunningManager, project: TestProject, live_key: str) -> DataClient:
    return DataClient(base_url=manager.url, project=project.slug, api_key=live_key, timeout=60)


def test_sdk_jobs_run_chat_and_embeddings_and_come_back_with_their_context(
    serve: Serve,
    gguf_model: Path,
    manager: RunningManager,
    project: TestProject,
    live_key: str,
    mgmt: ManagementClient,
) -> None:
    serve(chat_spec(gguf_model), embed_spec(gguf_model))
    with data_client(manager, project, live_key) as client:
        chat = client.endpoint("chat")
        job_id = chat.submit_job("chat", body=CHAT, context=CONTEXT)
        assert uuid.UUID(job_id)
        job = chat.wait_job(job_id, timeout=60)
        assert chat.get_job(job_id) == job  # done: it changes no more

    assert isinstance(job, Job) and job.done
    assert (job.job_id, job.kind, job.status, job.attempts) == (job_id, "chat", "succeeded", 1)
    assert job.context == CONTEXT  # verbatim
    assert job.created_at and job.started_at and job.finished_at
    data = job.data
    assert data is not None and (data.job_id, data.status, data.error) == (job_id, "ok", None)
    assert data.output and data.output.strip()
    assert data.output == data.payload["choices"][0]["message"]["content"]
    assert data.usage is not None
    assert data.usage["output_tokens"] == CHAT["max_tokens"] and data.usage["input_tokens"] > 0

    async def embed() -> Job:
        async with AsyncDataClient(
            base_url=manager.url, project=project.slug, api_key=live_key, timeout=60
        ) as client:
            emb = client.endpoint("emb")
            job_id = await emb.submit_job("embeddings", body={"input": ["hola", "adiós"]})
            return await emb.wait_job(job_id, timeout=60)

    embedded = asyncio.run(embed())
    assert (embedded.kind, embedded.status, embedded.context) == ("embeddings", "succeeded", None)
    assert embedded.data is not None and embedded.data.output is None
    vectors = [item["embedding"] for item in embedded.data.payload["data"]]
    assert len(vectors) == 2 and all(len(vector) > 0 for vector in vectors)

    # The control plane lists them, as the data plane shows them.
    assert [listed.job_id for listed in mgmt.list_jobs("chat")] == [job_id]
    (listed,) = mgmt.list_jobs("emb", status="succeeded")
    assert listed.job_id == embedded.job_id and listed.data == embedded.data
    assert mgmt.list_jobs("emb", status="failed") == []


def test_sdk_job_errors_are_typed_and_carry_the_managers_words(
    manager: RunningManager, project: TestProject, live_key: str, mgmt: ManagementClient
) -> None:
    # No worker serves it: the jobs it accepts stay queued, which is all this test needs.
    mgmt.ensure(WorkloadSpec(name="quiet", slug="quiet", model="m.gguf", backend=Backend.LLAMACPP))
    with data_client(manager, project, live_key) as client:
        quiet = client.endpoint("quiet")

        def unknown_job() -> NotFoundError | None:
            try:
                quiet.get_job(str(uuid.uuid4()))
            except NotFoundError as error:
                return error if error.code == "job_not_found" else None
            return None

        missing = wait_until(unknown_job, 10, "the gateway never knew the workload")
        assert missing.status == 404 and str(missing).startswith("not found: job ")

        with pytest.raises(ValidationError) as refused:
            quiet.submit_job("poetry", body=CHAT)
        assert refused.value.status == 400 and refused.value.code == "validation_error"
        assert str(refused.value).startswith("bad request: kind must be one of chat,")
        with pytest.raises(ValidationError, match="non-empty list"):
            quiet.submit_job("chat", body={"messages": []})

        assert mgmt.endpoints("quiet") == {"jobs": True, "chat": True, "completions": True}
        switched = mgmt.set_endpoints("quiet", {"jobs": False})
        assert switched == {"jobs": False, "chat": True, "completions": True}
        assert mgmt.endpoints("quiet")["jobs"] is False
        submitted: list[str] = []

        def jobs_refused() -> PermissionDenied | None:
            try:  # the gateway reloads its routes within moments of the change
                submitted.append(quiet.submit_job("chat", body=CHAT))
            except PermissionDenied as error:
                return error
            return None

        denied = wait_until(jobs_refused, 10, "jobs were never switched off")
        assert denied.status == 403 and denied.code == "endpoint_disabled"
        assert "[endpoint_disabled]" in str(denied) and "jobs endpoint" in str(denied)

        assert mgmt.set_endpoints("quiet", {"jobs": True})["jobs"] is True

        def accepted() -> str | None:
            try:
                return quiet.submit_job("chat", body=CHAT, context=None)
            except PermissionDenied:
                return None

        job_id = wait_until(accepted, 10, "jobs never came back on")
        job = quiet.get_job(job_id)
        assert (job.status, job.attempts, job.data) == ("queued", 0, None)
        assert job.context is None and "context" in job.raw  # JSON null, sent on purpose
    listed = {job.job_id for job in mgmt.list_jobs("quiet", status="queued")}
    assert listed == {job_id, *submitted}


def signature_of(received: Received) -> str:
    return received.headers[webhooks.SIGNATURE_HEADER.lower()]


def test_sdk_webhooks_sign_pings_and_job_results_a_receiver_verifies(
    serve: Serve,
    gguf_model: Path,
    manager: RunningManager,
    project: TestProject,
    live_key: str,
    mgmt: ManagementClient,
) -> None:
    serve(chat_spec(gguf_model))
    with receiving() as receiver, data_client(manager, project, live_key) as client:
        hook = mgmt.add_webhook("chat", receiver.url("/hooks/ik"))
        secret = hook.secret
        assert secret is not None and secret.startswith("whsec_")  # shown this once
        assert hook.enabled and hook.secret_prefix and secret.startswith(hook.secret_prefix)
        (listed,) = mgmt.list_webhooks("chat")
        assert (listed.id, listed.url, listed.enabled) == (hook.id, hook.url, True)
        assert listed.secret is None and listed.secret_prefix == hook.secret_prefix

        # The test ping: delivered, and signed with the destination's secret.
        tested = mgmt.test_webhook("chat", hook.id)
        assert (tested.delivered, tested.status_code, tested.error) == (True, 200, None)
        (ping,) = receiver.received
        assert ping.path == "/hooks/ik"
        assert ping.headers[webhooks.EVENT_HEADER.lower()] == "ping"
        assert webhooks.JOB_ID_HEADER.lower() not in ping.headers
        event = webhooks.verify(ping.body, signature_of(ping), secret)
        assert event["event"] == "ping" and event["data"] == {"destination_id": hook.id}

        # A real job's result, verified as a receiver would.
        chat = client.endpoint("chat")
        job_id = chat.submit_job("chat", body=CHAT, context=CONTEXT)
        job = chat.wait_job(job_id, timeout=60)
        delivery = receiver.wait_for(2, timeout=30)[1]
        assert delivery.headers[webhooks.EVENT_HEADER.lower()] == "job"
        assert delivery.headers[webhooks.JOB_ID_HEADER.lower()] == job_id
        header = signature_of(delivery)
        event = webhooks.verify(delivery.body, header, secret)
        assert (event["event"], event["job_id"], event["context"]) == (
            "job.completed",
            job_id,
            CONTEXT,
        )
        assert job.data is not None and event["data"] == job.data.raw
        assert event["data"]["status"] == "ok" and event["data"]["output"] == job.data.output

        # The same bytes with another secret, or past the replay window, are refused.
        with pytest.raises(WebhookVerificationError) as wrong:
            webhooks.verify(delivery.body, header, "whsec_not-this-destination")
        assert wrong.value.code == "signature_mismatch"
        signed_at = int(header.split(",")[0].removeprefix("t="))
        with pytest.raises(WebhookVerificationError) as stale:
            webhooks.verify(delivery.body, header, secret, now=signed_at + 301)
        assert stale.value.code == "timestamp_out_of_tolerance"
        assert webhooks.verify(delivery.body, header, secret, now=signed_at + 299) == event

        def delivered() -> list[Any] | None:
            found = [d for d in mgmt.list_deliveries("chat") if d.job_id == job_id]
            return found if found and found[0].status == "delivered" else None

        (record,) = wait_until(delivered, 10, "the delivery was never recorded as delivered")
        assert (record.destination_id, record.event, record.attempts) == (
            hook.id,
            "job.completed",
            1,
        )
        assert [(a.attempt, a.status_code, a.error) for a in record.attempt_log] == [(1, 200, None)]
        assert [d.id for d in mgmt.list_deliveries("chat", status="delivered")] == [record.id]

        # Muted, it keeps its secret and gets nothing; deleted, it is gone.
        muted = mgmt.update_webhook("chat", hook.id, enabled=False)
        assert (muted.enabled, muted.secret, muted.secret_prefix) == (
            False,
            None,
            hook.secret_prefix,
        )
        quiet_job = chat.wait_job(chat.submit_job("chat", body=CHAT), timeout=60)
        assert quiet_job.status == "succeeded"
        # Deliveries are queued with the result, so none exists for it now: none ever will.
        assert [d.job_id for d in mgmt.list_deliveries("chat")] == [job_id]
        assert len(receiver.received) == 2
        mgmt.delete_webhook("chat", hook.id)
        assert mgmt.list_webhooks("chat") == []
        with pytest.raises(NotFoundError):
            mgmt.delete_webhook("chat", hook.id)

    assert [job.job_id for job in mgmt.list_jobs("chat")] == [quiet_job.job_id, job_id]
