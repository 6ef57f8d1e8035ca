"""At fleet scale every query the loops run reads a few rows through an index, never a whole big
table: the statements are the real ones, captured while the loops' own functions run against a
database filled like a fleet (1,000 workers, 8,000 GPUs, 10,000 workloads and replicas, 50,000
events, 100,000 finished jobs and their webhook deliveries), and each is planned with EXPLAIN
with the parameters it ran with.

A query that must read a whole table (the reconciler's full read of every replica, say) is named
in ``WHOLE_TABLE_READS`` with the reason. Another loop to check is one more entry in
``CODE_PATHS``. And the models declare every index the migrations create (the last test).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from ik_contracts.protocol import Heartbeat
from manager import notify
from manager.auth import Principal, authenticate, token_digest
from manager.db.direct import DirectPool
from manager.db.migrate import upgrade_to_head
from manager.db.models import Base, Project
from manager.db.session import autocommit, make_engine, make_sessionmaker
from manager.gateway.keys import KeyCache
from manager.gateway.routes import RouteTable
from manager.jobs.dispatcher import JobDispatcher, ResultWriter
from manager.reconciler import Reconciler
from manager.services import events, tokens, workers, workloads
from manager.services.timefmt import utcnow
from manager.settings import Settings, asyncpg_url
from manager.webhooks.deliverer import WebhookDeliverer
from tests.support import create_database, drop_database

# Tables that grow with the fleet (or with its history): a query meant for a few of their rows
# must not scan them. The small ones (tenants, projects, prices, demand rows) may be scanned.
LARGE_TABLES = frozenset(
    {
        "workers",
        "gpu_resources",
        "workloads",
        "replicas",
        "workload_events",
        "tokens",
        "jobs",
        "webhook_destinations",
        "webhook_deliveries",
    }
)

# (code path, table): why that path reads the whole table. Nothing else may.
WHOLE_TABLE_READS: dict[tuple[str, str], str] = {
    ("reconciler: full read", "workers"): "placement needs every worker's shape and liveness",
    ("reconciler: full read", "gpu_resources"): "placement needs every present GPU",
    ("reconciler: full read", "replicas"): "planning claims every replica's GPUs and memory",
    ("reconciler: full read", "workloads"): "every live workload is planned on a full read",
    ("reconciler: read of what changed", "workers"): (
        "every worker's liveness columns, each pass: heartbeats change them without a notice"
    ),
    ("reconciler: a pass", "workers"): "every worker's liveness columns, as in the read above",
    ("gateway: route table load", "workloads"): "the table holds every live workload",
    ("gateway: route table load", "replicas"): "the table holds every ready replica",
    ("gateway: route table load", "workers"): "the ready replicas' workers (addresses, secrets)",
}

# The fleet's shape.
PROJECTS = 20
WORKERS = 1_000
GPUS_PER_WORKER = 8
WORKLOADS = 10_000  # every tenth one deleted
EVENTS = 50_000
JOB_WORKLOADS = 200  # workloads with async jobs: every tenth one, from the first
# Jobs and their deliveries are kept once finished: they outnumber the unfinished ones more and
# more as a fleet runs.
FINISHED_JOBS, QUEUED_JOBS, RUNNING_JOBS, LAPSED_JOBS = 100_000, 600, 300, 100
DEMAND_WORKLOADS = 500


def padded(prefix: str, n: int) -> str:
    """A fill's id: the prefix and 26 digits, like a real id's 26 base32 characters."""
    return f"{prefix}_{n:026d}"


def token_of(kind: str, token_id: str) -> str:
    return f"ik_{kind}_{token_id}_{'5e' * 32}"


AGENT_TOKEN_ID, SDK_TOKEN_ID, LIVE_KEY_ID = "20000000", "10000000", "30000000"
HEARTBEAT_WORKER = padded("wrk", 0)  # ready, its agent's credential is AGENT_TOKEN_ID
PROJECT_ID = "prj_0000"

# Everything in SQL, generated server-side: seconds, where an API call per row would take hours.
# Consistent by construction, so foreign keys go unchecked while it runs (their triggers are
# most of the time a fill of this size takes).
FILL = f"""
SET session_replication_role = replica;
INSERT INTO tenants (id, name) VALUES ('default', 'default');
INSERT INTO projects (id, tenant_id, slug, name)
    SELECT 'prj_' || lpad(p::text, 4, '0'), 'default', 'proj-' || p, 'Project ' || p
    FROM generate_series(0, {PROJECTS - 1}) p;
-- Credentials: an SDK token per project, an agent credential per worker, live keys.
INSERT INTO tokens (id, kind, digest, name, project_id, scopes, workload_grants)
    SELECT '1' || lpad(to_hex(p), 7, '0'), 'sdk', sha256(('sdk' || p)::bytea), 'ci',
           'prj_' || lpad(p::text, 4, '0'),
           ARRAY['workload:read', 'workload:write', 'assignment:write'], '{{}}'
    FROM generate_series(0, {PROJECTS - 1}) p;
