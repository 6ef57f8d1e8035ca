"""Workers: registration, heartbeats (observed state in), assignments (desired state out).

A heartbeat writes only what the agent observed: its worker's inventory, address, heartbeat time
and ``state = ready``, its GPUs, and its replicas' observed columns. The reconciler owns every
other column ("Locking" in docs/DESIGN.md), so the two never wait on each other for long. Agents
send the inventory and the replicas only when they changed: most heartbeats renew the lease
alone, in one statement (``renew_lease``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, or_, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from ik_contracts.protocol import REPORTED_STATES, CustomBackendRef, ReplicaState
from manager import notify, wire
from manager.auth import Principal, TokenKind, display_token, mint_token
from manager.custom_backends import service as custom_backends
from manager.db import direct
from manager.db.models import (
    CustomBackendVersion,
    GpuResource,
    Project,
    Replica,
    Token,
    Worker,
    Workload,
)
from manager.db.queries import one_of
from manager.errors import ValidationFailed
from manager.ids import new_id
from manager.states import DesiredState, WorkerState

from . import events
from .timefmt import rfc3339, utcnow

log = logging.getLogger("inferencekey.manager")

LOG_TAIL_LIMIT = 4000


async def create_worker(
    session: AsyncSession, *, name: str | None, project: Project | None
) -> tuple[Worker, str]:
    minted = mint_token(TokenKind.AGENT)
    session.add(
        Token(
            id=minted.id,
            kind=minted.kind.value,
            digest=minted.digest,
            name="agent",
            project_id=project.id if project else None,
        )
    )
    worker_id = new_id("wrk")
    worker = Worker(
        id=worker_id,
        name=name or worker_id,
        project_id=project.id if project else None,
        token_id=minted.id,
        state=WorkerState.REGISTERED,
        state_reason="waiting for the agent's first heartbeat",
        gateway_secret=secrets.token_hex(32),
    )
    session.add(worker)
    await session.flush()
    await session.refresh(worker)
    log.info("registered worker %s with %s", worker.id, display_token("agent", minted.id))
    return worker, minted.token


async def visible_workers(session: AsyncSession, project_id: str | None) -> list[Worker]:
    """All workers for the operator (None); the shared pool plus a project's own otherwise."""
    query = select(Worker).order_by(Worker.created_at)
    if project_id is not None:
        query = query.where(or_(Worker.project_id.is_(None), Worker.project_id == project_id))
    return list((await session.execute(query)).scalars())


async def gpus_of(session: AsyncSession, worker_ids: list[str]) -> list[GpuResource]:
    result = await session.execute(
        select(GpuResource)
        .where(one_of(GpuResource.worker_id, worker_ids), GpuResource.present.is_(True))
        .order_by(GpuResource.worker_id, GpuResource.index)
    )
    return list(result.scalars())


def gpu_view(gpu: GpuResource) -> wire.GpuResource:
    return wire.GpuResource(
        id=gpu.id,
        worker_id=gpu.worker_id,
        index=gpu.index,
        uuid=gpu.uuid,
        name=gpu.name,
        memory_total_mb=gpu.memory_total_mb,
        memory_used_mb=gpu.memory_used_mb,
        utilization_pct=gpu.utilization_pct,
        simulated=gpu.simulated,
    )


def pool_gpu_view(gpu: GpuResource, worker_name: str) -> wire.PoolGpuResource:
    return wire.PoolGpuResource(**gpu_view(gpu).model_dump(), worker_name=worker_name)


def worker_view(worker: Worker, gpus: list[GpuResource], token: str | None = None) -> wire.Worker:
    """A worker and its GPUs; ``token`` (its credential) only in the answer that registered it."""
    inventory = worker.inventory or {}
    view: dict[str, Any] = {
        "id": worker.id,
        "name": worker.name,
        "project_id": worker.project_id,
        "pool": "private" if worker.project_id else "shared",
        "state": worker.state,
        "state_reason": worker.state_reason,
        "address": worker.address,
        "simulated": worker.simulated,
        "inventory_source": inventory.get("source"),
        "hostname": inventory.get("hostname"),
        "driver_version": inventory.get("driver_version"),
        "cuda_version": inventory.get("cuda_version"),
        "gpus": [gpu_view(g) for g in gpus if g.worker_id == worker.id],
        "last_heartbeat_at": rfc3339(worker.last_heartbeat_at),
        "created_at": rfc3339(worker.created_at),
    }
    if token is not None:
        view["token"] = token
    return wire.Worker.model_validate(view)


