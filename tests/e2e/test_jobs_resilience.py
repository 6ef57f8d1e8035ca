"""A Manager process killed while its job runs in the real llama.cpp engine: the job is claimed
again once its lease passes, completes through the Manager started in its place, and its result
is delivered, signed, once or more, never zero times.

A database of its own, so no other Manager's dispatcher may take the job meanwhile: the killed
Manager runs as a process (SIGKILL), its successor in a thread on the same port and database, and
the agent, which only knows that address, reconnects to it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from inferencekey import ManagementClient

from manager.settings import Settings
from tests.e2e.serving import chat_spec, wait_routable
from tests.support import (
    TEST_MANAGER_SETTINGS,
    RunningAgent,
    bearer,
    create_database,
    create_live_key,
    create_project,
    create_sdk_token,
    drop_database,
    free_port,
    new_admin_token,
    start_manager,
    wait_until,
)
from tests.webhook_receiver import receiving, verified
from worker_agent.config import AgentConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
JOB_LEASE_S = 2.0
# The killed Manager's settings, as its successor's (TEST_MANAGER_SETTINGS) and a short job
# lease; a worker is lost only long after the restart, so its engine is never placed anew.
DOOMED_ENV = {
    "INFERENCEKEY_JOB_LEASE_S": str(JOB_LEASE_S),
    "INFERENCEKEY_HEARTBEAT_INTERVAL_S": "1",
    "INFERENCEKEY_RECONCILE_INTERVAL_S": "1",
    "INFERENCEKEY_WORKER_NOT_READY_AFTER_S": "3",
    "INFERENCEKEY_WORKER_LOST_AFTER_S": "60",
    "INFERENCEKEY_AUTH_FAILURES_PER_WINDOW": "1000000",
    "INFERENCEKEY_WEBHOOK_ALLOW_PRIVATE": "true",
    "INFERENCEKEY_WEBHOOK_RETRY_DELAYS_S": "0.2,0.2,0.2,0.2,0.2",
    "INFERENCEKEY_WEBHOOK_TIMEOUT_S": "2",
    "INFERENCEKEY_WEBHOOK_LEASE_S": "1",
}
# A chat the tiny model keeps talking through for seconds: it never stops before max_tokens.
LONG_CHAT = {
    "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
    "max_tokens": 96,
    "ignore_eos": True,
}
CONTEXT = {"ticket": 7, "tags": ["a", None]}


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@contextlib.contextmanager
def manager_process(
    port: int, database_url: str, data_dir: Path, admin_token: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``inferencekey manager`` as a process of its own, answering on ``port``; killed (if it
    still runs) when the block ends."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERENCEKEY_")}
    env.update(DOOMED_ENV, INFERENCEKEY_ADMIN_TOKEN=admin_token)
    stderr_path = data_dir / "manager-stderr.log"
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "ik_command", "manager", "--port", str(port),
             "--database-url", database_url, "--data-dir", str(data_dir)],
            cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: process.poll() is not None or _healthy(url), 60, "the Manager never answered"
        )
        assert process.poll() is None, stderr_path.read_text()[-3000:]
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def start_agent(
    admin: httpx.Client, project: str, state_dir: Path, llama_server: str, gguf_model: Path
) -> RunningAgent:
    """A worker private to ``project``, and its agent running the real llama.cpp."""
    created = admin.post(
        "/api/admin/workers", json={"project": project, "name": f"cpu-{secrets.token_hex(2)}"}
    )
    assert created.status_code == 201, created.text
    port = free_port()
    return RunningAgent(
        AgentConfig(
            manager_url=str(admin.base_url).rstrip("/"),
            token=created.json()["token"],
            runtime="process",
            state_dir=state_dir,
            listen_host="127.0.0.1",
            listen_port=port,
            advertise_url=f"http://127.0.0.1:{port}",
            restart_backoff_initial_s=0.5,
            model_dir=gguf_model.parent,
            binaries={"llama-server": llama_server},
        )
    )


def engine_generating(agent: RunningAgent) -> bool:
    """Whether the agent's llama.cpp engine is working on a request now (its ``/slots``)."""
    ports = [replica.port for replica in list(agent.agent.replicas.values())]
    for port in ports:
        slots = httpx.get(f"http://127.0.0.1:{port}/slots", timeout=5).json()
        if any(slot.get("is_processing") for slot in slots):
            return True
    return False


def chat_client(url: str, project: str, live_key: str) -> httpx.Client:
    return httpx.Client(
        base_url=f"{url}/endpoint/{project}/chat", headers=bearer(live_key), timeout=30
    )