INSERT INTO tokens (id, kind, digest, name, project_id)
    SELECT '2' || lpad(to_hex(w), 7, '0'), 'agent', sha256(('agent' || w)::bytea), 'agent', NULL
    FROM generate_series(0, {WORKERS - 1}) w;
INSERT INTO tokens (id, kind, digest, name, project_id, workload_grants, revoked_at)
    SELECT '3' || lpad(to_hex(k), 7, '0'), 'live', sha256(('live' || k)::bytea), 'app',
           'prj_' || lpad((k % {PROJECTS})::text, 4, '0'), ARRAY['*'],
           CASE WHEN k % 10 = 9 THEN now() END
    FROM generate_series(0, 1999) k;
-- Workers: most ready; a tenth private to a project; the last ones silent.
INSERT INTO workers (id, name, project_id, token_id, state, state_reason, address, inventory,
                     simulated, last_heartbeat_at, gateway_secret, created_at)
    SELECT 'wrk_' || lpad(w::text, 26, '0'), 'gpu-host-' || w,
           CASE WHEN w % 10 = 5 THEN 'prj_' || lpad((w % {PROJECTS})::text, 4, '0') END,
           '2' || lpad(to_hex(w), 7, '0'),
           CASE WHEN w < 950 THEN 'ready' WHEN w < 980 THEN 'not_ready' ELSE 'lost' END,
           CASE WHEN w >= 950 THEN 'no heartbeat for a while' END,
           'http://10.0.' || (w / 250) || '.' || (w % 250) || ':8400',
           jsonb_build_object('source', 'simulated', 'hostname', 'gpu-host-' || w,
                              'cuda_version', '12.4', 'driver_version', '550.54.15',
                              'model_files', jsonb_build_object('gemma.gguf', 1700000000)),
           true,
           now() - CASE WHEN w < 950 THEN interval '1 second' WHEN w < 980 THEN interval '1 hour'
                        ELSE interval '1 day' END,
           md5('secret' || w) || md5('more' || w),
           now() - ({WORKERS} - w) * interval '1 hour'
    FROM generate_series(0, {WORKERS - 1}) w;
INSERT INTO gpu_resources (id, worker_id, uuid, index, name, memory_total_mb, memory_used_mb,
                           utilization_pct, simulated, present)
    SELECT 'gpu_' || lpad((w * {GPUS_PER_WORKER} + g)::text, 26, '0'),
           'wrk_' || lpad(w::text, 26, '0'), 'GPU-' || md5(w || '-' || g), g,
           (ARRAY['NVIDIA H100 80GB HBM3', 'NVIDIA L4', 'NVIDIA A100-SXM4-80GB'])[w % 3 + 1],
           81559, 40000, 50, true, (w * {GPUS_PER_WORKER} + g) % 97 <> 0
    FROM generate_series(0, {WORKERS - 1}) w, generate_series(0, {GPUS_PER_WORKER - 1}) g;
INSERT INTO gpu_prices (name, usd_per_hour)
    VALUES ('NVIDIA H100 80GB HBM3', 2.5), ('NVIDIA L4', 0.7), ('NVIDIA A100-SXM4-80GB', 1.6);
-- Workloads, oldest first, spread over the projects; every tenth one deleted.
INSERT INTO workloads (id, project_id, slug, name, description, task_type, backend, model_name,
                       config, execution_policy, execution_policy_config, generation,
                       desired_replicas, ready_replicas, endpoints_off, phase, phase_reason,
                       created_at, updated_at, deleted_at)
    SELECT 'wl_' || lpad(i::text, 26, '0'), 'prj_' || lpad((i % {PROJECTS})::text, 4, '0'),
           'chat-' || i, 'Chat ' || i, NULL, 'text2text', 'llamacpp', 'gemma',
           '{{"command": "llama-server -m /models/gemma.gguf"}}'::json, 'fixed',
           '{{"replicas": 1}}'::json, 1, 1, 1, '{{}}',
           CASE WHEN i % 10 = 9 THEN 'deleted' ELSE 'ready' END, NULL,
           now() - ({WORKLOADS} - i) * interval '1 minute',
           now() - ({WORKLOADS} - i) * interval '1 minute',
           CASE WHEN i % 10 = 9 THEN now() - interval '1 day' END
    FROM generate_series(0, {WORKLOADS - 1}) i;