@dataclass(frozen=True)
class AgentWorker:
    """The worker an agent credential belongs to, as the agent routes need it: what never
    changes for a worker (its id, its gateway secret), so it may be cached by credential."""

    id: str
    token_id: str
    gateway_secret: str


async def agent_worker(session: AsyncSession, principal: Principal) -> AgentWorker:
    result = await session.execute(
        select(Worker.id, Worker.gateway_secret).where(Worker.token_id == principal.token_id)
    )
    row = result.one_or_none()
    if row is None:
        raise ValidationFailed("this agent credential belongs to no worker")
    return AgentWorker(id=row.id, token_id=principal.token_id, gateway_secret=row.gateway_secret)


# What changes a GPU's worth to placement; used memory and utilisation are only shown.
_GPU_CAPACITY = ("index", "name", "memory_total_mb", "simulated", "present")


async def _sync_gpus(
    session: AsyncSession, worker_id: str, reported: list[dict[str, Any]], simulated: bool
) -> bool:
    """Store the reported GPUs; True if the worker's capacity changed (a GPU came or went, or
    its memory, name or index changed), not for utilisation and used-memory noise."""
    existing = {
        gpu.uuid: gpu
        for gpu in (
            await session.execute(select(GpuResource).where(GpuResource.worker_id == worker_id))
        ).scalars()
    }
    now = utcnow()
    seen: set[str] = set()
    capacity_changed = False
    for item in reported:
        uuid = str(item["uuid"])
        seen.add(uuid)
        values = _gpu_values(item, simulated)
        gpu = existing.get(uuid)
        if gpu is None:
            gpu = GpuResource(id=new_id("gpu"), worker_id=worker_id, uuid=uuid)
            session.add(gpu)
            capacity_changed = True
        elif all(getattr(gpu, name) == value for name, value in values.items()):
            continue  # unchanged: no write (a steady fleet's heartbeats write no GPU row)
        elif any(getattr(gpu, name) != values[name] for name in _GPU_CAPACITY):
            capacity_changed = True
        for name, value in values.items():
            setattr(gpu, name, value)
        gpu.updated_at = now
    for uuid, gpu in existing.items():
        if uuid not in seen and gpu.present:
            gpu.present = False
            gpu.updated_at = now
            capacity_changed = True
    return capacity_changed


def _gpu_values(item: dict[str, Any], simulated: bool) -> dict[str, Any]:
    """A reported GPU as its row's columns."""
    return {
        "index": int(item.get("index", 0)),
        "name": str(item.get("name", "unknown GPU")),
        "memory_total_mb": int(item.get("memory_total_mb", 0)),
        "memory_used_mb": int(item.get("memory_used_mb", 0)),
        "utilization_pct": int(item.get("utilization_pct", 0)),
        "simulated": simulated,
        "present": True,
    }


def _observed(item: dict[str, Any]) -> dict[str, Any]:
    """A reported replica as its row's observed columns."""
    load = item.get("engine_load") or {}
    return {
        "state": item.get("state"),
        "reason": item.get("reason"),
        "log_tail": (item.get("log_tail") or "")[-LOG_TAIL_LIMIT:] or None,
        "port": item.get("port"),
        "restarts": int(item.get("restarts") or 0),
        "engine_running": load.get("running"),
        "engine_waiting": load.get("waiting"),
        "kv_cache_usage": load.get("kv_cache_usage"),
    }


def _describe(replica_id: str, worker_name: str, worker_id: str) -> str:
    return f"replica {replica_id} on {worker_name} ({worker_id})"


@dataclass
class ObservedChanges:
    """What a replica report changed: the workloads to reconcile, and whether capacity on the
    worker was freed (a stopped replica's row deleted)."""

    workload_ids: set[str] = field(default_factory=set)
    freed: bool = False


