"""Scheduled workloads with a real Manager and agent: a cron run starts replicas at its fire and
stops them when its duration is over; a window that a PATCH closes stops them, and deleting the
workload releases what it ran. The engine is the stand-in llama-server (tests/fake_engine.py):
this is about when replicas run, not about serving."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.conftest import replicas, wait_phase
from tests.support import AgentFactory, RunningAgent, TestProject, wait_until


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def agent_with_fake_engine(
    admin: httpx.Client,
    project: TestProject,
    start_bare_agent: AgentFactory,
    fake_llama_server: str,
    models: Path,
) -> tuple[str, RunningAgent]:
    """A worker of the project and its agent, whose llama-server is the stand-in."""
    created = admin.post("/api/admin/workers", json={"project": project.slug})
    assert created.status_code == 201, created.text
    agent = start_bare_agent(
        token=created.json()["token"],
        binaries={"llama-server": fake_llama_server},
        model_dir=models,
    )
    return created.json()["id"], agent


def create_scheduled(
    api: httpx.Client, project: TestProject, slug: str, worker_id: str, model: Path, **config: Any
) -> str:
    created = api.post(
        f"/api/projects/{project.slug}/workloads",
        json={
            "name": slug,
            "slug": slug,
            "model_name": "fake",
            "backend": "llamacpp",
            "config": {"command": f"llama-server -m {model}"},
            # Pinned to this test's worker, so no other test's worker takes its replicas.
            "worker_id": worker_id,
            "execution_policy": "scheduled",
            "execution_policy_config": config,
        },
    )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def running(api: httpx.Client, slug: str) -> list[dict[str, Any]]:
    return [r for r in replicas(api, slug) if r["desired_state"] == "run"]


def ready(api: httpx.Client, slug: str) -> list[dict[str, Any]]:
    return [r for r in running(api, slug) if r["state"] == "ready"]


def scaled_events(api: httpx.Client, slug: str) -> list[str]:
    answer = api.get(f"/api/workloads/{slug}/events").json()["events"]
    return [e["message"] for e in answer if e["kind"] == "scaled"]


def engines(agent: RunningAgent) -> list[int]:
    """The engine processes the agent runs (the process runtime's records)."""
    records = (agent.config.state_dir / "process" / "replicas").glob("*.json")
    return [json.loads(path.read_text())["pid"] for path in records]


def models_dir(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    models.mkdir()
    (models / "fake.gguf").write_bytes(b"GGUF" + bytes(1024))
    return models


def test_a_cron_run_starts_replicas_at_its_fire_and_stops_them_after_its_duration(
    admin: httpx.Client,
    api: httpx.Client,
    project: TestProject,
    start_bare_agent: AgentFactory,
    fake_llama_server: str,
    tmp_path: Path,
) -> None:
    models = models_dir(tmp_path)
    worker_id, agent = agent_with_fake_engine(
        admin, project, start_bare_agent, fake_llama_server, models
    )
    # A cron that fired at the start of this minute, for a one-minute run: late in a minute,
    # wait for the next one so the run is long enough to see.
    if datetime.now(UTC).second > 40:
        time.sleep(61 - datetime.now(UTC).second)
    fired = datetime.now(UTC).replace(second=0, microsecond=0)
    until = fired + timedelta(minutes=1)
    cron = f"{fired.minute} {fired.hour} * * *"
    create_scheduled(
        api, project, "nightly", worker_id, models / "fake.gguf", cron=cron, duration_minutes=1
    )

    wait_until(lambda: ready(api, "nightly"), 30, "the cron run never got a ready replica")
    assert engines(agent)
    started = f"cron run started: fired at {rfc3339(fired)}, until {rfc3339(until)}"
    assert scaled_events(api, "nightly") == [started]

    # The run's minute is over: its replica stops, and the reason says when the next run fires.
    ended = f"cron run ended; next run fires at {rfc3339(fired + timedelta(days=1))}"
    stopped = wait_phase(api, "nightly", "stopped", timeout=90)
    assert stopped["reason"] == ended
    assert datetime.now(UTC) >= until
    wait_until(lambda: running(api, "nightly") == [], 10, "the run's replica kept running")
    wait_until(lambda: engines(agent) == [], 30, "the agent kept the run's engine")
    assert scaled_events(api, "nightly") == [started, ended]


def test_a_patched_window_takes_effect_and_a_delete_releases_the_replicas(
    admin: httpx.Client,
    api: httpx.Client,
    project: TestProject,
    start_bare_agent: AgentFactory,
    fake_llama_server: str,
    tmp_path: Path,
) -> None:
    models = models_dir(tmp_path)
    worker_id, agent = agent_with_fake_engine(
        admin, project, start_bare_agent, fake_llama_server, models
    )
    always = {"window": "Mon-Sun 00:00-24:00 UTC"}
    workload_id = create_scheduled(
        api, project, "office", worker_id, models / "fake.gguf", **always
    )
    wait_until(lambda: ready(api, "office"), 30, "the open window never got a ready replica")
    assert scaled_events(api, "office") == ["window open; it never closes"]

    # A window that opens in two hours, every day: closed now, at the next reconcile.
    opens = (datetime.now(UTC) + timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
    later = f"Mon-Sun {opens:%H}:00-{(opens + timedelta(hours=1)):%H}:00 UTC"
    patched = api.patch(
        f"/api/workloads/{workload_id}", json={"execution_policy_config": {"window": later}}
    )
    assert patched.status_code == 200, patched.text
    stopped = wait_phase(api, "office", "stopped", timeout=30)
    assert stopped["reason"] == f"window closed; opens at {rfc3339(opens)}"
    wait_until(lambda: engines(agent) == [], 30, "the closed window's engine kept running")

    # Open again, then deleted: the replica stops and the agent runs nothing.
    patched = api.patch(f"/api/workloads/{workload_id}", json={"execution_policy_config": always})
    assert patched.status_code == 200, patched.text
    # Ready in the replica list first, in the workload's phase at the reconcile pass after.
    wait_until(lambda: ready(api, "office"), 30, "the reopened window got no ready replica")
    wait_phase(api, "office", "ready", timeout=10)
    assert api.delete(f"/api/workloads/{workload_id}").status_code == 204
    wait_until(lambda: engines(agent) == [], 30, "the deleted workload's engine kept running")