def job_row(database_url: str, job_id: str) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        connection = await asyncpg.connect(database_url)
        try:
            row = await connection.fetchrow(
                "SELECT status, attempts FROM jobs WHERE id = $1", job_id
            )
        finally:
            await connection.close()
        assert row is not None
        return dict(row)

    return asyncio.run(read())


def test_a_job_whose_manager_is_killed_mid_run_completes_after_restart_and_is_delivered(
    tmp_path: Path, llama_server: str, gguf_model: Path
) -> None:
    port, admin_token = free_port(), new_admin_token()
    url = f"http://127.0.0.1:{port}"
    data_dir = tmp_path / "manager"
    data_dir.mkdir()
    with contextlib.ExitStack() as cleanup:  # undone last to first
        database_url = create_database()
        cleanup.callback(drop_database, database_url)
        receiver = cleanup.enter_context(receiving())
        with manager_process(port, database_url, data_dir, admin_token) as doomed:
            with httpx.Client(base_url=url, headers=bearer(admin_token)) as admin:
                project = create_project(admin)["slug"]
                sdk_token = create_sdk_token(admin, project)
                live_key = create_live_key(admin, project)
                agent = start_agent(admin, project, tmp_path / "agent", llama_server, gguf_model)
                cleanup.callback(agent.stop_for_good)
            with ManagementClient(base_url=url, sdk_token=sdk_token, project=project) as mgmt:
                mgmt.ensure(chat_spec(gguf_model, context=1024))
                mgmt.wait_until_ready("chat", timeout=60, silent=True)
                hook = mgmt.add_webhook("chat", receiver.url("/results"))
            assert hook.secret is not None
            with chat_client(url, project, live_key) as chat:
                wait_routable(chat)
                submitted = chat.post(
                    "/jobs", json={"kind": "chat", "body": LONG_CHAT, "context": CONTEXT}
                )
                assert submitted.status_code == 202, submitted.text
                job_id = submitted.json()["job_id"]
                wait_until(
                    lambda: chat.get(f"/jobs/{job_id}").json()["status"] == "running",
                    30,
                    "the job never ran",
                    interval=0.05,
                )
            wait_until(lambda: engine_generating(agent), 30, "the engine never took the job", 0.05)
            doomed.send_signal(signal.SIGKILL)
            doomed.wait(timeout=10)
        # Killed mid-run: the job is still the dead process's, running under its lease.
        assert job_row(database_url, job_id) == {"status": "running", "attempts": 1}
        assert receiver.received == []

        successor = start_manager(
            Settings(
                port=port,
                database_url=database_url,
                data_dir=data_dir,
                admin_token=admin_token,
                **{**TEST_MANAGER_SETTINGS, "job_lease_s": JOB_LEASE_S, "worker_lost_after_s": 60},
            )
        )
        cleanup.callback(successor.stop)
        # The agent first (its engine too): its long poll would hold the Manager's shutdown.
        cleanup.callback(agent.stop_for_good)
        with chat_client(url, project, live_key) as chat:

            def finished() -> dict[str, Any] | None:
                job: dict[str, Any] = chat.get(f"/jobs/{job_id}").json()
                return job if job["status"] in ("succeeded", "failed") else None

            job = wait_until(finished, 90, f"job {job_id} never finished", interval=0.2)
        received = receiver.wait_for(1, timeout=30)
        with httpx.Client(base_url=url, headers=bearer(sdk_token)) as api:

            def delivered() -> list[dict[str, Any]] | None:
                deliveries: list[dict[str, Any]] = api.get(
                    f"/api/workloads/chat/jobs/{job_id}"
                ).json()["deliveries"]
                done = all(d["status"] == "delivered" for d in deliveries)
                return deliveries if deliveries and done else None

            deliveries = wait_until(delivered, 30, "the delivery was never recorded")

    assert job["status"] == "succeeded", job
    assert job["attempts"] >= 2  # the killed Manager's run and its successor's
    assert job["context"] == CONTEXT
    assert job["data"]["status"] == "ok"
    assert job["data"]["usage"]["output_tokens"] == LONG_CHAT["max_tokens"]
    # Delivered at least once (at-least-once: a receiver dedupes on job_id), each one signed.
    assert received and all(r.headers["x-inferencekey-job-id"] == job_id for r in received)
    for one in received:
        event = verified(one, hook.secret)  # webhooks.verify, and the HMAC checked by hand
        assert event["event"] == "job.completed" and event["job_id"] == job_id
        assert event["context"] == CONTEXT
        assert event["data"] == job["data"]
    assert [(d["destination_id"], d["status"]) for d in deliveries] == [(hook.id, "delivered")]