async def _apply_observed(
    session: AsyncSession, worker_id: str, worker_name: str, reported: list[dict[str, Any]]
) -> ObservedChanges:
    """Store what the agent says of its replicas (the whole list it runs)."""
    # Locked in id order, as the reconciler locks the replicas it changes: no deadlock.
    rows = {
        r.id: r
        for r in (
            await session.execute(
                select(Replica)
                .where(Replica.worker_id == worker_id)
                .order_by(Replica.id)
                .with_for_update(key_share=True)
            )
        ).scalars()
    }
    reported_ids = set()
    changes = ObservedChanges()
    now = utcnow()
    for item in reported:
        replica = rows.get(str(item.get("id")))
        state = item.get("state")
        if replica is None or state not in REPORTED_STATES:
            continue
        reported_ids.add(replica.id)
        reason = item.get("reason")
        if state != replica.state or reason != replica.reason:
            changes.workload_ids.add(replica.workload_id)
            await _record_transition(session, replica, worker_name, state, reason, item)
        observed = _observed(item)
        if any(getattr(replica, name) != value for name, value in observed.items()):
            for name, value in observed.items():
                setattr(replica, name, value)
            replica.updated_at = now  # when the agent last said something new of it
        if state == ReplicaState.READY and replica.ready_at is None:
            replica.ready_at = now
    # A replica the Manager stopped is gone once the agent no longer runs it.
    finished = [
        r
        for r in rows.values()
        if r.desired_state == DesiredState.STOP
        and (r.id not in reported_ids or r.state == ReplicaState.STOPPED)
    ]
    if finished:
        await session.execute(delete(Replica).where(one_of(Replica.id, [r.id for r in finished])))
        changes.workload_ids.update(r.workload_id for r in finished)
        changes.freed = True
    return changes


async def _record_transition(
    session: AsyncSession,
    replica: Replica,
    worker_name: str,
    state: str,
    reason: str | None,
    item: dict[str, Any],
) -> None:
    message = _transition_message(
        _describe(replica.id, worker_name, replica.worker_id), state, reason, item
    )
    await events.record(
        session, replica.workload_id, f"replica_{state}", message, {"replica_id": replica.id}
    )


def _transition_message(what: str, state: str, reason: str | None, item: dict[str, Any]) -> str:
    """The event's message of a replica's reported transition (``what``: ``_describe``)."""
    if state == ReplicaState.READY:
        return f"{what} is ready on port {item.get('port')}"
    if state == ReplicaState.FAILED:
        tail = (item.get("log_tail") or "").strip().splitlines()[-5:]
        message = f"{what} failed: {reason or 'engine exited'}"
        return message + "\n" + "\n".join(tail) if tail else message
    if state == ReplicaState.STARTING:
        return f"{what} is starting: {reason or 'launching the engine'}"
    return f"{what} stopped"


# The lease renewal every heartbeat makes, in one statement: lock the worker's row, mark it
# ready, and return what it was (its state, whether its address moved), while its credential is
# unrevoked (no row: revoked since the credential was cached). The inventory variant also stores
# the inventory and says whether what placement reads of it (model files, CUDA version) changed.
_RENEW = """
WITH previous AS (
    SELECT id, state, address, inventory FROM workers WHERE id = :worker_id FOR NO KEY UPDATE
)
UPDATE workers AS w
SET last_heartbeat_at = :now, state = :ready, state_reason = NULL, address = :address{inventory}
FROM previous
WHERE w.id = previous.id
  AND EXISTS (SELECT 1 FROM tokens AS t WHERE t.id = w.token_id AND t.revoked_at IS NULL)
RETURNING previous.state, w.name,
    previous.address IS DISTINCT FROM w.address AS moved{capabilities}
"""
# Without a report, on a connection that commits each statement: the reconciler is told of a
# worker that was not ready or moved in the same statement, so no lease is renewed untold.
RENEW_LEASE = text(
    _RENEW.format(
        inventory="",
        capabilities=""",
    CASE WHEN previous.state <> :ready OR previous.address IS DISTINCT FROM w.address
         THEN pg_notify(:channel, w.id) END AS told""",
    )
)
RENEW_LEASE_WITH_INVENTORY = text(
    _RENEW.format(
        inventory=", inventory = CAST(:inventory AS JSONB), simulated = :simulated",
        capabilities="""
    , (previous.inventory -> 'model_files') IS DISTINCT FROM (w.inventory -> 'model_files')
      OR (previous.inventory ->> 'cuda_version') IS DISTINCT FROM (w.inventory ->> 'cuda_version')
      AS capabilities_changed""",
    )
).bindparams(bindparam("inventory", type_=JSONB))