-- A replica of every live workload, a second one of every tenth: 10,000 over the workers.
INSERT INTO replicas (id, workload_id, worker_id, generation, spec, gpu_resource_ids,
                      claim_memory_mb, desired_state, state, reason, port, restarts,
                      created_at, updated_at, ready_at)
    SELECT 'rep_' || lpad((n * {WORKLOADS} + i)::text, 26, '0'),
           'wl_' || lpad(i::text, 26, '0'),
           'wrk_' || lpad(((i * 7 + n * 500) % {WORKERS})::text, 26, '0'), 1,
           jsonb_build_object('backend', 'llamacpp', 'task_type', 'text2text',
                              'model_name', 'gemma',
                              'command', 'llama-server -m /models/gemma.gguf'),
           ARRAY['gpu_' || lpad((((i * 7 + n * 500) % {WORKERS}) * {GPUS_PER_WORKER}
                                 + i % {GPUS_PER_WORKER})::text, 26, '0')],
           20000,
           CASE WHEN i % 50 = 1 THEN 'stop' ELSE 'run' END,
           CASE WHEN i % 25 = 2 THEN 'starting' ELSE 'ready' END, NULL,
           41000 + i % 900, 0,
           now() - ({WORKLOADS} - i) * interval '1 minute', now(),
           now() - ({WORKLOADS} - i) * interval '1 minute'
    FROM generate_series(0, {WORKLOADS - 1}) i, generate_series(0, 1) n
    WHERE i % 10 <> 9 AND (n = 0 OR i % 10 = 0);
INSERT INTO workload_events (workload_id, kind, message, data, created_at)
    SELECT 'wl_' || lpad((e % {WORKLOADS})::text, 26, '0'), 'phase',
           'ready: 1 of 1 replicas ready', jsonb_build_object('phase', 'ready'),
           now() - ({EVENTS} - e) * interval '1 second'
    FROM generate_series(0, {EVENTS - 1}) e;
-- Jobs of a few workloads: mostly finished; some queued, running, or running on a lapsed lease.
INSERT INTO jobs (id, project_id, workload_id, key_id, kind, route, body, content_type,
                  context, status, attempts, claimed_by, lease_until, result,
                  result_content_type, result_status, error, created_at, started_at,
                  finished_at)
    SELECT '00000000-0000-4000-8000-' || lpad(to_hex(j), 12, '0'),
           'prj_' || lpad((wl % {PROJECTS})::text, 4, '0'),
           'wl_' || lpad(wl::text, 26, '0'), '30000000', 'rerank', 'v1/rerank',
           '{{"query": "q", "documents": ["a", "b"]}}'::bytea, 'application/json', NULL,
           CASE WHEN j < {FINISHED_JOBS} THEN
                    CASE WHEN j % 5 = 0 THEN 'failed' ELSE 'succeeded' END
                WHEN j < {FINISHED_JOBS + QUEUED_JOBS} THEN 'queued'
                ELSE 'running' END,
           CASE WHEN j < {FINISHED_JOBS + QUEUED_JOBS} AND j >= {FINISHED_JOBS} THEN 0 ELSE 1 END,
           CASE WHEN j >= {FINISHED_JOBS + QUEUED_JOBS} THEN 'mgr_other' END,
           CASE WHEN j >= {FINISHED_JOBS + QUEUED_JOBS + RUNNING_JOBS}
                    THEN now() - interval '1 minute'
                WHEN j >= {FINISHED_JOBS + QUEUED_JOBS} THEN now() + interval '1 minute' END,
           CASE WHEN j < {FINISHED_JOBS} THEN '{{"results": []}}'::bytea END,
           CASE WHEN j < {FINISHED_JOBS} THEN 'application/json' END,
           CASE WHEN j < {FINISHED_JOBS} THEN 200 END, NULL,
           now() - ({FINISHED_JOBS + QUEUED_JOBS + RUNNING_JOBS + LAPSED_JOBS} - j)
                   * interval '1 second',
           CASE WHEN j < {FINISHED_JOBS} OR j >= {FINISHED_JOBS + QUEUED_JOBS} THEN now() END,
           CASE WHEN j < {FINISHED_JOBS} THEN now() END
    FROM (SELECT j, (j % {JOB_WORKLOADS}) * 10 AS wl
          FROM generate_series(0, {FINISHED_JOBS + QUEUED_JOBS + RUNNING_JOBS + LAPSED_JOBS - 1})
               j) numbered;
-- A webhook destination of every fifth workload (some muted).
INSERT INTO webhook_destinations (id, project_id, workload_id, url, secret, enabled)
    SELECT 'whd_' || lpad(i::text, 26, '0'), 'prj_' || lpad((i % {PROJECTS})::text, 4, '0'),
           'wl_' || lpad(i::text, 26, '0'), 'https://hooks.example.com/' || i,
           md5('whsec' || i), i % 100 <> 70
    FROM generate_series(0, {WORKLOADS - 1}, 5) i;
