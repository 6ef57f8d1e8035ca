"""A GET of a workload reads in autocommit: its statements commit by themselves, with no BEGIN
before them and no ROLLBACK after (two round trips fewer, each a turn of a busy event loop). So
does a create on a built-in backend, one statement; a patch still runs in a transaction. And no
control-API request reads its project on its own: the credential's lookup reads it in the same
statement."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from tests.support import (
    RunningManager,
    bearer,
    create_project,
    create_sdk_token,
    fastapi_app,
    own_manager,
    wait_until,
)
from tests.test_agent_protocol_load import listen
from tests.test_api_admission import WORKLOAD
from tests.test_assignments_long_poll import CPU_ONLY


def _in_request() -> bool:
    task = asyncio.current_task()
    name = task.get_coro().__qualname__ if task is not None else ""  # type: ignore[union-attr]
    return "run_asgi" in name  # uvicorn's request cycle


class Statements:
    """What the Manager's engine sends for HTTP requests, not for the background tasks that
    share its pool: the statements (SQLAlchemy's cursor events, which see those of the
    autocommit sessions too), and BEGIN, COMMIT and ROLLBACK (asyncpg's query logger on each
    pooled connection, counted while a request's task holds it). The credential's lookup goes
    through a pool of its own (manager/db/direct.py) and is not among them."""

    def __init__(self, manager: RunningManager) -> None:
        self.sent: list[str] = []
        self.transactions: list[str] = []
        self._logged: dict[int, tuple[Any, Any]] = {}  # id -> the connection, its logger
        self._for_request: dict[int, bool] = {}
        engine = fastapi_app(manager).state.engine.sync_engine

        def on_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
            raw = dbapi_connection.driver_connection
            self._for_request[id(raw)] = _in_request()
            if id(raw) not in self._logged:
                logger = functools.partial(self._log, id(raw))
                self._logged[id(raw)] = (raw, logger)
                raw.add_query_logger(logger)

        def on_statement(*args: Any) -> None:
            if _in_request():
                self.sent.append(args[2])

        self._listeners = [(engine, "checkout", on_checkout)]
        self._listeners.append((engine, "before_cursor_execute", on_statement))
        for target, name, listener in self._listeners:
            event.listen(target, name, listener)

    def close(self) -> None:
        """Stop watching: for a Manager other tests go on using."""
        for target, name, listener in self._listeners:
            event.remove(target, name, listener)
        for raw, logger in self._logged.values():
            raw.remove_query_logger(logger)

    def _log(self, connection: int, record: Any) -> None:
        # Called soon after the statement (call_soon), before the connection can change hands.
        word = record.query.split()[0].rstrip(";").upper()
        if word in ("BEGIN", "ROLLBACK", "COMMIT") and self._for_request.get(connection):
            self.transactions.append(word)

    def committed(self) -> Statements:
        """Once a COMMIT is heard: the query logger is called soon after a statement, on the
        Manager's loop, and may be called after the answer has come back."""
        wait_until(lambda: "COMMIT" in self.transactions, 5, "no COMMIT heard", interval=0.02)
        return self

    def settled(self) -> Statements:
        """Once nothing more is heard for 0.2 s (for what must not be heard)."""
        heard, quiet_since = (-1, -1), time.monotonic()
        while time.monotonic() - quiet_since < 0.2:
            now = (len(self.sent), len(self.transactions))
            if now != heard:
                heard, quiet_since = now, time.monotonic()
            time.sleep(0.02)
        return self

    def reading(self, table: str) -> list[str]:
        return [query for query in self.sent if f"FROM {table}" in query]


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[RunningManager]:
    with own_manager(tmp_path) as running:
        yield running


def test_a_get_and_a_create_send_no_transaction_and_a_patch_does(manager: RunningManager) -> None:
    with httpx.Client(base_url=manager.url, headers=bearer(manager.admin_token or "")) as admin:
        project = create_project(admin)["slug"]
        sdk = bearer(create_sdk_token(admin, project))
    with httpx.Client(base_url=manager.url, headers=sdk, timeout=30) as client:
        statements = Statements(manager)
        created = client.post(f"/api/projects/{project}/workloads", json=WORKLOAD)
        assert created.status_code == 201, created.text
        workload = created.json()
        assert created.json()["project_slug"] == project
        assert statements.settled().transactions == []  # one statement, committed by itself
        statements.sent.clear()
        statements.transactions.clear()
        for ref in (workload["id"], workload["slug"]):
            got = client.get(f"/api/workloads/{ref}")
            assert got.status_code == 200, got.text
            assert (got.json()["id"], got.json()["slug"]) == (workload["id"], workload["slug"])
        missing = client.get("/api/workloads/no-such-workload")
        assert missing.status_code == 404, missing.text
        assert statements.settled().transactions == []
        assert len(statements.sent) == 3  # one a GET: the workload's row
        patched = client.patch(f"/api/workloads/{workload['id']}", json={"description": "x"})
        assert patched.status_code == 200, patched.text
        assert "BEGIN" in statements.committed().transactions
        assert client.get(f"/api/workloads/{workload['id']}").json()["description"] == "x"
        listed = client.get(f"/api/projects/{project}/workloads")
        assert [w["id"] for w in listed.json()["workloads"]] == [workload["id"]]
        assert statements.settled().reading("projects") == []


async def test_a_create_is_one_statement_with_its_event_and_its_notice(
    manager: RunningManager,
) -> None:
    """The workload, its "created" event and the reconciler's notice go in one statement, which
    commits by itself; a create refused for its slug writes none of them."""
    async with httpx.AsyncClient(base_url=manager.url, timeout=30) as client:
        admin = bearer(manager.admin_token or "")
        made = await client.post(
            "/api/admin/projects", json={"slug": "one-statement"}, headers=admin
        )
        assert made.status_code == 201, made.text
        token = await client.post(
            "/api/admin/tokens", json={"project": "one-statement"}, headers=admin
        )
        client.headers.update(bearer(token.json()["token"]))
        statements = Statements(manager)
        async with listen(manager) as notices:
            created = await client.post("/api/projects/one-statement/workloads", json=WORKLOAD)
            assert created.status_code == 201, created.text
            workload_id = created.json()["id"]
            await notices.heard(workload_id)
            # The one statement commits by itself (a built-in backend): no BEGIN, no COMMIT.
            await asyncio.to_thread(statements.settled)
            assert len(statements.sent) == 1
            assert statements.transactions == []
            other = {**WORKLOAD, "description": "another spec under the same slug"}
            refused = await client.post("/api/projects/one-statement/workloads", json=other)
            assert refused.status_code == 409, refused.text
            events = (await client.get(f"/api/workloads/{workload_id}/events")).json()["events"]
            assert [e["kind"] for e in events].count("created") == 1
            await asyncio.sleep(0.5)  # a notice of the refused create would have come by now
            assert set(notices.payloads) == {workload_id}  # the one workload's, nothing else


def test_an_agents_assignments_are_read_with_no_transaction(manager: RunningManager) -> None:
    """Whether a long-poll or a heartbeat reads a worker's answer, its statements commit by
    themselves: no BEGIN, no ROLLBACK."""
    with httpx.Client(base_url=manager.url, headers=bearer(manager.admin_token or "")) as admin:
        project = create_project(admin)["slug"]
        sdk = bearer(create_sdk_token(admin, project))
        made = admin.post("/api/admin/workers", json={"project": project, "name": "cpu-box"})
        assert made.status_code == 201, made.text
    agent = httpx.Client(base_url=manager.url, headers=bearer(made.json()["token"]), timeout=40)
    client = httpx.Client(base_url=manager.url, headers=sdk, timeout=30)
    body = {"agent_version": "test", "address": "http://127.0.0.1:9", "inventory": CPU_ONLY}

    def heartbeat() -> dict[str, Any]:
        answered = agent.post("/api/agent/heartbeat", json=body)
        assert answered.status_code == 200, answered.text
        return answered.json()

    def placed(slug: str) -> bool:
        replicas = client.get(f"/api/workloads/{slug}/replicas")
        assert replicas.status_code == 200, replicas.text
        return bool(replicas.json()["replicas"])

    with agent, client:
        first = heartbeat()  # registers the inventory, in a transaction of its own
        statements = Statements(manager)
        with ThreadPoolExecutor(1) as pool:
            stale = {"version": first["version"], "wait": 20}
            waiting = pool.submit(agent.get, "/api/agent/assignments", params=stale)
            created = client.post(f"/api/projects/{project}/workloads", json=WORKLOAD)
            assert created.status_code == 201, created.text
            polled = waiting.result(timeout=30)
        assert polled.status_code == 200, polled.text
        assert len(polled.json()["replicas"]) == 1  # read by the long-poll
        # A change no long-poll waits for: the next heartbeat reads the answer.
        other = {**WORKLOAD, "slug": "second", "name": "second"}
        assert client.post(f"/api/projects/{project}/workloads", json=other).status_code == 201
        wait_until(lambda: placed("second"), 30, "the second workload placed")
        assert len(heartbeat()["replicas"]) == 2
        settled = statements.settled()
        assert len(settled.reading("replicas")) >= 2, settled.sent
        assert settled.transactions == []