async def _notify_reconcile(session: AsyncSession, payloads: set[str]) -> None:
    """One ``NOTIFY ik_reconcile`` per payload (a workload or a worker id), in one statement."""
    await notify.notify_each(session, [(notify.RECONCILE, payload) for payload in sorted(payloads)])


def _lease(worker_id: str, address: str | None, now: datetime) -> dict[str, Any]:
    return {
        "worker_id": worker_id,
        "now": now,
        "ready": WorkerState.READY.value,
        "address": address,
        "channel": notify.RECONCILE,  # RENEW_LEASE tells the reconciler in the same statement
    }


# The same statement, for the direct pool of the agent requests (manager/db/direct.py).
RENEW_LEASE_DIRECT = direct.Statement(RENEW_LEASE)


async def renew_lease(
    pool: direct.DirectPool, worker_id: str, address: str | None, now: datetime
) -> bool:
    """The common heartbeat, which reports nothing new: the lease renewed in one statement (on a
    connection that commits it by itself), and the reconciler told only of a worker that was
    not ready or moved. False if the worker's credential is revoked (nothing is written)."""
    lease = _lease(worker_id, address, now)
    return await pool.fetchrow(RENEW_LEASE_DIRECT, lease) is not None


# The leases of ready workers whose heartbeats this process shed (503 overloaded): an agent
# that sent one is alive, and a Manager too busy to hear its report must not judge it lapsed
# (at 1,000 agents and 10,000 workloads hundreds of workers lapsed during a burst of creates,
# and re-planning their workloads kept the Manager busy). Rows another statement holds are
# skipped (a heartbeat or the reconciler is at them); a worker not ready any more is left to a
# heartbeat that gets through, as is a revoked credential's.
KEEP_LEASES = text("""
WITH kept AS (
    SELECT w.id FROM workers AS w
    WHERE w.id = ANY(CAST(:worker_ids AS TEXT[]))
      AND w.state = :ready AND w.last_heartbeat_at < :seen_at
      AND w.token_id = ANY(ARRAY(  -- their unrevoked credentials, each by its key
          SELECT t.id FROM tokens AS t
          WHERE t.revoked_at IS NULL AND t.id = ANY(ARRAY(
              SELECT token_id FROM workers WHERE id = ANY(CAST(:worker_ids AS TEXT[]))))))
    ORDER BY w.id
    FOR NO KEY UPDATE OF w SKIP LOCKED
)
UPDATE workers AS w SET last_heartbeat_at = :seen_at
WHERE w.id = ANY(ARRAY(SELECT id FROM kept))
RETURNING w.id
""")


async def keep_leases(connection: AsyncConnection, seen: dict[str, datetime]) -> int:
    """Renew the leases of these ready workers to when the earliest of their shed requests
    came (a few seconds apart at most: never later than any was seen); how many were renewed."""
    if not seen:
        return 0
    values = {
        "worker_ids": sorted(seen),
        "seen_at": min(seen.values()),
        "ready": WorkerState.READY.value,
    }
    return len((await connection.execute(KEEP_LEASES, values)).all())