-- A delivery of every finished job: mostly delivered; some pending, half of them due now.
INSERT INTO webhook_deliveries (id, job_id, destination_id, workload_id, project_id, event,
                                status, attempts, next_attempt_at, attempt_log, delivered_at)
    SELECT 'whdl_' || lpad(j::text, 32, '0'),
           '00000000-0000-4000-8000-' || lpad(to_hex(j), 12, '0'),
           'whd_' || lpad((j % {JOB_WORKLOADS} * 10)::text, 26, '0'),
           'wl_' || lpad((j % {JOB_WORKLOADS} * 10)::text, 26, '0'),
           'prj_' || lpad((j % {JOB_WORKLOADS} * 10 % {PROJECTS})::text, 4, '0'),
           CASE WHEN j % 5 = 0 THEN 'job.failed' ELSE 'job.completed' END,
           CASE WHEN j % 200 IN (1, 3) THEN 'pending' WHEN j % 97 = 5 THEN 'terminal'
                ELSE 'delivered' END,
           1,
           CASE WHEN j % 200 = 3 THEN now() + interval '10 minutes'
                ELSE now() - interval '1 second' END,
           '[]'::jsonb, CASE WHEN j % 200 NOT IN (1, 3) THEN now() END
    FROM generate_series(0, {FINISHED_JOBS - 1}) j;
INSERT INTO workload_demand (manager_id, workload_id, in_flight, requests_per_s, concurrency,
                             last_request_at, updated_at)
    SELECT m, 'wl_' || lpad((d * 10)::text, 26, '0'), d % 4, 0.5, 0.2, now(), now()
    FROM generate_series(0, {DEMAND_WORKLOADS - 1}) d, unnest(ARRAY['mgr_a', 'mgr_b']) m;
RESET session_replication_role;
"""


@dataclass(frozen=True)
class Captured:
    path: str
    statement: str
    parameters: tuple[Any, ...]


@dataclass
class Recorder:
    """Every statement the engine sends, with its parameters, under the code path running."""

    path: str | None = None
    captured: list[Captured] = field(default_factory=list)

    def listen(self, engine: AsyncEngine) -> None:
        event.listen(engine.sync_engine, "before_cursor_execute", self._record)

    async def listen_direct(self, connection: asyncpg.Connection) -> None:
        """A direct pool's ``on_connect``: its statements are heard on each connection."""
        connection.add_query_logger(self._record_direct)

    def _record_direct(self, query: Any) -> None:  # asyncpg's LoggedQuery
        if self.path is not None:
            self.captured.append(Captured(self.path, query.query, tuple(query.args or ())))

    def _record(
        self,
        _conn: Any,
        _cursor: Any,
        statement: str,
        parameters: Any,
        _context: Any,
        executemany: bool,
    ) -> None:
        if self.path is None:
            return
        if executemany and parameters and isinstance(parameters[0], list | tuple):
            parameters = parameters[0]  # one row's parameters plan it like any other's
        # (A batch of "insertmanyvalues" is one statement of many rows: its parameters are flat.)
        self.captured.append(Captured(self.path, statement, tuple(parameters or ())))

    @contextlib.contextmanager
    def under(self, path: str) -> Iterator[None]:
        self.path = path
        try:
            yield
        finally:
            self.path = None

    def of(self, path: str) -> list[Captured]:
        return [c for c in self.captured if c.path == path]


@dataclass
class Fleet:
    """The filled database, and the loops' parts the code paths share."""

    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    settings: Settings
    hub: notify.NotificationHub
    recorder: Recorder
    direct: asyncpg.Connection  # for the test's own reads, which are not recorded
    pool: DirectPool  # the agent requests' direct pool, recorded
    heartbeat_body: dict[str, Any]
    routes: RouteTable | None = None
    dispatcher: JobDispatcher | None = None
    reconciler: Reconciler | None = None


# The code paths: what each loop (or the API behind it) runs on every tick or request.


async def agent_heartbeat(fleet: Fleet) -> None:
    """POST /api/agent/heartbeat as manager/api/agent.py serves it: the credential and its
    worker (once per credential: cached after), a heartbeat with everything, the common one
    with nothing new (the lease only), and the answer (the worker's assignments)."""
    async with fleet.sessions() as session:
        principal = await authenticate(session, f"Bearer {token_of('agent', AGENT_TOKEN_ID)}")
        worker = await workers.agent_worker(session, principal)
    for body in (fleet.heartbeat_body, {"agent_version": "0.1.0"}):
        async with fleet.sessions() as session:
            assert await workers.record_heartbeat(session, worker.id, body, utcnow())
            await session.commit()
    async with fleet.sessions() as session:
        assert await workers.assignments(session, worker.id)


async def agent_delta_heartbeat(fleet: Fleet) -> None:
    """The commonest agent request: the lease alone, on the direct pool."""
    assert await workers.renew_lease(fleet.pool, HEARTBEAT_WORKER, None, utcnow())


