"""The reconcile leader reads only what notifications name between full reads (manager/fleet.py).

The test speaks the agent protocol itself over HTTP, so it decides when replicas are reported
ready or gone; workload changes are written straight into the database where a test needs a
change that no notification names.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    RunningManager,
    bearer,
    create_database,
    create_project,
    create_sdk_token,
    drop_database,
    own_manager,
    run_sql,
    wait_until,
)

A100 = "NVIDIA A100-SXM4-80GB"
INTERVAL_S = 0.3  # the reconciler's: a pass at least this often


def inventory(gpus: int) -> dict[str, Any]:
    return {
        "source": "simulated",
        "gpus": [
            {"index": i, "uuid": f"GPU-inc-{i}", "name": A100, "memory_total_mb": 81920}
            for i in range(gpus)
        ],
    }


def workload(slug: str, replicas: int = 1) -> dict[str, Any]:
    return {
        "name": slug,
        "slug": slug,
        "backend": "vllm",  # a whole GPU per replica
        "model_name": "m",
        "config": {"command": "vllm serve m"},
        "execution_policy": "fixed",
        "execution_policy_config": {"replicas": replicas},
    }


class Fleet:
    """One project, one worker whose agent is this test, and the control API."""

    def __init__(self, manager: RunningManager, gpus: int) -> None:
        self.manager = manager
        self.admin = httpx.Client(base_url=manager.url, headers=bearer(manager.admin_token or ""))
        self.project = create_project(self.admin)["slug"]
        self.api = httpx.Client(
            base_url=manager.url, headers=bearer(create_sdk_token(self.admin, self.project))
        )
        created = self.admin.post(
            "/api/admin/workers", json={"project": self.project, "name": "only"}
        )
        assert created.status_code == 201, created.text
        self.agent = httpx.Client(base_url=manager.url, headers=bearer(created.json()["token"]))
        self.inventory = inventory(gpus)
        self.reported: dict[str, dict[str, Any]] = {}

    def heartbeat(self) -> list[dict[str, Any]]:
        """Report the replicas held (ready), and hold what the answer assigns."""
        answer = self.agent.post(
            "/api/agent/heartbeat",
            json={"inventory": self.inventory, "replicas": list(self.reported.values())},
        )
        assert answer.status_code == 200, answer.text
        assigned = answer.json()["replicas"]
        self.reported = {
            r["id"]: {"id": r["id"], "state": "ready", "port": 30000 + i}
            for i, r in enumerate(assigned)
        }
        return assigned

    def assigned_to(self, slug: str) -> list[dict[str, Any]]:
        return [r for r in self.heartbeat() if r["workload_slug"] == slug]

    def create(self, slug: str, replicas: int = 1) -> str:
        created = self.api.post(
            f"/api/projects/{self.project}/workloads", json=workload(slug, replicas)
        )
        assert created.status_code == 201, created.text
        return str(created.json()["id"])

    def status(self, workload_id: str) -> dict[str, Any]:
        return dict(self.api.get(f"/api/workloads/{workload_id}").json()["status"])

    def sql(self, statement: str, *args: Any) -> None:
        run_sql(self.manager.database_url, statement, *args)

    def close(self) -> None:
        for client in (self.admin, self.api, self.agent):
            client.close()


@pytest.fixture
def no_resync(tmp_path: Path) -> Iterator[Fleet]:
    with own_manager(
        tmp_path, reconcile_interval_s=INTERVAL_S, reconcile_resync_s=3600.0
    ) as manager:
        fleet = Fleet(manager, gpus=2)
        yield fleet
        fleet.close()


def test_a_change_no_notification_names_waits_while_a_named_one_takes_effect_at_once(
    no_resync: Fleet,
) -> None:
    fleet = no_resync
    fleet.heartbeat()
    workload_id = fleet.create("one")
    wait_until(lambda: len(fleet.assigned_to("one")) == 1, 10, "never placed")
    # Reported ready: from here on its heartbeats change nothing, so they name nothing; and
    # the pass after the one that wrote its phase has read back what that one wrote.
    wait_until(
        lambda: fleet.heartbeat() and fleet.status(workload_id)["phase"] == "ready",
        10,
        "never ready",
    )

    time.sleep(4 * INTERVAL_S)

    # Written behind the Manager's back: no notification names it, so passes do not read it
    # (a reconciler reading everything each pass would place the second replica at once).
    fleet.sql(
        "UPDATE workloads SET execution_policy_config = '{\"replicas\": 2}' WHERE id = $1",
        workload_id,
    )
    deadline = time.monotonic() + 8 * INTERVAL_S
    while time.monotonic() < deadline:
        assert len(fleet.assigned_to("one")) == 1, "an unnamed change was read"
        time.sleep(INTERVAL_S / 2)

    fleet.sql("SELECT pg_notify('ik_reconcile', $1)", workload_id)
    started = time.monotonic()
    wait_until(lambda: len(fleet.assigned_to("one")) == 2, 5, "the named change was not read")
    assert time.monotonic() - started < 3


def test_room_freed_by_a_deleted_workload_places_the_one_waiting_for_it(no_resync: Fleet) -> None:
    fleet = no_resync
    fleet.heartbeat()
    first = fleet.create("first", replicas=2)  # both GPUs
    wait_until(lambda: len(fleet.assigned_to("first")) == 2, 10, "first never placed")
    waiting = fleet.create("waiting")
    wait_until(lambda: fleet.status(waiting)["phase"] == "unschedulable", 10, "never unschedulable")

    assert fleet.api.delete(f"/api/workloads/{first}").status_code in (200, 202, 204)
    # The agent stops the first's replicas (they leave its assignments, then its report); the
    # room they free is noticed by the next pass, with no full read of the fleet.
    placed = wait_until(lambda: fleet.assigned_to("waiting"), 10, "the freed room was not used")
    assert len(placed) == 1
    wait_until(
        lambda: fleet.heartbeat() and fleet.status(waiting)["phase"] == "ready",
        10,
        "waiting never ready",
    )


def test_a_full_read_every_resync_finds_what_no_notification_named(tmp_path: Path) -> None:
    with own_manager(tmp_path, reconcile_interval_s=INTERVAL_S, reconcile_resync_s=2.0) as manager:
        fleet = Fleet(manager, gpus=2)
        try:
            fleet.heartbeat()
            workload_id = fleet.create("one")
            wait_until(lambda: len(fleet.assigned_to("one")) == 1, 10, "never placed")
            # Reported ready and settled first, and the passes after the reconciler's own write
            # of that done (it re-reads what it wrote): no notice of the workload is left to
            # come, so only the resync can find the change below.
            wait_until(
                lambda: bool(fleet.heartbeat()) and fleet.status(workload_id)["phase"] == "ready",
                10,
                "never ready",
            )
            time.sleep(5 * INTERVAL_S)
            fleet.sql(
                "UPDATE workloads SET execution_policy_config = '{\"replicas\": 2}' WHERE id = $1",
                workload_id,
            )
            wait_until(lambda: len(fleet.assigned_to("one")) == 2, 8, "the resync did not read it")
        finally:
            fleet.close()


def test_a_manager_back_after_an_outage_lets_its_agents_return_before_judging_them(
    tmp_path: Path,
) -> None:
    """Every Manager was down for longer than the lost threshold: the agents could not
    heartbeat. The next leader gives them a not-ready period to come back before it judges
    any worker worse than it finds it, so no replica is forgotten and placed again."""
    url = create_database()
    liveness = {"worker_not_ready_after_s": 1.5, "worker_lost_after_s": 3.0}
    try:
        with own_manager(tmp_path / "a", database_url=url, **liveness) as manager:
            fleet = Fleet(manager, gpus=2)
            fleet.heartbeat()
            workload_id = fleet.create("one")
            [placed] = wait_until(lambda: fleet.assigned_to("one"), 10, "never placed")
            wait_until(
                lambda: fleet.heartbeat() and fleet.status(workload_id)["phase"] == "ready",
                10,
                "never ready",
            )
        time.sleep(4.0)  # no Manager: past the lost threshold since the last heartbeat
        with own_manager(tmp_path / "b", database_url=url, **liveness) as manager:
            fleet.manager = manager
            for client in (fleet.admin, fleet.api, fleet.agent):
                client.base_url = httpx.URL(manager.url)
            fleet.admin.headers["Authorization"] = f"Bearer {manager.admin_token}"
            time.sleep(0.5)  # the new leader's first passes, before the agent is back
            [kept] = fleet.assigned_to("one")
            assert kept["id"] == placed["id"]
            time.sleep(4 * INTERVAL_S)
            [still] = fleet.assigned_to("one")
            assert still["id"] == placed["id"]
            events = fleet.api.get(f"/api/workloads/{workload_id}/events").json()["events"]
            assert not [e for e in events if e["kind"] == "replica_lost"], events
            fleet.close()
    finally:
        drop_database(url)


def test_a_worker_back_from_not_ready_takes_the_workload_waiting_for_room(tmp_path: Path) -> None:
    """Its own heartbeat makes it ready again (the reconciler writes nothing): the next pass
    still sees room appear, with no full read."""
    with own_manager(
        tmp_path,
        reconcile_interval_s=INTERVAL_S,
        reconcile_resync_s=3600.0,
        worker_not_ready_after_s=1.0,
        worker_lost_after_s=600.0,
    ) as manager:
        fleet = Fleet(manager, gpus=1)
        try:
            fleet.heartbeat()
            wait_until(
                lambda: (
                    fleet.admin.get("/api/workers").json()["workers"][0]["state"] == "not_ready"
                ),
                10,
                "never not ready",
            )
            waiting = fleet.create("waiting")
            wait_until(
                lambda: fleet.status(waiting)["phase"] == "unschedulable", 10, "never waiting"
            )
            # Its agent heartbeats again: ready by its own heartbeat.
            placed = wait_until(
                lambda: fleet.assigned_to("waiting"), 5, "the worker's room was not seen"
            )
            assert len(placed) == 1
        finally:
            fleet.close()