async def record_heartbeat(
    session: AsyncSession, worker_id: str, body: dict[str, Any], now: datetime
) -> bool:
    """Renew the worker's lease and store what the heartbeat reports; False if the worker's
    credential is revoked (nothing is written).

    ``inventory`` and ``replicas`` absent (None) mean "unchanged since the last acknowledged
    heartbeat" (ik_contracts.protocol.Heartbeat); a heartbeat with neither is ``renew_lease``.
    The reconciler is told precisely what changed (``NOTIFY ik_reconcile``): the workload of
    every replica whose state or reason changed or whose row went, and the worker when it was
    not ready, when its address moved (the gateways' routes), when its capacity changed (GPUs,
    model files, CUDA version) or was freed.
    """
    inventory = body.get("inventory")
    reported = body.get("replicas")
    values = _lease(worker_id, body.get("address"), now)
    if inventory is None:
        renewed = (await session.execute(RENEW_LEASE, values)).one_or_none()
    else:
        stored = dict(inventory)
        gpus = list(stored.pop("gpus", None) or [])
        simulated = stored.get("source") == "simulated"
        values.update(inventory=stored, simulated=simulated)
        renewed = (await session.execute(RENEW_LEASE_WITH_INVENTORY, values)).one_or_none()
    if renewed is None:
        return False
    payloads: set[str] = set()
    if renewed.state != WorkerState.READY or renewed.moved:
        payloads.add(worker_id)
    if inventory is not None:
        capacity_changed = await _sync_gpus(session, worker_id, gpus, simulated)
        if capacity_changed or renewed.capabilities_changed:
            payloads.add(worker_id)
    if reported is not None:
        changes = await _apply_observed(session, worker_id, renewed.name, list(reported))
        payloads.update(changes.workload_ids)
        if changes.freed:
            payloads.add(worker_id)
    await _notify_reconcile(session, payloads)
    return True