async def agent_quick_report(fleet: Fleet) -> None:
    """A full report that changes nothing (every agent's, every minute), one that changes only
    figures (a GPU's utilisation, a replica's engine load), one with a replica ready: on the
    direct pool. (At the address the delta heartbeat before it left: a moved worker goes the
    long way.)"""
    body = {**fleet.heartbeat_body, "address": None}
    assert await workers.record_report_quickly(fleet.pool, HEARTBEAT_WORKER, body, utcnow())
    gpus = [{**gpu, "utilization_pct": 10} for gpu in body["inventory"]["gpus"]]
    replicas = [{**r, "engine_load": {"running": 2}} for r in body["replicas"]]
    busier = {**body, "inventory": {**body["inventory"], "gpus": gpus}, "replicas": replicas}
    assert await workers.record_report_quickly(fleet.pool, HEARTBEAT_WORKER, busier, utcnow())
    replicas[0] = {**replicas[0], "state": "ready", "reason": None}  # a transition, its event
    ready = {**busier, "replicas": replicas}
    assert await workers.record_report_quickly(fleet.pool, HEARTBEAT_WORKER, ready, utcnow())


async def agent_credential_standing(fleet: Fleet) -> None:
    """What a long-poll (or a package download) asks of a cached agent credential."""
    assert await tokens.unrevoked(fleet.pool, AGENT_TOKEN_ID)


async def shed_heartbeats_leases(fleet: Fleet) -> None:
    """What a process writes every few seconds for the workers whose heartbeats it shed."""
    ids = [row["id"] for row in await fleet.direct.fetch("SELECT id FROM workers LIMIT 50")]
    async with autocommit(fleet.engine) as connection:
        await workers.keep_leases(connection, dict.fromkeys(ids, utcnow()))


async def reconciler_full_read(fleet: Fleet) -> None:
    fleet.reconciler = Reconciler(fleet.sessions, fleet.hub, fleet.settings)
    await fleet.reconciler._read_snapshot()


async def tell_reconciler(fleet: Fleet, named: list[str]) -> None:
    """NOTIFY ik_reconcile of these workload and worker ids, and wait until it is heard."""
    heard: set[str] = set()
    fleet.hub.on(notify.RECONCILE, heard.add)  # after the reconciler's own: it heard them first
    async with fleet.sessions() as session:
        for payload in named:
            await notify.notify(session, notify.RECONCILE, payload)
        await session.commit()
    for _ in range(500):
        if heard >= set(named):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the notifications never came back: {set(named) - heard}")


async def reconciler_read_of_what_changed(fleet: Fleet) -> None:
    """The read after notifications named a few workloads and workers (the reconciler reads
    only those again, where it keeps the fleet between passes)."""
    assert fleet.reconciler is not None
    await tell_reconciler(fleet, [*(padded("wl", i) for i in (10, 20, 31)), padded("wrk", 1)])
    await fleet.reconciler._read_snapshot()


async def reconciler_pass(fleet: Fleet) -> None:
    """A pass, writes included, after notifications named workloads with work to do: one with
    a replica on a lost worker (forgotten, placed again), one whose replica was stopped
    (replaced), one whose replica is starting (its phase)."""
    assert fleet.reconciler is not None
    await tell_reconciler(fleet, [padded("wl", i) for i in (140, 51, 2)])
    await fleet.reconciler.reconcile_once()


async def gateway_route_table(fleet: Fleet) -> None:
    fleet.routes = RouteTable(fleet.sessions)
    await fleet.routes.reload()
    assert fleet.routes.by_id


async def gateway_route_table_named(fleet: Fleet) -> None:
    """The route table's read after notifications named a few workloads and workers."""
    assert fleet.routes is not None
    await fleet.routes.reload_named(
        [padded("wl", i) for i in (10, 20, 31)], [padded("wrk", w) for w in (1, 2)]
    )


async def gateway_route_read_on_a_miss(fleet: Fleet) -> None:
    """A request for a workload the route table has not heard of: that one workload is read
    (here one the table dropped, as if created after its last read)."""
    assert fleet.routes is not None
    workload_id = padded("wl", 33)
    route = fleet.routes.by_id[workload_id]
    fleet.routes._drop(workload_id)
    found = await fleet.routes.find(route.project_id, route.slug)
    assert found is not None and found.id == workload_id


async def gateway_key_lookup(fleet: Fleet) -> None:
    keys = KeyCache(fleet.sessions)
    await keys.authenticate(f"Bearer {token_of('live', LIVE_KEY_ID)}")


async def control_plane_credential(fleet: Fleet) -> None:
    """As manager/api/border.py looks a credential up: one statement on a direct pool."""
    principal = await authenticate(fleet.pool, f"Bearer {token_of('sdk', SDK_TOKEN_ID)}")
    assert principal.token_id == SDK_TOKEN_ID


