"""The agent protocol at fleet scale: delta heartbeats, precise reconcile notifications, load
shedding with 503 and Retry-After (never a 500), and agent credentials cached without slowing a
revocation down."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from ik_contracts.protocol import REPORTED_STATES
from manager.api.agent import AgentCredentials
from manager.api.agent_fast import MAX_BODY, AgentFastPath
from manager.notify import RECONCILE, plain_postgres_url
from manager.services import workers
from tests.support import (
    RunningManager,
    bearer,
    create_project,
    create_sdk_token,
    histogram_buckets,
    own_manager,
    revoke,
)

CPU_ONLY = {"source": "none", "hostname": "cpu-box", "gpus": []}
GPU = {
    "index": 0,
    "uuid": "GPU-load-0",
    "name": "NVIDIA L4",
    "memory_total_mb": 23034,
    "memory_used_mb": 0,
    "utilization_pct": 0,
}
WORKLOAD = {
    "name": "Tiny",
    "slug": "tiny",
    "backend": "llamacpp",
    "model_name": "x",
    "config": {"command": "llama-server -m /models/x.gguf"},
    "execution_policy": "fixed",
    "execution_policy_config": {"replicas": 1},
}


def gpu_inventory(**changes: Any) -> dict[str, Any]:
    gpu = {**GPU, **{k: v for k, v in changes.items() if k in GPU}}
    rest = {k: v for k, v in changes.items() if k not in GPU}
    return {
        "source": "simulated",
        "hostname": "load-box",
        "cuda_version": "12.4",
        "gpus": [gpu],
        "model_files": {"/models/a.gguf": 100},
        **rest,
    }


def full(inventory: dict[str, Any], replicas: list[dict[str, Any]]) -> dict[str, Any]:
    return {"address": "http://127.0.0.1:9", "inventory": inventory, "replicas": replicas}


DELTA = {"address": "http://127.0.0.1:9"}


class Notices:
    """What the Manager says on ``ik_reconcile``, heard on a connection of the test's own."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection
        self.payloads: list[str] = []

    def on(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        self.payloads.append(payload)

    async def heard(self, payload: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while payload not in self.payloads:
            assert time.monotonic() < deadline, f"no NOTIFY {payload} (heard {self.payloads})"
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def listen(manager: RunningManager) -> AsyncIterator[Notices]:
    connection = await asyncpg.connect(plain_postgres_url(manager.database_url))
    notices = Notices(connection)
    await connection.add_listener(RECONCILE, notices.on)
    try:
        yield notices
    finally:
        await connection.close()


async def heartbeat(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/api/agent/heartbeat", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def new_worker(admin: httpx.Client, project: str, name: str) -> str:
    created = admin.post("/api/admin/workers", json={"project": project, "name": name})
    assert created.status_code == 201, created.text
    return str(created.json()["token"])


async def test_the_reconciler_hears_of_a_worker_only_when_what_placement_reads_changed(
    manager: RunningManager, admin: httpx.Client
) -> None:
    project = create_project(admin)["slug"]
    watched, probe = new_worker(admin, project, "notified"), new_worker(admin, project, "probe")
    gpus_changed = gpu_inventory(memory_total_mb=11000)
    cuda_changed = {**gpus_changed, "cuda_version": "12.8"}
    files_changed = {**cuda_changed, "model_files": {"/models/b.gguf": 1}}
    gpu_gone = {**files_changed, "gpus": []}
    steps: list[tuple[dict[str, Any], bool]] = [
        (DELTA, False),  # the lease renewed, nothing else
        (full(gpu_inventory(utilization_pct=90, memory_used_mb=9000), []), False),
        (full(gpus_changed, []), True),
        (full(gpus_changed, []), False),
        (full(cuda_changed, []), True),
        (full(files_changed, []), True),
        (full(files_changed, []), False),
        (full(gpu_gone, []), True),
        (full(gpu_gone, []), False),
    ]
    async with (
        httpx.AsyncClient(base_url=manager.url, headers=bearer(watched)) as agent,
        httpx.AsyncClient(base_url=manager.url, headers=bearer(probe)) as prober,
        listen(manager) as notices,
    ):
        worker_id = (await heartbeat(agent, full(gpu_inventory(), [])))["worker_id"]
        probe_id = (await heartbeat(prober, full(gpu_inventory(uuid="GPU-probe"), [])))["worker_id"]
        assert worker_id.startswith("wrk_")
        await notices.heard(worker_id)  # registered -> ready
        await notices.heard(probe_id)
        for number, (body, notifies) in enumerate(steps):
            notices.payloads.clear()
            await heartbeat(agent, body)
            # Then another worker's capacity changes: notifications come in commit order, so
            # once its notice is heard, the step's would have been heard too.
            memory = 20000 + number
            await heartbeat(
                prober, full(gpu_inventory(uuid="GPU-probe", memory_total_mb=memory), [])
            )
            await notices.heard(probe_id)
            assert notices.payloads.count(worker_id) == int(notifies), (number, notices.payloads)


@pytest.fixture
def own(tmp_path: Path) -> Iterator[RunningManager]:
    with own_manager(tmp_path) as running:
        yield running


async def replica_row(manager: RunningManager, replica_id: str) -> asyncpg.Record | None:
    connection = await asyncpg.connect(plain_postgres_url(manager.database_url))
    try:
        return await connection.fetchrow(
            "SELECT state, desired_state FROM replicas WHERE id = $1", replica_id
        )
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def agent_and_sdk(
    manager: RunningManager, worker_name: str
) -> AsyncIterator[tuple[str, httpx.AsyncClient, httpx.AsyncClient]]:
    """A new project's slug, a client of a new worker's agent in it, and one of its SDK token."""
    with httpx.Client(base_url=manager.url, headers=bearer(manager.admin_token or "")) as admin:
        project = create_project(admin)["slug"]
        sdk_token = create_sdk_token(admin, project)
        token = new_worker(admin, project, worker_name)
    async with (
        httpx.AsyncClient(base_url=manager.url, headers=bearer(token), timeout=30) as agent,
        httpx.AsyncClient(base_url=manager.url, headers=bearer(sdk_token)) as sdk,
    ):
        yield project, agent, sdk


async def test_replica_reports_notify_their_workload_and_a_finished_stop_frees_the_worker(
    own: RunningManager,
) -> None:
    async with agent_and_sdk(own, "cpu-box") as (project, agent, sdk):
        answer = await heartbeat(agent, full(CPU_ONLY, []))
        created = await sdk.post(f"/api/projects/{project}/workloads", json=WORKLOAD)
        assert created.status_code == 201, created.text
        workload_id = created.json()["id"]
        assert workload_id.startswith("wl_")
        watched = await agent.get(
            "/api/agent/assignments", params={"version": answer["version"], "wait": 20}
        )
        [assigned] = watched.json()["replicas"]
        worker_id = watched.json()["worker_id"]
        starting = {"id": assigned["id"], "state": "starting", "reason": "loading", "port": 41000}
        ready = {**starting, "state": "ready", "reason": None}

        async with listen(own) as notices:
            await heartbeat(agent, full(CPU_ONLY, [starting]))
            await notices.heard(workload_id)
            await asyncio.sleep(0.1)
            assert worker_id not in notices.payloads  # a ready worker, nothing freed
            notices.payloads.clear()
            await heartbeat(agent, DELTA)
            await heartbeat(agent, full(CPU_ONLY, [starting]))  # the same again: no news
            await heartbeat(agent, full(CPU_ONLY, [ready]))
            await notices.heard(workload_id)
            await asyncio.sleep(0.1)
            assert notices.payloads == [workload_id]

            deleted = await sdk.delete(f"/api/workloads/{workload_id}")
            assert deleted.status_code in (200, 202, 204), deleted.text

            async def stopping() -> bool:
                row = await replica_row(own, assigned["id"])
                return row is not None and row["desired_state"] == "stop"

            deadline = time.monotonic() + 15
            while not await stopping():
                assert time.monotonic() < deadline, "the reconciler did not stop the replica"
                await asyncio.sleep(0.1)
            # Absent replicas mean "unchanged": the row stays until the agent says it is gone.
            await heartbeat(agent, DELTA)
            await heartbeat(agent, {**full(CPU_ONLY, [ready]), "replicas": None})
            assert await replica_row(own, assigned["id"]) is not None
            notices.payloads.clear()
            await heartbeat(agent, full(CPU_ONLY, []))
            assert await replica_row(own, assigned["id"]) is None
            await notices.heard(workload_id)
            await notices.heard(worker_id)  # its capacity was freed


class LongWay:
    """Counts the reports stored by ``workers.record_heartbeat`` (the session's long way) in
    the Manager of this process, each still stored by it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        stored = workers.record_heartbeat

        async def counted(*args: Any, **kwargs: Any) -> bool:
            self.count += 1
            return await stored(*args, **kwargs)

        monkeypatch.setattr(workers, "record_heartbeat", counted)


async def stored_rows(
    manager: RunningManager, worker_id: str, replica_id: str
) -> tuple[asyncpg.Record, asyncpg.Record, int]:
    """The replica's row, the worker's first GPU's, and how many events its reports made."""
    connection = await asyncpg.connect(plain_postgres_url(manager.database_url))
    try:
        replica = await connection.fetchrow("SELECT * FROM replicas WHERE id = $1", replica_id)
        gpu = await connection.fetchrow(
            "SELECT * FROM gpu_resources WHERE worker_id = $1 ORDER BY index LIMIT 1", worker_id
        )
        events = await connection.fetchval(
            "SELECT count(*) FROM workload_events WHERE workload_id = $1 AND kind = ANY($2)"
            " AND data ->> 'replica_id' = $3",
            replica["workload_id"],
            [f"replica_{state}" for state in REPORTED_STATES],
            replica_id,
        )
        return replica, gpu, events
    finally:
        await connection.close()


async def test_reports_of_figures_and_transitions_are_stored_without_the_long_way(
    own: RunningManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every agent's full report each minute, a serving replica's engine load and a replica's
    transitions are stored in one or two statements on the direct pool
    (workers.record_report_quickly), by agent_fast's layer, with the rows, events and reconcile
    notices of the long way: figures record no event and tell no one, a transition records its
    event and tells its workload. A finished stop goes the long way."""
    async with agent_and_sdk(own, "figures") as (project, agent, sdk):
        long_way = LongWay(monkeypatch)
        # A worker not ready yet (here: new) is made ready by the long way, in the transaction
        # that stores its report: the reconciler never sees it ready without its GPUs.
        answer = await heartbeat(agent, full(gpu_inventory(), []))
        assert long_way.count == 1
        created = await sdk.post(f"/api/projects/{project}/workloads", json=WORKLOAD)
        assert created.status_code == 201, created.text
        workload_id = created.json()["id"]
        watched = await agent.get(
            "/api/agent/assignments", params={"version": answer["version"], "wait": 20}
        )
        [assigned] = watched.json()["replicas"]
        worker_id = watched.json()["worker_id"]
        ready = {"id": assigned["id"], "state": "ready", "port": 41000, "log_tail": "loaded"}
        async with listen(own) as notices:
            await heartbeat(agent, full(gpu_inventory(), [ready]))  # pending -> ready
            await notices.heard(workload_id)
        assert long_way.count == 1
        connection = await asyncpg.connect(plain_postgres_url(own.database_url))
        try:
            [event] = await connection.fetch(
                "SELECT kind, message, data FROM workload_events"
                " WHERE workload_id = $1 AND kind = 'replica_ready'",
                workload_id,
            )
        finally:
            await connection.close()
        assert json.loads(event["data"]) == {"replica_id": assigned["id"]}
        assert event["message"] == (
            f"replica {assigned['id']} on figures ({worker_id}) is ready on port 41000"
        )
        before, gpu_before, events_before = await stored_rows(own, worker_id, assigned["id"])
        assert (before["state"], before["port"], before["ready_at"] is not None) == (
            "ready",
            41000,
            True,
        )
        assert events_before == 1

        serving = {
            **ready,
            "log_tail": "loaded\nserved 3 requests",
            "restarts": 0,
            "engine_load": {"running": 3, "waiting": 1, "kv_cache_usage": 0.25},
        }
        busy = gpu_inventory(memory_used_mb=9000, utilization_pct=87)
        async with listen(own) as notices:
            with ToTheRoutes(own) as routed:
                await heartbeat(agent, full(gpu_inventory(), [ready]))  # nothing new
                await heartbeat(agent, full(busy, [serving]))
                await heartbeat(agent, {**DELTA, "replicas": [{**serving, "restarts": 2}]})
                await heartbeat(agent, {**DELTA, "inventory": busy})
            assert (routed.count, long_way.count) == (0, 1)
            after, gpu_after, events_after = await stored_rows(own, worker_id, assigned["id"])
            assert (after["engine_running"], after["engine_waiting"]) == (3, 1)
            assert after["kv_cache_usage"] == 0.25
            assert (after["log_tail"], after["restarts"]) == (serving["log_tail"], 2)
            assert (after["state"], after["reason"], after["port"]) == ("ready", None, 41000)
            assert after["ready_at"] == before["ready_at"]
            assert after["updated_at"] > before["updated_at"]
            assert (gpu_after["memory_used_mb"], gpu_after["utilization_pct"]) == (9000, 87)
            assert gpu_after["updated_at"] > gpu_before["updated_at"]
            assert gpu_after["memory_total_mb"] == gpu_before["memory_total_mb"]
            assert events_after == events_before

            # A state that changes: its event and its workload's notice (the figures gave none).
            failed = {**serving, "state": "failed", "reason": "engine exited"}
            await heartbeat(agent, full(busy, [failed]))
            assert long_way.count == 1
            await notices.heard(workload_id)
            await asyncio.sleep(0.1)
            assert notices.payloads.count(workload_id) == 1, notices.payloads
            assert worker_id not in notices.payloads
            assert (await stored_rows(own, worker_id, assigned["id"]))[2] == events_before + 1


async def test_a_delta_heartbeat_renews_the_lease_and_keeps_the_inventory(
    manager: RunningManager, admin: httpx.Client
) -> None:
    token = new_worker(admin, create_project(admin)["slug"], "delta")
    async with httpx.AsyncClient(base_url=manager.url, headers=bearer(token)) as agent:
        worker_id = (await heartbeat(agent, full(gpu_inventory(), [])))["worker_id"]
        before = admin.get("/api/workers").json()
        await asyncio.sleep(0.05)
        await heartbeat(agent, {})
        after = admin.get("/api/workers").json()

    def mine(listing: dict[str, Any]) -> dict[str, Any]:
        [row] = [w for w in listing["workers"] if w["id"] == worker_id]
        return dict(row)

    then, now = mine(before), mine(after)
    assert now["state"] == "ready"
    assert now["last_heartbeat_at"] > then["last_heartbeat_at"]
    assert now["gpus"] == then["gpus"] and [g["uuid"] for g in now["gpus"]] == [GPU["uuid"]]
    assert (now["hostname"], now["cuda_version"]) == ("load-box", "12.4")


async def test_one_workers_concurrent_heartbeats_all_succeed(
    manager: RunningManager, admin: httpx.Client
) -> None:
    """An agent that gave up on a slow answer and sent again has two heartbeats in flight; under
    load, several. Once in a few thousand, three of them deadlocked in Postgres (each locks the
    worker's row twice in one statement): a 500. One worker's heartbeats now take turns in a
    process, shed with 503 like any request that waits too long (and a deadlock anywhere is a
    503 to retry: tests/unit/test_database_conflicts.py)."""
    token = new_worker(admin, create_project(admin)["slug"], "impatient")
    async with httpx.AsyncClient(base_url=manager.url, headers=bearer(token), timeout=30) as agent:
        await heartbeat(agent, full(gpu_inventory(), []))
        bodies = [DELTA if n % 8 else full(gpu_inventory(memory_used_mb=n), []) for n in range(32)]
        for _ in range(5):
            answers = await asyncio.gather(
                *(agent.post("/api/agent/heartbeat", json=body) for body in bodies)
            )
            # Each waits for its turn as long as for an admission slot, then is shed.
            assert {a.status_code for a in answers} <= {200, 503}, [a.text for a in answers]
            for shed in (a for a in answers if a.status_code == 503):
                assert shed.json()["code"] == "overloaded"
                assert int(shed.headers["retry-after"]) >= 1
            assert sum(a.status_code == 200 for a in answers) >= len(answers) // 2
    # The heartbeats that waited for their worker's turn were timed as such.
    turns = histogram_buckets(
        admin.get("/metrics").text, "inferencekey_admission_wait_seconds", kind="heartbeat"
    )
    assert turns[math.inf] >= 5 * len(bodies)
    assert turns[math.inf] - turns[0.001] >= 5  # some of the 32 of a round waited


def api_requests(
    admin: httpx.Client,
    status: str,
    method: str = "POST",
    route: str = "/api/agent/heartbeat",
) -> float:
    text = admin.get("/metrics").text
    line = (
        f'inferencekey_api_requests_total{{method="{method}",route="{route}",status="{status}"}} '
    )

    return sum(float(row[len(line) :]) for row in text.splitlines() if row.startswith(line))


class ToTheRoutes:
    """Counts the agent requests that reach the FastAPI app behind agent_fast's layer (the
    Manager runs in this process, tests/support.py): those the layer declined."""

    def __init__(self, manager: RunningManager) -> None:
        layer: Any = manager.server.config.app
        while not isinstance(layer, AgentFastPath):
            layer = layer.app
        self.layer = layer
        self.inner = layer.app
        self.count = 0

    def __enter__(self) -> ToTheRoutes:
        async def counted(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["path"].startswith("/api/agent/"):
                self.count += 1
            await self.inner(scope, receive, send)

        self.layer.app = counted
        return self

    def __exit__(self, *_: object) -> None:
        self.layer.app = self.inner


async def test_delta_heartbeats_answer_as_the_route_does_however_they_are_sent(
    manager: RunningManager, admin: httpx.Client
) -> None:
    """A cached credential's delta heartbeat is answered without the FastAPI stack
    (manager/api/agent_fast.py); every other form goes the route's way. The answers, errors and
    counts are the same either way."""
    token = new_worker(admin, create_project(admin)["slug"], "fast")
    async with httpx.AsyncClient(base_url=manager.url, headers=bearer(token)) as agent:
        first = await agent.post("/api/agent/heartbeat", json=full(gpu_inventory(), []))
        assert first.status_code == 200, first.text
        counted = api_requests(admin, "200")
        with ToTheRoutes(manager) as routed:
            delta = await agent.post("/api/agent/heartbeat", json=DELTA)
        assert routed.count == 0, "a cached credential's delta heartbeat went the route's way"
        assert (delta.status_code, delta.content) == (200, first.content)
        assert delta.headers["content-type"] == "application/json"
        assert api_requests(admin, "200") == counted + 1
        # Past the fast path's size (padding), without a length (chunked), and with a field the
        # protocol does not know: the route's answers.
        padded = (b'{"address": "http://127.0.0.1:9"' + b" " * MAX_BODY) + b"}"

        async def chunked() -> AsyncIterator[bytes]:
            yield b'{"address": '
            yield b'"http://127.0.0.1:9"}'

        for content in (padded, chunked()):
            with ToTheRoutes(manager) as routed:
                answer = await agent.post(
                    "/api/agent/heartbeat",
                    content=content,
                    headers={"content-type": "application/json"},
                )
            assert routed.count == 1
            assert (answer.status_code, answer.content) == (200, first.content)
        for bad, code in (
            (b"{", "malformed_json"),
            (b"[]", "invalid_request"),
            (b'{"address": 7}', "validation_error"),
        ):
            refused = await agent.post(
                "/api/agent/heartbeat", content=bad, headers={"content-type": "application/json"}
            )
            assert (refused.status_code, refused.json()["code"]) == (400, code), refused.text
        assert api_requests(admin, "400") >= 3


async def test_long_polls_answer_as_the_route_does_however_they_are_sent(
    manager: RunningManager, admin: httpx.Client
) -> None:
    """A cached credential's long-poll with a plain query is answered without the FastAPI
    stack (manager/api/agent_fast.py); a query of another form goes the route's way. The
    answers, errors and counts are the same either way."""
    token = new_worker(admin, create_project(admin)["slug"], "fast-watch")
    async with httpx.AsyncClient(base_url=manager.url, headers=bearer(token)) as agent:
        first = await agent.post("/api/agent/heartbeat", json=full(gpu_inventory(), []))
        assert first.status_code == 200, first.text
        version = first.json()["version"]

        def counted() -> float:
            return api_requests(admin, "200", "GET", "/api/agent/assignments")

        before = counted()
        # The fast path's forms: stale or no version, wait absent or plain seconds; and the
        # route's: an exponent, a duplicate, an unknown key.
        for params, routes in (
            ({"version": "stale", "wait": "0"}, 0),
            ({"wait": "0.5"}, 0),
            ({"version": "x", "wait": "1e-3"}, 1),
            ([("version", "x"), ("version", "y"), ("wait", "0")], 1),
            ({"version": "x", "wait": "0", "other": "1"}, 1),
        ):
            with ToTheRoutes(manager) as routed:
                answer = await agent.get("/api/agent/assignments", params=params)
            assert routed.count == routes, params
            assert (answer.status_code, answer.content) == (200, first.content), params
            assert answer.headers["content-type"] == "application/json"
        assert counted() == before + 5
        # Unchanged: answered at the deadline with the same set.
        started = time.monotonic()
        waited = await agent.get(
            "/api/agent/assignments", params={"version": version, "wait": "0.3"}
        )
        assert (waited.status_code, waited.content) == (200, first.content)
        assert time.monotonic() - started >= 0.3
        # Out of bounds, either way: the route's 400.
        for wait in ("31", "-1", "nan"):
            refused = await agent.get("/api/agent/assignments", params={"wait": wait})
            assert (refused.status_code, refused.json()["code"]) == (
                400,
                "validation_error",
            ), refused.text


async def test_a_revoked_agent_credential_is_refused_on_its_next_request(
    manager: RunningManager, admin: httpx.Client
) -> None:
    project = create_project(admin)["slug"]
    heartbeats, watches = new_worker(admin, project, "revoked-1"), new_worker(admin, project, "r2")
    async with (
        httpx.AsyncClient(base_url=manager.url, headers=bearer(heartbeats)) as first,
        httpx.AsyncClient(base_url=manager.url, headers=bearer(watches)) as second,
    ):
        await heartbeat(first, DELTA)
        version = (await heartbeat(second, DELTA))["version"]
        revoke(admin, heartbeats)
        refused = await first.post("/api/agent/heartbeat", json=DELTA)
        assert (refused.status_code, refused.json()["code"]) == (401, "invalid_credentials")
        refused = await first.get("/api/agent/assignments", params={"wait": 0})
        assert refused.status_code == 401
        revoke(admin, watches)
        refused = await second.get("/api/agent/assignments", params={"version": version})
        assert (refused.status_code, refused.json()["code"]) == (401, "invalid_credentials")


async def test_a_revocation_whose_notice_never_came_is_refused_all_the_same(
    manager: RunningManager, admin: httpx.Client
) -> None:
    """Revoked in the database with no NOTIFY (as if it were lost), the cached credential is
    still refused on its next request of each kind: the fast path's own checks (the lease's
    statement, the long-poll's standing) say so, not the notification."""
    project = create_project(admin)["slug"]
    for kind in ("heartbeat", "long-poll"):
        token = new_worker(admin, project, f"unnoticed-{kind}")
        token_id = token.split("_")[2]
        async with httpx.AsyncClient(base_url=manager.url, headers=bearer(token)) as agent:
            await heartbeat(agent, DELTA)  # its credential cached
            connection = await asyncpg.connect(plain_postgres_url(manager.database_url))
            try:
                await connection.execute(
                    "UPDATE tokens SET revoked_at = now() WHERE id = $1", token_id
                )
            finally:
                await connection.close()
            if kind == "heartbeat":
                refused = await agent.post("/api/agent/heartbeat", json=DELTA)
            else:
                refused = await agent.get("/api/agent/assignments", params={"wait": 0})
            assert (refused.status_code, refused.json()["code"]) == (
                401,
                "invalid_credentials",
            ), refused.text


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningManager]:
    """A Manager that lets one agent request use the database at a time, and waits 20 ms for
    it: a small fleet's burst is more than it takes."""
    with own_manager(
        tmp_path_factory.mktemp("crowded"),
        agent_max_concurrent_db=1,
        agent_admission_wait_s=0.02,
        agent_retry_after_s=3,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def fleet_tokens(crowded: RunningManager) -> list[str]:
    with httpx.Client(base_url=crowded.url, headers=bearer(crowded.admin_token or "")) as admin:
        project = create_project(admin)["slug"]
        return [new_worker(admin, project, f"crowd-{n}") for n in range(10)]


async def test_a_flood_of_heartbeats_is_shed_with_503_overloaded_and_retry_after_never_500(
    crowded: RunningManager, fleet_tokens: list[str]
) -> None:
    limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
    async with httpx.AsyncClient(base_url=crowded.url, limits=limits, timeout=30) as client:

        async def beat(token: str, number: int) -> httpx.Response:
            body = full(gpu_inventory(uuid=f"GPU-{token[-6:]}-{number % 3}"), [])
            return await client.post("/api/agent/heartbeat", json=body, headers=bearer(token))

        answers = await asyncio.gather(
            *(beat(token, n) for n in range(20) for token in fleet_tokens)
        )
        statuses = {response.status_code for response in answers}
        assert statuses <= {200, 503}, statuses
        shed = [response for response in answers if response.status_code == 503]
        assert shed, "the burst was all taken: no load was shed"
        for response in shed:
            body = response.json()
            assert body.keys() >= {"error", "code", "message"}
            assert body["code"] in ("overloaded", "database_unavailable")
            assert int(response.headers["retry-after"]) >= 1
        assert any(response.json()["code"] == "overloaded" for response in shed)
        assert any(response.status_code == 200 for response in answers)
        # And the fleet's next heartbeats, spread out as agents send them, are all taken.
        for token in fleet_tokens:
            response = await client.post("/api/agent/heartbeat", json=DELTA, headers=bearer(token))
            assert response.status_code == 200, response.text


async def test_waiting_long_polls_hold_no_database_slot(
    crowded: RunningManager, fleet_tokens: list[str]
) -> None:
    async with httpx.AsyncClient(base_url=crowded.url, timeout=30) as client:
        versions = {}
        for token in fleet_tokens[:5]:
            answer = await client.post("/api/agent/heartbeat", json=DELTA, headers=bearer(token))
            assert answer.status_code == 200, answer.text
            versions[token] = answer.json()["version"]
        waiting = []
        for token, version in versions.items():  # one at a time: each takes a slot to start
            poll = client.get(
                "/api/agent/assignments",
                params={"version": version, "wait": 4},
                headers=bearer(token),
            )
            waiting.append(asyncio.create_task(poll))
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)
        assert not any(task.done() for task in waiting)
        for token in fleet_tokens:
            response = await client.post("/api/agent/heartbeat", json=DELTA, headers=bearer(token))
            assert response.status_code == 200, response.text
        assert all(response.status_code == 200 for response in await asyncio.gather(*waiting))


@pytest.fixture
def narrow(tmp_path: Path) -> Iterator[RunningManager]:
    """A Manager with one agent request at a time, waited for 20 ms, and the suite's short
    leases (not ready after 3 s)."""
    with own_manager(tmp_path, agent_max_concurrent_db=1, agent_admission_wait_s=0.02) as running:
        yield running


async def worker_states(manager: RunningManager) -> dict[str, str]:
    connection = await asyncpg.connect(plain_postgres_url(manager.database_url))
    try:
        rows = await connection.fetch("SELECT name, state FROM workers")
    finally:
        await connection.close()
    return {row["name"]: row["state"] for row in rows}


@pytest.mark.parametrize("credentials_cached", [True, False], ids=["cached", "looked-up"])
async def test_a_worker_whose_heartbeats_are_shed_keeps_its_lease_and_a_silent_one_lapses(
    narrow: RunningManager, monkeypatch: pytest.MonkeyPatch, credentials_cached: bool
) -> None:
    manager = narrow
    if not credentials_cached:
        # Every request looks its credential up (under an admission slot) and is shed before
        # it: the worker it names is the one an earlier lookup found.
        monkeypatch.setattr(AgentCredentials, "TTL_S", 0.0)
    with httpx.Client(base_url=manager.url, headers=bearer(manager.admin_token or "")) as admin:
        project = create_project(admin)["slug"]
        tokens = {name: new_worker(admin, project, name) for name in ("holder", "shed", "silent")}
    async with contextlib.AsyncExitStack() as stack:
        clients = {
            name: await stack.enter_async_context(
                httpx.AsyncClient(base_url=manager.url, headers=bearer(token), timeout=30)
            )
            for name, token in tokens.items()
        }
        ids = {}
        for name, client in clients.items():  # registered, and their credentials known
            ids[name] = (await heartbeat(client, full(CPU_ONLY, [])))["worker_id"]
            await heartbeat(client, DELTA)
        connection = await asyncpg.connect(plain_postgres_url(manager.database_url))
        try:
            # The holder's row locked: its next heartbeat waits on it with the one slot taken.
            transaction = connection.transaction()
            await transaction.start()
            await connection.execute(
                "SELECT 1 FROM workers WHERE id = $1 FOR UPDATE", ids["holder"]
            )
            held = asyncio.create_task(clients["holder"].post("/api/agent/heartbeat", json=DELTA))
            await asyncio.sleep(0.3)
            assert not held.done()
            # For longer than the not-ready lease (3 s): every heartbeat of "shed" is shed, and
            # "silent" sends none.
            deadline = time.monotonic() + 6
            shed = 0
            while time.monotonic() < deadline:
                answer = await clients["shed"].post("/api/agent/heartbeat", json=DELTA)
                assert answer.status_code == 503, answer.text
                assert answer.json()["code"] == "overloaded"
                shed += 1
                await asyncio.sleep(0.3)
            states = await worker_states(manager)
            assert states["silent"] == "not_ready", states
            assert states["shed"] == "ready", (states, shed)
            await transaction.rollback()
        finally:
            await connection.close()
        assert (await held).status_code == 200
        # And a heartbeat that gets through brings the silent one back.
        await heartbeat(clients["silent"], DELTA)
        assert (await worker_states(manager))["silent"] == "ready"