# A report's quick path (``record_report_quickly``): the lease renewed, and in the same
# statement what the worker's rows hold of what the report says, to compare it with.
_GPU_COLUMNS = (
    "uuid",
    "index",
    "name",
    "memory_total_mb",
    "memory_used_mb",
    "utilization_pct",
    "simulated",
    "present",
)
_GPU_FIGURES = ("memory_used_mb", "utilization_pct")
_REPLICA_COLUMNS = (
    "id",
    "workload_id",
    "worker_id",
    "state",
    "reason",
    "log_tail",
    "port",
    "restarts",
    "engine_running",
    "engine_waiting",
    "kv_cache_usage",
    "desired_state",
)
# Only a worker that is ready at the same address: any other goes the long way, which stores
# its report in the transaction that makes it ready (the reconciler never sees it ready without
# what it reported). No row: not ready, moved, or its credential revoked.
RENEW_LEASE_REPORTING = direct.Statement(
    text(f"""
WITH previous AS (
    SELECT id, state, address, inventory FROM workers WHERE id = :worker_id FOR NO KEY UPDATE
)
UPDATE workers AS w
SET last_heartbeat_at = :now
FROM previous
WHERE w.id = previous.id
  AND previous.state = :ready AND previous.address IS NOT DISTINCT FROM :address
  AND EXISTS (SELECT 1 FROM tokens AS t WHERE t.id = w.token_id AND t.revoked_at IS NULL)
RETURNING w.name, w.simulated,
    CASE WHEN :with_inventory THEN previous.inventory = CAST(:inventory AS JSONB) END
        AS same_inventory,
    CASE WHEN :with_inventory THEN (
        SELECT CAST(json_agg(json_build_array({", ".join(f"g.{c}" for c in _GPU_COLUMNS)}))
                    AS TEXT)
        FROM gpu_resources AS g WHERE g.worker_id = w.id) END AS gpus,
    CASE WHEN :with_replicas THEN (
        SELECT CAST(json_agg(json_build_array(
                   {", ".join(f"r.{c}" for c in _REPLICA_COLUMNS)}, r.ready_at IS NOT NULL))
                    AS TEXT)
        FROM replicas AS r WHERE r.worker_id = w.id) END AS replicas
""")
)
# What a report changed, when record_heartbeat's session is not needed for it: the GPUs' used
# memory and utilisation; the replicas' observed columns, with their transitions (a state or a
# reason that changed: its event recorded and its workload told, ``ready_at`` set when first
# ready). A replica's row is written only while its state and reason are still those it was
# compared with (locked in id order, as heartbeats and the reconciler lock replicas); all of it
# in one statement, which commits it.
WRITE_QUICK_CHANGES = direct.Statement(
    text("""
WITH worker AS (
    SELECT id FROM workers WHERE id = :worker_id FOR NO KEY UPDATE
), gpus_locked AS (
    SELECT id FROM gpu_resources
    WHERE worker_id = (SELECT id FROM worker) AND uuid = ANY(CAST(:gpu_uuids AS TEXT[]))
      AND present
    ORDER BY id
    FOR NO KEY UPDATE
), gpus AS (
    UPDATE gpu_resources AS g
    SET memory_used_mb = v.used, utilization_pct = v.utilization, updated_at = :now
    FROM unnest(CAST(:gpu_uuids AS TEXT[]), CAST(:gpu_used AS INTEGER[]),
                CAST(:gpu_utilization AS INTEGER[])) AS v(uuid, used, utilization)
    WHERE g.id = ANY(ARRAY(SELECT id FROM gpus_locked)) AND g.uuid = v.uuid
    RETURNING g.id
), locked AS (
    SELECT id FROM replicas
    WHERE id = ANY(CAST(:replica_ids AS TEXT[])) AND worker_id = (SELECT id FROM worker)
    ORDER BY id
    FOR NO KEY UPDATE
), reported AS (
    SELECT * FROM unnest(
        CAST(:replica_ids AS TEXT[]), CAST(:was_states AS TEXT[]), CAST(:was_reasons AS TEXT[]),
        CAST(:states AS TEXT[]), CAST(:reasons AS TEXT[]), CAST(:log_tails AS TEXT[]),
        CAST(:ports AS INTEGER[]), CAST(:restarts AS INTEGER[]), CAST(:running AS INTEGER[]),
        CAST(:waiting AS INTEGER[]), CAST(:kv AS DOUBLE PRECISION[]),
        CAST(:observed AS BOOLEAN[]), CAST(:events AS TEXT[]))
        WITH ORDINALITY
    AS v(id, was_state, was_reason, state, reason, log_tail, port, restarts, running, waiting,
         kv, observed, event, said)
), written AS (
    UPDATE replicas AS r
    SET state = v.state, reason = v.reason, log_tail = v.log_tail, port = v.port,
        restarts = v.restarts, engine_running = v.running, engine_waiting = v.waiting,
        kv_cache_usage = v.kv,
        updated_at = CASE WHEN v.observed THEN :now ELSE r.updated_at END,
        ready_at = CASE WHEN v.state = :ready_state AND r.ready_at IS NULL THEN :now
                        ELSE r.ready_at END
    FROM reported AS v
    WHERE r.id = v.id AND r.id = ANY(ARRAY(SELECT id FROM locked))
      AND r.state = v.was_state AND r.reason IS NOT DISTINCT FROM v.was_reason
    RETURNING r.id, r.workload_id, v.state, v.event, v.said
), recorded AS (
    INSERT INTO workload_events (workload_id, kind, message, data)
    SELECT workload_id, 'replica_' || state, event, jsonb_build_object('replica_id', id)
    FROM written WHERE event IS NOT NULL
    ORDER BY said
    RETURNING workload_id
), told AS (
    SELECT pg_notify(:channel, workload_id)
    FROM (SELECT DISTINCT workload_id FROM recorded ORDER BY workload_id) AS t
)
SELECT (SELECT count(*) FROM gpus) AS gpus, (SELECT count(*) FROM written) AS replicas,
       (SELECT count(*) FROM told) AS told
""")
)


@dataclass
class QuickChanges:
    """What a report changed, when ``WRITE_QUICK_CHANGES`` can write it: each GPU's (uuid, used
    memory, utilisation); each replica's observed columns, with what they were compared with
    (``was_state``, ``was_reason``) and, for a transition, its event's message (``event``)."""

    gpus: list[tuple[str, int, int]] = field(default_factory=list)
    replicas: list[dict[str, Any]] = field(default_factory=list)

    @property
    def transitions(self) -> int:
        return sum(r["event"] is not None for r in self.replicas)