async def dispatcher_claim(fleet: Fleet) -> None:
    assert fleet.routes is not None
    dispatcher = JobDispatcher(
        fleet.sessions,
        fleet.routes,
        client=None,  # type: ignore[arg-type]  # nothing is sent: the claimed jobs stay claimed
        settings=fleet.settings,
        hub=fleet.hub,
        manager_id="mgr_plans",
    )

    async def keep(_job: Any) -> None:
        return None

    dispatcher._run = keep  # type: ignore[method-assign]
    assert await dispatcher.claim_once() > 0
    fleet.dispatcher = dispatcher


async def dispatcher_lease_renewal(fleet: Fleet) -> None:
    assert fleet.dispatcher is not None and fleet.dispatcher.running
    renewing = asyncio.create_task(fleet.dispatcher._renew_leases())
    try:
        for _ in range(500):
            if fleet.recorder.of("job dispatcher: lease renewal"):
                break
            await asyncio.sleep(0.01)
    finally:
        renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewing


async def dispatcher_result_write(fleet: Fleet) -> None:
    """A finished job's result and its webhook deliveries, in one transaction."""
    assert fleet.dispatcher is not None
    job_id = min(job for jobs in fleet.dispatcher.running.values() for job in jobs)
    attempts = await fleet.direct.fetchval("SELECT attempts FROM jobs WHERE id = $1", job_id)
    writer = ResultWriter(fleet.sessions, "mgr_plans")
    writing = asyncio.create_task(writer.run_forever())
    try:
        await writer.write(
            {
                "b_id": job_id,
                "b_attempts": attempts,
                "b_status": "succeeded",
                "b_result": b'{"results": []}',
                "b_content_type": "application/json",
                "b_status_code": 200,
                "b_error": None,
            }
        )
    finally:
        writing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writing


async def deliverer_claim(fleet: Fleet) -> None:
    """The deliverer's claim of due deliveries, what it reads to send them, and its look at
    when the next one is due. Nothing is sent."""
    deliverer = WebhookDeliverer(fleet.sessions, fleet.settings, fleet.hub)

    async def hold(_item: Any) -> None:
        return None

    deliverer._attempt = hold  # type: ignore[method-assign]
    try:
        assert await deliverer.deliver_due() > 0
        await deliverer._until_next_due()
    finally:
        await deliverer.client.aclose()


async def sdk_principal(session: AsyncSession) -> tuple[Principal, Project]:
    principal = await authenticate(session, f"Bearer {token_of('sdk', SDK_TOKEN_ID)}")
    project = await session.get(Project, PROJECT_ID)
    assert project is not None
    return principal, project


async def workload_lookup(fleet: Fleet) -> None:
    """GET and PATCH /api/workloads/{ref}: by slug in the caller's project, or by id."""
    async with fleet.sessions() as session:
        principal, project = await sdk_principal(session)
        await workloads.find_workload(session, principal, project, "chat-20", for_update=False)
        by_id = padded("wl", 40)
        await workloads.find_workload(session, principal, project, by_id, for_update=True)
        await workloads.find_live_workload(session, project, "chat-60")
        await session.rollback()


async def workload_listing(fleet: Fleet) -> None:
    """GET /api/projects/{project}/workloads: every live workload of a project, and pages of
    them (keyset on created_at and id)."""
    async with fleet.sessions() as session:
        _, project = await sdk_principal(session)
        await workloads.list_workloads_json(session, project, None, None)
        first = json.loads(await workloads.list_workloads_json(session, project, 50, None))
        assert first["next_cursor"]
        await workloads.list_workloads_json(session, project, 50, first["next_cursor"])


async def workload_details(fleet: Fleet) -> None:
    """A workload's replicas and its event log (its page, and the SDK's status)."""
    async with fleet.sessions() as session:
        assert await workloads.list_replicas(session, padded("wl", 20))
        assert await events.list_events(session, padded("wl", 20))


@dataclass(frozen=True)
class CodePath:
    name: str
    run: Callable[[Fleet], Awaitable[None]]


