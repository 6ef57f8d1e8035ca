"""The gateway reads only the routes that notifications name, between full reads of every route
(manager/gateway/routes.py).

A real Manager on a real Postgres; the test speaks the agent protocol itself over HTTP, so it
decides when replicas are reported ready and when the worker falls silent, and serves the
worker's address with a small HTTP server that answers as the agent's proxy would (naming the
replica the gateway chose). Changes no notification names are written straight into the database.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from manager.db.session import make_engine, make_sessionmaker
from manager.gateway import routes as routes_module
from manager.gateway.routes import RouteTable
from tests.support import (
    RunningManager,
    bearer,
    create_live_key,
    create_project,
    create_sdk_token,
    own_manager,
    run_sql,
    wait_until,
)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
PROMPTLY_S = 2.0  # a named change reaches the data plane within this (a read takes milliseconds)
NOT_READY_AFTER_S = 1.5
RESYNC_S = 4.0


class WorkerAddress:
    """The worker's advertised address: answers every request 200 with the replica it was for."""

    def __init__(self) -> None:
        class Answer(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                body = json.dumps({"replica": self.headers.get("x-inferencekey-replica")})
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Fleet:
    """One project with a live key, one worker whose agent is this test, the control API."""

    def __init__(self, manager: RunningManager) -> None:
        self.manager = manager
        self.address = WorkerAddress()
        self.admin = httpx.Client(base_url=manager.url, headers=bearer(manager.admin_token or ""))
        self.project = create_project(self.admin)["slug"]
        self.api = httpx.Client(
            base_url=manager.url, headers=bearer(create_sdk_token(self.admin, self.project))
        )
        self.data = httpx.Client(
            base_url=f"{manager.url}/endpoint/{self.project}",
            headers=bearer(create_live_key(self.admin, self.project)),
        )
        created = self.admin.post(
            "/api/admin/workers", json={"project": self.project, "name": "only"}
        )
        assert created.status_code == 201, created.text
        self.worker_id = created.json()["id"]
        self.agent = httpx.Client(base_url=manager.url, headers=bearer(created.json()["token"]))
        self.assigned: list[str] = []
        self.ready: set[str] = set()  # replicas the agent reports ready (the others: starting)

    def heartbeat(self, report: bool = True) -> list[dict[str, Any]]:
        """Renew the worker's lease; with ``report``, report its inventory and every assigned
        replica too (ready or starting). Returns the assignments."""
        body: dict[str, Any] = {"address": self.address.url}
        if report:
            body["inventory"] = {
                "source": "simulated",
                "gpus": [
                    {
                        "index": 0,
                        "uuid": "GPU-routes-0",
                        "name": "NVIDIA A100",
                        "memory_total_mb": 81920,
                    }
                ],
            }
            body["replicas"] = [
                {"id": r, "state": "ready" if r in self.ready else "starting", "port": 30000 + i}
                for i, r in enumerate(self.assigned)
            ]
        answer = self.agent.post("/api/agent/heartbeat", json=body)
        assert answer.status_code == 200, answer.text
        self.assigned = [r["id"] for r in answer.json()["replicas"]]
        return list(answer.json()["replicas"])

    def create(self, slug: str, replicas: int = 1) -> str:
        created = self.api.post(
            f"/api/projects/{self.project}/workloads",
            json={
                "name": slug,
                "slug": slug,
                "backend": "vllm",
                "model_name": "m",
                "config": {"command": "vllm serve m"},
                "execution_policy": "fixed",
                "execution_policy_config": {"replicas": replicas},
            },
        )
        assert created.status_code == 201, created.text
        return str(created.json()["id"])

    def call(self, slug: str) -> tuple[int, str]:
        """The gateway's answer to a chat request: 200 and the replica that served it, or the
        status and the error code."""
        answer = self.data.post(f"/{slug}/v1/chat/completions", json=CHAT)
        body = answer.json()
        return answer.status_code, body["replica"] if answer.status_code == 200 else body["code"]

    def sql(self, statement: str, *args: Any) -> None:
        run_sql(self.manager.database_url, statement, *args)

    def serving(self, slug: str) -> str:
        """Place ``slug``'s replica, report it ready, and wait until the gateway routes to it."""
        placed = wait_until(
            lambda: [r["id"] for r in self.heartbeat() if r["workload_slug"] == slug],
            10,
            f"{slug} was never placed",
        )
        self.ready.update(placed)
        self.heartbeat()
        wait_until(lambda: self.call(slug) == (200, placed[0]), 10, f"{slug} never routed")
        return str(placed[0])

    def settled(self, phases: dict[str, str]) -> None:
        """Wait until each workload is in its phase, then for two reconcile passes more."""
        wait_until(
            lambda: all(
                self.api.get(f"/api/workloads/{workload_id}").json()["status"]["phase"] == phase
                for workload_id, phase in phases.items()
            ),
            10,
            f"never settled in {phases}",
        )
        time.sleep(2 * self.manager.settings.reconcile_interval_s)

    def close(self) -> None:
        for client in (self.admin, self.api, self.data, self.agent):
            client.close()
        self.address.close()


@pytest.fixture
def no_resync(tmp_path: Path) -> Iterator[Fleet]:
    """A fleet whose gateway never reads every route again: what it sees, notifications named."""
    with own_manager(
        tmp_path,
        reconcile_interval_s=0.3,
        reconcile_resync_s=3600.0,
        worker_not_ready_after_s=NOT_READY_AFTER_S,
        gateway_routes_resync_s=3600.0,
    ) as manager:
        fleet = Fleet(manager)
        yield fleet
        fleet.close()


def test_a_replica_is_routed_once_ready_and_no_longer_once_its_worker_is_not_ready(
    no_resync: Fleet,
) -> None:
    fleet = no_resync
    fleet.heartbeat()
    fleet.create("chat")
    # The workload (and its project, both created after the gateway's one full read) is known
    # at once, heard or not: no ready replica yet, rather than no such workload.
    assert fleet.call("chat") == (503, "no_ready_replica")

    [replica] = wait_until(
        lambda: [r["id"] for r in fleet.heartbeat() if r["workload_slug"] == "chat"],
        10,
        "never placed",
    )
    fleet.heartbeat()  # reported starting: still nothing to route to
    assert fleet.call("chat") == (503, "no_ready_replica")
    fleet.ready.add(replica)
    fleet.heartbeat()
    reported = time.monotonic()
    wait_until(lambda: fleet.call("chat") == (200, replica), PROMPTLY_S, "ready, not routed")
    assert time.monotonic() - reported < PROMPTLY_S

    # The agent falls silent: once the reconciler marks its worker not ready (NOTIFY
    # ik_workers), the replica takes no more traffic.
    silent = time.monotonic()
    wait_until(
        lambda: fleet.call("chat") == (503, "no_ready_replica"),
        NOT_READY_AFTER_S + 2 * PROMPTLY_S,
        "still routed to a silent worker",
        interval=0.05,
    )
    assert time.monotonic() - silent < NOT_READY_AFTER_S + 2 * PROMPTLY_S
    workers = fleet.admin.get("/api/workers").json()["workers"]
    assert [w["state"] for w in workers if w["id"] == fleet.worker_id] == ["not_ready"]

    # Its next heartbeat makes it ready again (NOTIFY ik_reconcile with the worker's id): the
    # gateway finds the ready replica on it, which its table no longer listed.
    fleet.heartbeat(report=False)
    back = time.monotonic()
    wait_until(lambda: fleet.call("chat") == (200, replica), PROMPTLY_S, "not routed again")
    assert time.monotonic() - back < PROMPTLY_S


def test_a_change_no_notification_names_waits_for_the_next_full_read(tmp_path: Path) -> None:
    with own_manager(
        tmp_path,
        reconcile_interval_s=0.3,
        reconcile_resync_s=3600.0,
        gateway_routes_resync_s=RESYNC_S,
    ) as manager:
        fleet = Fleet(manager)
        try:
            fleet.heartbeat()
            chat_id = fleet.create("chat")
            replica = fleet.serving("chat")

            def answer_while_alive() -> tuple[int, str]:
                fleet.heartbeat(report=False)  # the lease only: it names nothing
                return fleet.call("chat")

            # Settled: the reconciler has written the phase, and read back what it wrote.
            wait_until(
                lambda: (
                    fleet.api.get(f"/api/workloads/{chat_id}").json()["status"]["phase"] == "ready"
                ),
                10,
                "never ready",
            )
            settled = time.monotonic() + 1.0
            while time.monotonic() < settled:
                answer_while_alive()
                time.sleep(0.1)

            # Written behind the Manager's back: only a full read finds it. When one does, the
            # next comes RESYNC_S later.
            fleet.sql("UPDATE replicas SET state = 'starting' WHERE id = $1", replica)
            wait_until(
                lambda: answer_while_alive() == (503, "no_ready_replica"),
                RESYNC_S + PROMPTLY_S,
                "no full read found the change",
                interval=0.05,
            )
            full_read = time.monotonic()
            fleet.sql("UPDATE replicas SET state = 'ready' WHERE id = $1", replica)

            # Meanwhile the named changes are read at once: a new workload is known (one with no
            # replica, whose notifications name no worker and so no route of this one).
            fleet.create("idle", replicas=0)
            wait_until(lambda: fleet.call("idle")[0] == 503, PROMPTLY_S, "idle never known")
            while time.monotonic() - full_read < RESYNC_S - 1.0:
                assert answer_while_alive() == (503, "no_ready_replica"), (
                    "an unnamed change was read"
                )
                time.sleep(0.1)
            wait_until(
                lambda: answer_while_alive() == (200, replica),
                1.0 + PROMPTLY_S,
                "the next full read did not find the change",
                interval=0.05,
            )
        finally:
            fleet.close()


@pytest.fixture
def steady(tmp_path: Path) -> Iterator[Fleet]:
    """A fleet whose worker stays ready without heartbeats, and nothing read in full."""
    with own_manager(
        tmp_path,
        reconcile_interval_s=0.3,
        reconcile_resync_s=3600.0,
        worker_not_ready_after_s=600.0,
        worker_lost_after_s=1200.0,
        gateway_routes_resync_s=3600.0,
    ) as manager:
        fleet = Fleet(manager)
        yield fleet
        fleet.close()


async def test_reads_of_what_changed_keep_targets_and_match_a_full_read(steady: Fleet) -> None:
    fleet = steady
    await asyncio.to_thread(fleet.heartbeat)
    chat_id = await asyncio.to_thread(fleet.create, "chat")
    replica = await asyncio.to_thread(fleet.serving, "chat")
    engine = make_engine(fleet.manager.database_url)
    try:
        sessions = make_sessionmaker(engine)
        table = RouteTable(sessions)
        await table.reload()
        [target] = table.by_id[chat_id].replicas
        target.outstanding = 3  # requests in flight through it

        async def same_as_a_full_read() -> None:
            fresh = RouteTable(sessions)
            await fresh.reload()
            assert {
                key: (r.id, [t.id for t in r.replicas]) for key, r in fresh.workloads.items()
            } == {key: (r.id, [t.id for t in r.replicas]) for key, r in table.workloads.items()}
            assert fresh.by_id.keys() == table.by_id.keys()

        await table.reload_named([chat_id], [])
        await table.reload_named([], [fleet.worker_id])
        assert table.by_id[chat_id].replicas == [target] and target.outstanding == 3
        await same_as_a_full_read()

        # No address: nothing to route to (the reconciler leaves addresses to heartbeats).
        await asyncio.to_thread(
            fleet.sql, "UPDATE workers SET address = NULL WHERE id = $1", fleet.worker_id
        )
        await table.reload_named([], [fleet.worker_id])
        assert table.by_id[chat_id].replicas == []
        await same_as_a_full_read()

        await asyncio.to_thread(
            fleet.sql,
            "UPDATE workers SET address = $2 WHERE id = $1",
            fleet.worker_id,
            fleet.address.url,
        )
        await table.reload_named([], [fleet.worker_id])
        assert [t.id for t in table.by_id[chat_id].replicas] == [replica]
        await same_as_a_full_read()

        await asyncio.to_thread(
            fleet.sql, "UPDATE workloads SET deleted_at = now() WHERE id = $1", chat_id
        )
        await table.reload_named([chat_id], [])
        assert chat_id not in table.by_id
        assert not table.by_id and not table.workloads
        await same_as_a_full_read()
    finally:
        await engine.dispose()


async def test_a_full_read_in_pieces_keeps_the_routes_that_did_not_change(
    steady: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = steady
    await asyncio.to_thread(fleet.heartbeat)
    chat_id = await asyncio.to_thread(fleet.create, "chat")
    replica = await asyncio.to_thread(fleet.serving, "chat")
    # Settled first, so that no pass the heartbeats asked for plans chat after the row below
    # (it would stop the replica too many), and none writes a route's row between the reads.
    await asyncio.to_thread(fleet.settled, {chat_id: "ready"})
    # A second ready replica of chat, so that its two rows come in two pieces (written behind
    # the Manager's back: no notice, and no full read for an hour).
    await asyncio.to_thread(
        fleet.sql,
        "INSERT INTO replicas SELECT (jsonb_populate_record(r, jsonb_build_object("
        "'id', $1 || '-bis'))).* FROM replicas r WHERE r.id = $1",
        replica,
    )
    idle_id = await asyncio.to_thread(fleet.create, "idle", 0)
    await asyncio.to_thread(fleet.settled, {idle_id: "stopped"})
    monkeypatch.setattr(routes_module, "READ_AT_ONCE", 1)  # a piece per row
    engine = make_engine(fleet.manager.database_url)
    try:
        sessions = make_sessionmaker(engine)
        table = RouteTable(sessions)
        await table.reload()
        chat, idle = table.by_id[chat_id], table.by_id[idle_id]
        targets = chat.replicas
        assert sorted(t.id for t in targets) == [replica, f"{replica}-bis"]

        await table.reload()
        assert table.by_id[chat_id] is chat and table.by_id[idle_id] is idle
        assert table.by_id[chat_id].replicas == targets
        assert table.workloads[(chat.project_id, "chat")] is chat

        await asyncio.to_thread(
            fleet.sql, "UPDATE workloads SET phase_reason = 'changed' WHERE id = $1", idle_id
        )
        await table.reload()
        assert table.by_id[chat_id] is chat
        assert table.by_id[idle_id] is not idle and table.by_id[idle_id].reason == "changed"
        assert table.workloads[(idle.project_id, "idle")] is table.by_id[idle_id]
    finally:
        await engine.dispose()


async def test_a_workload_the_table_has_not_heard_of_is_read_before_it_is_called_absent(
    steady: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = steady
    engine = make_engine(fleet.manager.database_url)
    try:
        sessions = make_sessionmaker(engine)
        table = RouteTable(sessions)  # not started: it hears nothing but what the test tells it
        await table.reload()
        project_id = table.projects[fleet.project]

        # Created after the table's read: found in the database, and kept in the table.
        late_id = await asyncio.to_thread(fleet.create, "late", 0)
        route = await table.find(project_id, "late")
        assert route is not None and route.id == late_id and route.replicas == []
        assert table.workloads[(project_id, "late")] is route and table.by_id[late_id] is route
        assert not table._changes.take().workloads  # read with nothing heard meanwhile

        # Absent, then created: answered absent from memory (no query per request for a name
        # that does not exist) until a workload's notification is heard; a worker's notification
        # cannot make a name exist, and leaves it absent.
        monkeypatch.setattr(routes_module, "MISSING_S", 3600.0)
        assert await table.find(project_id, "soon") is None
        soon_id = await asyncio.to_thread(fleet.create, "soon", 0)
        assert await table.find(project_id, "soon") is None
        table.changed(fleet.worker_id)
        assert await table.find(project_id, "soon") is None
        table.changed(soon_id)
        route = await table.find(project_id, "soon")
        assert route is not None and route.id == soon_id

        # ...or until MISSING_S has passed.
        monkeypatch.setattr(routes_module, "MISSING_S", 0.2)
        assert await table.find(project_id, "later") is None
        later_id = await asyncio.to_thread(fleet.create, "later", 0)
        await asyncio.sleep(0.2)
        route = await table.find(project_id, "later")
        assert route is not None and route.id == later_id

        # Another project's workload of that name is not this project's; a deleted one is gone.
        assert await table.find("proj_someone_else", "late") is None
        await asyncio.to_thread(
            fleet.sql, "UPDATE workloads SET deleted_at = now() WHERE id = $1", later_id
        )
        await table.reload()
        assert await table.find(project_id, "later") is None

        # A notification heard while the one workload was read may have changed it after the
        # read: the route is answered, and read again by the table's next read of what changed.
        table._changes.take()
        heard_meanwhile = RouteTable(sessions)

        def reading() -> Any:
            heard_meanwhile.changed(fleet.worker_id)  # heard as the read begins
            return sessions()

        heard_meanwhile._sessions = reading  # type: ignore[assignment]
        found = await heard_meanwhile.find(project_id, "late")
        assert found is not None and found.id == late_id
        assert late_id in heard_meanwhile._changes.take().workloads
    finally:
        await engine.dispose()