def quick_changes(stored: Any, body: dict[str, Any]) -> QuickChanges | None:
    """What the report ``body`` changes of the stored rows (``RENEW_LEASE_REPORTING``'s row),
    by ``record_heartbeat``'s rules, if one statement can write it; None if it changes the
    inventory, a GPU that came, went or changed capacity, or finishes a stopped replica (its
    row deleted), or says something twice: ``record_heartbeat`` stores those."""
    changes = QuickChanges()
    inventory = body.get("inventory")
    if inventory is not None:
        lasting = dict(inventory)
        reported_gpus = list(lasting.pop("gpus", None) or [])
        simulated = lasting.get("source") == "simulated"
        if not stored["same_inventory"] or simulated != stored["simulated"]:
            return None  # compared in the statement, as JSONB
        gpus = {
            row[0]: dict(zip(_GPU_COLUMNS, row, strict=True))
            for row in json.loads(stored["gpus"] or "[]")
        }
        seen: set[str] = set()
        for item in reported_gpus:
            uuid = str(item["uuid"])
            gpu = gpus.get(uuid)
            if gpu is None or uuid in seen:
                return None
            seen.add(uuid)
            values = _gpu_values(item, simulated)
            if any(
                gpu[name] != value for name, value in values.items() if name not in _GPU_FIGURES
            ):
                return None
            if any(gpu[name] != values[name] for name in _GPU_FIGURES):
                changes.gpus.append((uuid, values["memory_used_mb"], values["utilization_pct"]))
        if any(gpu["present"] and uuid not in seen for uuid, gpu in gpus.items()):
            return None
    reported = body.get("replicas")
    if reported is not None:
        replicas = {
            row[0]: dict(zip((*_REPLICA_COLUMNS, "ready"), row, strict=True))
            for row in json.loads(stored["replicas"] or "[]")
        }
        reported_states: dict[str, str] = {}  # replica id -> the state reported
        for item in reported:
            replica = replicas.get(str(item.get("id")))
            state = item.get("state")
            if replica is None or state not in REPORTED_STATES:
                continue  # as record_heartbeat: not this worker's, or not a state to store
            if replica["id"] in reported_states:
                return None
            reported_states[replica["id"]] = state
            observed = _observed(item)
            transition = state != replica["state"] or observed["reason"] != replica["reason"]
            first_ready = state == ReplicaState.READY and not replica["ready"]  # ready_at set
            news = any(replica[name] != value for name, value in observed.items())
            if transition or first_ready or news:
                event = None
                if transition:
                    what = _describe(replica["id"], stored["name"], replica["worker_id"])
                    event = _transition_message(what, state, observed["reason"], item)
                changes.replicas.append(
                    {
                        "id": replica["id"],
                        "was_state": replica["state"],
                        "was_reason": replica["reason"],
                        "news": news,  # updated_at: when the agent last said something new
                        "event": event,
                        **observed,
                    }
                )
        # A replica the Manager stopped is gone once the agent no longer runs it: its row is
        # deleted the long way.
        if any(
            replica["desired_state"] == DesiredState.STOP
            and ReplicaState.STOPPED
            in (replica["state"], reported_states.get(replica["id"], ReplicaState.STOPPED))
            for replica in replicas.values()
        ):
            return None
    return changes