# Run in this order: the later ones use what the earlier ones set up (the reconciler's first
# read, the route table, the dispatcher's claimed jobs).
CODE_PATHS = [
    CodePath("agent heartbeat", agent_heartbeat),
    CodePath("agent heartbeat, delta (direct pool)", agent_delta_heartbeat),
    CodePath("agent heartbeat, a report written quickly (direct pool)", agent_quick_report),
    CodePath("agent credential standing (direct pool)", agent_credential_standing),
    CodePath("agent heartbeats shed: their leases kept", shed_heartbeats_leases),
    CodePath("reconciler: full read", reconciler_full_read),
    CodePath("reconciler: read of what changed", reconciler_read_of_what_changed),
    CodePath("reconciler: a pass", reconciler_pass),
    CodePath("gateway: route table load", gateway_route_table),
    CodePath("gateway: route table read of what changed", gateway_route_table_named),
    CodePath("gateway: a route read on a miss", gateway_route_read_on_a_miss),
    CodePath("gateway: ik_live_ key lookup", gateway_key_lookup),
    CodePath("control plane: credential check", control_plane_credential),
    CodePath("job dispatcher: claim", dispatcher_claim),
    CodePath("job dispatcher: lease renewal", dispatcher_lease_renewal),
    CodePath("job dispatcher: result write", dispatcher_result_write),
    CodePath("webhook deliverer: claim due", deliverer_claim),
    CodePath("workloads API: lookup by slug or id", workload_lookup),
    CodePath("workloads API: project listing", workload_listing),
    CodePath("workloads API: replicas and events", workload_details),
]


async def fill(url: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(FILL)
        for kind, token_id in (
            ("agent", AGENT_TOKEN_ID),
            ("sdk", SDK_TOKEN_ID),
            ("live", LIVE_KEY_ID),
        ):
            await connection.execute(
                "UPDATE tokens SET digest = $1 WHERE id = $2",
                token_digest(token_of(kind, token_id)),
                token_id,
            )
        await connection.execute("ANALYZE")
    finally:
        await connection.close()


async def heartbeat_body(connection: asyncpg.Connection) -> dict[str, Any]:
    """What the heartbeat worker's agent reports: its GPUs (one busier than last time) and its
    replicas (one of them restarting)."""
    gpus = [
        dict(row)
        for row in await connection.fetch(
            "SELECT index, uuid, name, memory_total_mb, memory_used_mb, utilization_pct "
            "FROM gpu_resources WHERE worker_id = $1 AND present ORDER BY index",
            HEARTBEAT_WORKER,
        )
    ]
    gpus[0]["utilization_pct"] = 90
    replicas = [
        {"id": row["id"], "state": "ready", "port": row["port"], "restarts": 0}
        for row in await connection.fetch(
            "SELECT id, port FROM replicas WHERE worker_id = $1 AND desired_state = 'run' "
            "ORDER BY id",
            HEARTBEAT_WORKER,
        )
    ]
    assert replicas, "the heartbeat worker runs no replica"
    replicas[0].update(state="starting", reason="restarting after the engine exited", restarts=1)
    return Heartbeat.model_validate(
        {
            "agent_version": "0.1.0",
            "address": "http://10.0.0.0:8400",
            "inventory": {
                "source": "simulated",
                "hostname": "gpu-host-0",
                "driver_version": "550.54.15",
                "cuda_version": "12.4",
                "gpus": gpus,
                "model_files": {"gemma.gguf": 1700000000},
            },
            "replicas": replicas,
        }
    ).model_dump()


@pytest.fixture(scope="module")
def fleet_database() -> Iterator[str]:
    url = create_database()
    try:
        upgrade_to_head(url)
        asyncio.run(fill(url))
        yield url
    finally:
        drop_database(url)


def shortened(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Problem:
    path: str
    statement: str
    what: str

    def __str__(self) -> str:
        statement = shortened(" ".join(self.statement.split()), 160)
        return f"[{self.path}] {statement}\n    -> {self.what}"


def scanned(node: dict[str, Any]) -> str:
    what = f"{node['Node Type']} on {node['Relation Name']}"
    if "Index Name" in node:
        what += f" using {node['Index Name']} with no index condition"
    if "Filter" in node:
        what += f" (Filter: {shortened(node['Filter'], 300)})"
    return what


def large_tables_under(node: dict[str, Any]) -> set[str]:
    tables = {node["Relation Name"]} & LARGE_TABLES if "Relation Name" in node else set()
    for child in node.get("Plans", ()):
        tables |= large_tables_under(child)
    return tables


# A page (a LIMIT) may sort a few more rows than it returns, not this many times more: past
# that, an index in the page's order would read the page alone.
SORTED_PER_RETURNED = 4


def whole_reads(
    plan: dict[str, Any], partial_indexes: set[str], limit: dict[str, Any] | None = None
) -> Iterator[tuple[str, str]]:
    """(table, what) for each node of the plan that reads more of a large table than its
    answer needs: a Seq Scan; an index scan with no condition on a full (not partial) index;
    a Sort under a LIMIT of many more rows than the LIMIT returns."""
    kind = plan["Node Type"]
    table = plan.get("Relation Name")
    if table in LARGE_TABLES and (
        kind == "Seq Scan"
        or (
            kind in ("Index Scan", "Index Only Scan")
            and "Index Cond" not in plan
            and plan["Index Name"] not in partial_indexes
        )
    ):
        yield table, scanned(plan)
    if kind == "Limit":
        limit = plan
    elif kind == "Sort" and limit is not None:
        returned, sorted_rows = limit["Plan Rows"], plan["Plan Rows"]
        if sorted_rows > SORTED_PER_RETURNED * max(returned, 1):
            for table in sorted(large_tables_under(plan)):
                yield (
                    table,
                    f"Sort (Sort Key: {', '.join(plan['Sort Key'])}) of ~{sorted_rows} rows of "
                    f"{table} for a LIMIT of ~{returned}: no index gives this order",
                )
    for child in plan.get("Plans", ()):
        yield from whole_reads(child, partial_indexes, limit)


PLANNED = ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH")


async def explain(fleet: Fleet) -> list[Problem]:
    """EXPLAIN each distinct statement with the parameters it ran with, on one of the engine's
    own connections (its type codecs are the ones the statements were sent with)."""
    partial_indexes = {
        name
        for (name,) in await fleet.direct.fetch(
            "SELECT indexrelid::regclass::text FROM pg_index WHERE indpred IS NOT NULL"
        )
    }
    problems: list[Problem] = []
    seen: set[tuple[str, str]] = set()
    async with fleet.engine.connect() as connection:
        driver = (await connection.get_raw_connection()).driver_connection
        assert driver is not None
        for captured in fleet.recorder.captured:
            key = (captured.path, captured.statement)
            if key in seen or not captured.statement.lstrip().upper().startswith(PLANNED):
                continue
            seen.add(key)
            answer = await driver.fetchval(
                f"EXPLAIN (FORMAT JSON) {captured.statement}", *captured.parameters
            )
            plan = (json.loads(answer) if isinstance(answer, str) else answer)[0]["Plan"]
            for table, what in whole_reads(plan, partial_indexes):
                if (captured.path, table) not in WHOLE_TABLE_READS:
                    problems.append(Problem(captured.path, captured.statement, what))
    return problems


async def run_and_explain(url: str) -> tuple[dict[str, int], list[Problem]]:
    engine = make_engine(url)
    recorder = Recorder()
    recorder.listen(engine)
    hub = notify.NotificationHub(url)
    await hub.start()
    direct = await asyncpg.connect(url)
    pool = DirectPool(url, size=1, acquire_timeout_s=5, on_connect=recorder.listen_direct)
    await pool.start()
    fleet = Fleet(
        engine=engine,
        sessions=make_sessionmaker(engine),
        settings=Settings(
            database_url=url,
            # Workers heard from at the fill stay ready however long the run takes; the silent
            # ones stay silent long enough to be not ready (an hour) and lost (a day).
            worker_not_ready_after_s=600,
            worker_lost_after_s=12 * 3600,
            job_lease_s=0.3,  # a lease renewal comes within the test
        ),
        hub=hub,
        recorder=recorder,
        direct=direct,
        pool=pool,
        heartbeat_body=await heartbeat_body(direct),
    )
    try:
        for path in CODE_PATHS:
            with recorder.under(path.name):
                await path.run(fleet)
        counts = {path.name: len(recorder.of(path.name)) for path in CODE_PATHS}
        return counts, await explain(fleet)
    finally:
        await pool.close()
        await direct.close()
        await hub.stop()
        await engine.dispose()


def test_every_loop_query_reads_big_tables_through_an_index(fleet_database: str) -> None:
    counts, problems = asyncio.run(run_and_explain(fleet_database))
    silent = [name for name, count in counts.items() if count == 0]
    assert not silent, f"these code paths ran no statement (is the capture broken?): {silent}"
    assert not problems, (
        f"{len(problems)} statement(s) the loops run read a whole large table; add an index "
        "(a migration and its Index in manager/db/models.py), or name the read in "
        "WHOLE_TABLE_READS with the reason it must be whole:\n"
        + "\n".join(str(problem) for problem in problems)
    )


async def index_differences(url: str) -> list[str]:
    engine = create_async_engine(asyncpg_url(url))
    try:
        async with engine.connect() as connection:
            differences = await connection.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
            )
    finally:
        await engine.dispose()
    return [
        f"{operation} {index.name} on {index.table.name} ({', '.join(index.columns.keys())})"
        for operation, index, *_ in (d for d in differences if isinstance(d, tuple))
        if operation in ("add_index", "remove_index")
    ]


@pytest.fixture
def migrated_database() -> Iterator[str]:
    url = create_database()
    try:
        upgrade_to_head(url)
        yield url
    finally:
        drop_database(url)


def test_the_models_declare_the_indexes_the_migrations_create(migrated_database: str) -> None:
    """Each index is declared twice, in its migration and in manager/db/models.py, so that
    the models say how their tables are read: the two must not drift apart."""
    differences = asyncio.run(index_differences(migrated_database))
    assert not differences, (
        "the migrated schema's indexes and the models' differ (remove_index: only the database "
        "has it; add_index: only the models do):\n" + "\n".join(differences)
    )