async def record_report_quickly(
    pool: direct.DirectPool, worker_id: str, body: dict[str, Any], now: datetime
) -> bool | None:
    """A report's quick path, on the direct pool (each statement commits by itself): the lease
    of a worker ready at the same address renewed, and what the report changed
    (``quick_changes``) written in one statement. True if recorded; None if the worker is not
    ready, moved or revoked, if the report changes more, or if its rows changed meanwhile: then
    ``record_heartbeat`` stores it (or says the credential is revoked).
    Every agent's full report each minute, a serving replica's engine load and a replica
    starting or ready thus cost one or two statements and no ORM."""
    inventory = body.get("inventory")
    lasting = None if inventory is None else {k: v for k, v in inventory.items() if k != "gpus"}
    lease = {
        **_lease(worker_id, body.get("address"), now),
        "with_inventory": inventory is not None,
        "inventory": None if lasting is None else json.dumps(lasting),
        "with_replicas": body.get("replicas") is not None,
    }
    stored = await pool.fetchrow(RENEW_LEASE_REPORTING, lease)
    if stored is None:
        return None  # not ready, moved or revoked: the long way says which
    changes = quick_changes(stored, body)
    if changes is None:
        return None
    if not changes.gpus and not changes.replicas:
        return True
    replicas = changes.replicas
    values: dict[str, Any] = {
        "worker_id": worker_id,
        "now": now,
        "ready_state": ReplicaState.READY.value,
        "channel": notify.RECONCILE,
        "gpu_uuids": [uuid for uuid, _, _ in changes.gpus],
        "gpu_used": [used for _, used, _ in changes.gpus],
        "gpu_utilization": [utilization for _, _, utilization in changes.gpus],
        "replica_ids": [r["id"] for r in replicas],
        "was_states": [r["was_state"] for r in replicas],
        "was_reasons": [r["was_reason"] for r in replicas],
        "states": [str(r["state"]) for r in replicas],
        "reasons": [r["reason"] for r in replicas],
        "log_tails": [r["log_tail"] for r in replicas],
        "ports": [r["port"] for r in replicas],
        "restarts": [r["restarts"] for r in replicas],
        "running": [r["engine_running"] for r in replicas],
        "waiting": [r["engine_waiting"] for r in replicas],
        "kv": [r["kv_cache_usage"] for r in replicas],
        "observed": [r["news"] for r in replicas],
        "events": [r["event"] for r in replicas],
    }
    written = await pool.fetchrow(WRITE_QUICK_CHANGES, values)
    assert written is not None
    if (written["gpus"], written["replicas"]) != (len(changes.gpus), len(replicas)):
        return None  # a row changed since it was read: the long way looks again
    return True


async def assignments(session: AsyncSession, worker_id: str) -> list[dict[str, Any]]:
    """The replicas this worker must run, each with what to run."""
    result = await session.execute(
        select(Replica, Workload, Project)
        .join(Workload, Workload.id == Replica.workload_id)
        .join(Project, Project.id == Workload.project_id)
        .where(Replica.worker_id == worker_id, Replica.desired_state == DesiredState.RUN)
        .order_by(Replica.id)
    )
    rows = result.all()
    gpu_uuids = {
        g.id: g.uuid
        for g in (
            await session.execute(select(GpuResource).where(GpuResource.worker_id == worker_id))
        ).scalars()
    }
    # The custom-backend versions the replicas were placed with, in one query.
    versions = await custom_backends.versions_by_id(
        session, (r.spec["custom_backend_id"] for r, _, _ in rows if "custom_backend_id" in r.spec)
    )
    answer = []
    for replica, workload, project in rows:
        spec = dict(replica.spec)
        version = versions.get(spec.pop("custom_backend_id", None) or "")
        config = spec.pop("custom_backend_config", None) or {}
        entry = {
            "id": replica.id,
            "workload_id": workload.id,
            "project_slug": project.slug,
            "workload_slug": workload.slug,
            "generation": replica.generation,
            **spec,
            "gpu_uuids": [gpu_uuids[g] for g in replica.gpu_resource_ids if g in gpu_uuids],
            "claim_memory_mb": replica.claim_memory_mb,
        }
        if version is not None:
            entry["custom_backend"] = custom_backend_ref(version, config).model_dump()
        answer.append(entry)
    return answer


def custom_backend_ref(version: CustomBackendVersion, config: dict[str, Any]) -> CustomBackendRef:
    return CustomBackendRef(
        id=version.id,
        slug=version.slug,
        version=version.version,
        sha256=version.sha256,
        size_bytes=version.size_bytes,
        entrypoint=version.entrypoint,
        requires_python=version.requires_python,
        task_type=version.task_type,
        cpu_only=version.cpu_only,
        config=config,
    )


def assignments_version(replicas: list[dict[str, Any]]) -> str:
    encoded = json.dumps(replicas, sort_keys=True).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]
